"""The two places iptables rules can live: legacy x_tables and nf_tables.

Both read with their own *-save and delete with their own *-restore --noflush (text, so one
removal path serves both). They differ in how a plan is applied: legacy through python-iptables,
one commit per table; nf_tables through iptables-nft-restore --noflush, one atomic transaction
per family.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time

from engine.iptables.rules import COMMENT_PREFIX, FamilyPlan, Rule, TablePlan, table_to_json
from engine.iptables.selection import LEGACY_RESTORE
from engine.timeouts import bound

XTABLES_LOCK = "/run/xtables.lock"


class BackendError(RuntimeError):
    pass


class Backend:
    name = ""

    def __init__(self, wait: int = 5, executables: dict[str, str] | None = None, applier: str = ""):
        self.wait = wait
        self.executables = executables or {}
        self.applier = applier

    def tool(self, family: int, verb: str) -> str:
        """e.g. tool(6, "save") -> ip6tables-nft-save (or the --iptables-executables override)."""
        base = "iptables" if family == 4 else "ip6tables"
        override = self.executables.get(f"{base}-{verb}")
        if override:
            return override
        path = shutil.which(f"{base}-{self.name}-{verb}")
        if not path:
            raise BackendError(f"{base}-{self.name}-{verb} not found (fix: apt-get install iptables)")
        return path

    def save(self, family: int) -> str:
        result = subprocess.run([self.tool(family, "save")], capture_output=True, text=True, timeout=bound(60))
        if result.returncode != 0:
            raise BackendError(f"{self.tool(family, 'save')} failed: {result.stderr.strip()}")
        return result.stdout

    def restore(self, family: int, script: str) -> None:
        if not script.strip():
            return
        command = [self.tool(family, "restore"), "--noflush", f"--wait={self.wait}"]
        result = subprocess.run(command, input=script, capture_output=True, text=True, timeout=bound(120))
        if result.returncode != 0:
            raise BackendError(f"{' '.join(command)} failed: {result.stderr.strip()}\ninput was:\n{script}")

    def apply_tables(self, family: int, tables: list[TablePlan]) -> None:
        raise NotImplementedError

    def apply_units(self, plan: FamilyPlan) -> list[tuple[str, list[TablePlan]]]:
        """How a family plan is split into atomic steps: (step label, tables in it)."""
        raise NotImplementedError

    def scaffold_created(self, before: str, after: str, ours: set[tuple[str, str]]) -> dict | None:
        """What an apply made besides our chains that uninstall must remove once empty (tables,
        base chains), from the save texts before and after; None: this backend makes none."""
        return None

    def scaffold_expected(self, before: str, tables: list[TablePlan]) -> dict | None:
        """What applying `tables` will create besides our chains (recorded before it exists)."""
        return None

    def remove_scaffold(self, family: int, created: dict | None, dry_run: bool = False, going=None) -> list[str]:
        """Remove what scaffold_created recorded, where it is empty again."""
        return []


class NftBackend(Backend):
    name = "nft"

    def apply_units(self, plan: FamilyPlan) -> list[tuple[str, list[TablePlan]]]:
        # iptables-nft-restore commits one nf_tables transaction: the family is all-or-nothing.
        return [(f"iptables-nft {plan.label}", list(plan.tables))]

    def apply_tables(self, family: int, tables: list[TablePlan]) -> None:
        self.restore(family, "".join(t.restore_text() for t in tables))

    # iptables-nft creates a table and its base chains on first use (nft_scaffold.py)
    def scaffold_created(self, before: str, after: str, ours: set[tuple[str, str]]) -> dict | None:
        from engine.iptables import nft_scaffold

        return nft_scaffold.created(before, after, ours)

    def scaffold_expected(self, before: str, tables: list[TablePlan]) -> dict | None:
        from engine.iptables import nft_scaffold

        return nft_scaffold.expected(before, tables)

    def remove_scaffold(self, family: int, created: dict | None, dry_run: bool = False, going=None) -> list[str]:
        from engine.iptables import nft_scaffold

        return nft_scaffold.remove_if_empty(family, created, dry_run, going)


class LegacyBackend(Backend):
    name = "legacy"

    def apply_units(self, plan: FamilyPlan) -> list[tuple[str, list[TablePlan]]]:
        return [(f"iptables-legacy {plan.label} {t.name}", [t]) for t in plan.tables]

    def apply_tables(self, family: int, tables: list[TablePlan]) -> None:
        if self.applier == LEGACY_RESTORE:
            # the same rendered plan as the nft path: one atomic restore per table (apply_units)
            self.restore(family, "".join(t.restore_text() for t in tables))
            return
        # libxtables keeps one global extension registry per process, so python-iptables
        # cannot load e.g. REDIRECT for IPv6 once it has loaded it for IPv4 ("can't find
        # target REDIRECT"). Each family therefore commits from a process of its own.
        payload = json.dumps({"family": family, "wait": self.wait, "tables": [table_to_json(t) for t in tables]})
        result = subprocess.run([sys.executable, "-m", "engine.iptables.legacy_commit"], input=payload,
                                capture_output=True, text=True, timeout=bound(120))
        if result.returncode != 0:
            raise BackendError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else
                               f"python-iptables commit exited {result.returncode}")


def commit_table(family: int, plan: TablePlan, wait: int) -> None:
    """Create our chains and add our rules to one table in a single python-iptables commit."""
    import iptc  # python-iptables: imported here so the nft path works without it

    table_class = iptc.Table if family == 4 else iptc.Table6
    with xtables_lock(wait):
        table = table_class(plan.name)
        table.autocommit = False
        try:
            table.refresh()
            for chain in plan.chains:
                table.create_chain(chain)
            for rule in plan.rules:
                chain = iptc.Chain(table, rule.chain)
                entry = to_iptc(rule, family)
                if rule.position is None:
                    chain.append_rule(entry)
                else:
                    chain.insert_rule(entry, rule.position - 1)
            table.commit()  # one commit: the kernel swaps in the whole table at once
        except (iptc.IPTCError, iptc.errors.XTablesError) as err:
            raise BackendError(f"python-iptables {plan.name} (IPv{family}): {err}") from err
        finally:
            table.autocommit = True


def to_iptc(rule: Rule, family: int):
    import iptc

    entry = iptc.Rule() if family == 4 else iptc.Rule6()
    if rule.source:
        entry.src = ("!" if rule.source_negated else "") + rule.source
    if rule.destination:
        entry.dst = ("!" if rule.destination_negated else "") + rule.destination
    if rule.in_interface:
        entry.in_interface = rule.in_interface
    if rule.out_interface:
        entry.out_interface = rule.out_interface
    if rule.protocol:
        entry.protocol = rule.protocol
    if rule.comment is not None:
        entry.create_match("comment").comment = COMMENT_PREFIX + rule.comment
    for match in rule.matches:
        extension = entry.create_match(match.name)
        for option in match.options:
            extension.set_parameter(option.name, ("!" if option.negated else "") + option.value)
    target = entry.create_target(rule.target)
    for option in rule.target_options:
        target.set_parameter(option.name, option.value.strip('"'))
    return entry


@contextlib.contextmanager
def xtables_lock(wait_seconds: int):
    """The lock iptables-legacy takes (--wait): python-iptables does not take it by itself."""
    with open(XTABLES_LOCK, "a") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackendError(f"the xtables lock {XTABLES_LOCK} is held by another process "
                                       f"(waited {wait_seconds}s; raise --wait)") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_backend(name: str, wait: int, executables: dict[str, str] | None = None, applier: str = "") -> Backend:
    return {"nft": NftBackend, "legacy": LegacyBackend}[name](wait, executables, applier)
