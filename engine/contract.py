"""The redirect-engine contract: what every engine implements and what the pipeline gives it.

An engine is one package with one class implementing RedirectEngine, and one line in
engine/registry.py. The pipeline (engine/apply.py, engine/lifecycle.py) knows engines only
through this interface; engine packages import from the pipeline only this module (and the
data types it re-exports), never apply, lifecycle, cli or another engine.

The life of an install, as the pipeline drives it:
  probe HostFacts once -> for each engine the config requests, in registry order: checks ->
  the first whose required checks pass is chosen (engine.choose adds its own choices, e.g. the
  iptables backend) -> engine.plan once -> --dry-run prints plan.render(), or, under the state
  lock, in one transaction: the ::6 passthrough, the chosen engine's apply (which replaces its
  own earlier install in place, without a gap), every other engine's remove_previous (new
  before old), the state record.
"""
from __future__ import annotations

import abc
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Callable, TypeVar

from engine import netlink
from engine.config import Config, defaults
from engine.memo import NONE, Memo
from engine.probe import HostFacts, kernel_version, mounts, mounts_of_type
from engine.state import foreign_writable_parent, shape_problem
from engine.timeouts import bound
from engine.transaction import InjectedFault, Step, Transaction, transaction
from engine.transaction import pause as transaction_pause

Say = Callable[[str], None]
T = TypeVar("T")

__all__ = ["Check", "Choice", "Config", "EnginePlan", "HostFacts", "InjectedFault", "Memo", "NONE", "RedirectEngine",
           "Say", "Step", "Transaction", "bound", "default_of", "dns_servers", "families", "foreign_writable_parent",
           "kernel_version", "mounts", "mounts_of_type", "netlink", "retrying", "shape_problem", "transaction"]


def default_of(field_name: str):
    """A flag's default (e.g. where uninstall looks for pins when nothing recorded it)."""
    return defaults()[field_name]


def families(config: Config, facts: HostFacts) -> tuple[tuple[int, ...], str]:
    """The IP families an install covers, and why."""
    if config.ip_family_mode == "ipv4":
        return (4,), "--ip-family-mode ipv4"
    if facts.has_ipv6:
        return (4, 6), "dualstack: the host has IPv6 addresses"
    return (4,), "dualstack, but the host has no non-loopback IPv6 address: IPv6 skipped"


def retrying(action: Callable[[], T], retries: int, pause: float,
             errors: tuple[type[BaseException], ...]) -> T:
    """`action`, tried again up to `retries` times `pause` seconds apart while it raises one of
    `errors` (--max-retries, --sleep-between-retries: kumactl's retry of a failed apply). A
    signal held by the install's transaction ends the retries: the last error stands, and the
    transaction rolls back and delivers the signal."""
    for attempt in range(retries + 1):
        try:
            return action()
        except errors:
            if attempt == retries or not transaction_pause(pause):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def dns_servers(config: Config, facts: HostFacts, family: int) -> tuple[tuple[str, ...], list[str]]:
    """resolv.conf's name servers of one family, and what --redirect-dns cannot do with them."""
    servers = tuple(s for s in facts.dns_servers if (":" in s) == (family == 6))
    warnings = []
    if config.redirect_dns and not config.capture_all_dns:
        if facts.dns_servers_error:
            warnings.append(f"--redirect-dns: {facts.dns_servers_error}; IPv{family} DNS is not redirected")
        elif not servers:
            warnings.append(f"--redirect-dns: no IPv{family} name server in {config.resolv_conf}; "
                            f"IPv{family} DNS is not redirected")
    return servers, warnings


@dataclass(frozen=True)
class Check:
    """One precondition of an engine and its result; `required=False` ones may fail without fallback."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"[{mark}] {self.name}: {self.detail}" + ("" if self.ok or not self.fix else f" (fix: {self.fix})")


@dataclass(frozen=True)
class Choice:
    engine: str  # a registry name
    backend: str | None  # where the chosen engine writes, when it has a choice (iptables: legacy | nft)
    families: tuple[int, ...]  # 4 and/or 6
    reasons: tuple[str, ...]
    checks: tuple[Check, ...] = field(default_factory=tuple)
    applier: str | None = None  # how the backend writes, when the engine has a choice

    def to_json(self) -> dict:
        return asdict(self)


class EnginePlan(abc.ABC):
    """What an engine will make: pure data, rendered for --dry-run."""

    warnings: tuple[str, ...] = ()  # said before the install ("# [WARNING] ...")

    @abc.abstractmethod
    def render(self) -> str: ...

    def digest(self) -> str:
        """Same digest, same install: a repeated install with an unchanged plan changes nothing."""
        return hashlib.sha256(self.render().encode()).hexdigest()


class RedirectEngine(abc.ABC):
    """One way to redirect: its checks, plan, install steps, uninstall, status and leftovers.

    Records are the engine's own JSON-able dicts, stored in State under the engine's name."""

    name: str  # the registry name, in State and in --json output
    title: str  # for people: "eBPF", "iptables"
    selected_by: str = ""  # the flag that requests it ("--ebpf-enabled"); the default has none

    # choice
    @abc.abstractmethod
    def requested(self, config: Config) -> str | None:
        """Why the config asks for this engine ("--ebpf-enabled"), None when it does not. The
        registry's last engine is the default and always answers."""

    def base_checks(self, config: Config, facts: HostFacts) -> list[Check]:
        """Checks from HostFacts alone (pure): what a choice without probing can know."""
        return []

    def checks(self, config: Config, facts: HostFacts, memo: Memo = NONE) -> list[Check]:
        """Every check, probing the kernel where the engine needs it. `memo` keeps passed
        expensive checks between runs (engine/memo.py), keyed by what decides them."""
        return self.base_checks(config, facts)

    def choose(self, config: Config, facts: HostFacts) -> tuple[dict, list[str]]:
        """The engine's own choices (Choice fields such as backend, applier) and why. May raise
        UnsupportedHost naming the flag and its fix."""
        return {}, []

    def facts_for(self, config: Config, facts: HostFacts, choice: Choice) -> HostFacts:
        """Facts only this engine's choice needs and pays for (e.g. a self-test); default none."""
        return facts

    def chosen_reason(self, requested: str) -> str:
        return f"{requested} and every {self.title} check passed"

    def fallback_reason(self, requested: str, failed: list[Check], to: RedirectEngine) -> str:
        return (f"{requested}, but {self.title} checks failed; falling back to {to.title}: "
                + "; ".join(c.line() for c in failed))

    # install
    @abc.abstractmethod
    def plan(self, config: Config, facts: HostFacts, choice: Choice) -> EnginePlan: ...

    def notes(self, config: Config, facts: HostFacts, choice: Choice) -> list[str]:
        """Lines said before installing (flags without effect, where rules will be visible)."""
        return []

    @abc.abstractmethod
    def remove_previous(self, tx: Transaction, config: Config, record: dict | None) -> None:
        """Another engine was chosen: add the steps that remove this engine's objects of an
        earlier install (its record, or None: then what its tags and pins show) to the install's
        transaction. They run after the chosen engine's steps, so the two overlap for a moment:
        an engine must leave the other's redirect target (127.0.0.1:15001 on lo) alone."""

    @abc.abstractmethod
    def apply(self, tx: Transaction, config: Config, plan: EnginePlan, previous: dict | None, record: dict) -> None:
        """Make the plan real as steps of tx, filling in `record` (JSON-able, this engine's part
        of State) with each object *before* the kernel call that makes it: the transaction writes
        it to the journal at each step and at tx.intend(), so this engine's uninstall(record)
        removes whatever of it exists after a crash at any instant. `previous` is this engine's
        record of the install being replaced (None: none, or only tags and pins show one): apply
        replaces it in place, so that no connection goes around the sidecar at any instant, and
        a failure of a later step puts it back whole."""

    @abc.abstractmethod
    def installed_line(self, plan: EnginePlan, record: dict) -> str:
        """The one line said after a successful install."""

    # uninstall and status
    @abc.abstractmethod
    def uninstall(self, record: dict | None, options: dict, dry_run: bool, say: Say) -> list[str]:
        """Remove this engine's objects: the record's, and always what tags and pins show.
        `options`: uninstall's flags (e.g. ebpf_bpffs_path). Returns what was (would be) removed."""

    @abc.abstractmethod
    def status(self, record: dict) -> tuple[dict, list[str], list[str]]:
        """(summary for --json, lines for people, drift) from the kernel's view of the record."""

    @abc.abstractmethod
    def leftovers(self, options: dict) -> list[str]:
        """This engine's objects present without a state file (tagged rules, pins, attachments)."""

    def validate_record(self, record: dict) -> str | None:
        """Why this engine's part of a state or journal record, read back from a file, cannot be
        used (a key that status, uninstall or apply reads, of another type: shape_problem says
        which); None when it can. A part that fails is reported with its file and ignored: the
        engine's uninstall(None) finds its objects by their tags and pins instead."""
        return None
