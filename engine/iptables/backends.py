"""The two places iptables rules can live: legacy x_tables and nf_tables.

Both read with their own *-save and delete with their own *-restore --noflush (text, so one
removal path serves both). They differ in how a plan is applied: legacy through python-iptables
(or iptables-legacy-restore), nf_tables through iptables-nft-restore --noflush. Both commit one
table at a time (iptables-nft-restore too sends each COMMIT as its own nf_tables transaction),
so a table is the unit of every install step. Applying is always a swap: the objects of an
earlier install in a table go in the same commit that adds the new ones (live.swap_script), so a
reinstall never leaves an instant with neither.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time

from engine.iptables import iptc_loader, live
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

    def swap_tables(self, family: int, tables: list[TablePlan], going: live.Owned,
                    claim: live.Claim = live.NO_CLAIM) -> live.Owned:
        """Replace our objects `going` (found in a save just before) by `tables`, one atomic
        commit per table (per family for nf_tables). Returns what was replaced, for the undo.
        `claim`: the earlier install's untagged rules (finds them again under a lock)."""
        self.restore(family, live.swap_script(going, plan_coming(tables)))
        return going

    def apply_units(self, plan: FamilyPlan) -> list[tuple[str, list[TablePlan]]]:
        """How a family plan is split into atomic steps: (step label, tables in it), a table each."""
        return [(f"iptables-{self.name} {plan.label} {t.name}", [t]) for t in plan.tables]

    def scaffold_view(self, family: int, save_text: str):
        """What scaffold_created compares before and after an apply; None: this backend makes none."""
        return None

    def scaffold_created(self, before, after, tables: list[TablePlan]) -> dict | None:
        """What an apply made besides our chains that uninstall must remove once empty (tables,
        base chains), from the views before and after; None: this backend makes none."""
        return None

    def scaffold_expected(self, before, tables: list[TablePlan]) -> dict | None:
        """What applying `tables` will create besides our chains (recorded before it exists)."""
        return None

    def remove_scaffold(self, family: int, created: dict | None, dry_run: bool = False, going=None) -> list[str]:
        """Remove what scaffold_created recorded, where it is empty again."""
        return []


class NftBackend(Backend):
    name = "nft"

    # iptables-nft creates a table and its base chains on first use (nft_scaffold.py)
    def scaffold_view(self, family: int, save_text: str):
        from engine.iptables import nft_scaffold

        return nft_scaffold.read(family, save_text)

    def scaffold_created(self, before, after, tables: list[TablePlan]) -> dict | None:
        from engine.iptables import nft_scaffold

        return nft_scaffold.created(before, after, tables)

    def scaffold_expected(self, before, tables: list[TablePlan]) -> dict | None:
        from engine.iptables import nft_scaffold

        return nft_scaffold.expected(before, tables)

    def remove_scaffold(self, family: int, created: dict | None, dry_run: bool = False, going=None) -> list[str]:
        from engine.iptables import nft_scaffold

        return nft_scaffold.remove_if_empty(family, created, dry_run, going)


class LegacyBackend(Backend):
    name = "legacy"

    def swap_tables(self, family: int, tables: list[TablePlan], going: live.Owned,
                    claim: live.Claim = live.NO_CLAIM) -> live.Owned:
        if self.applier == LEGACY_RESTORE:
            # the same rendered plan as the nft path: one atomic restore per table (apply_units)
            return super().swap_tables(family, tables, going, claim)
        # libxtables keeps one global extension registry per process, so python-iptables
        # cannot load e.g. REDIRECT for IPv6 once it has loaded it for IPv4 ("can't find
        # target REDIRECT"). Each family therefore commits from a process of its own, which
        # finds our objects again under the xtables lock (rules are deleted by position there).
        payload = json.dumps({"family": family, "wait": self.wait, "tables": [table_to_json(t) for t in tables],
                              "save": self.tool(family, "save"), "claim": claim_to_json(claim)})
        result = subprocess.run([sys.executable, "-m", "engine.iptables.legacy_commit"], input=payload,
                                capture_output=True, text=True, timeout=bound(120))
        if result.returncode != 0:
            raise BackendError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else
                               f"python-iptables commit exited {result.returncode}")
        return owned_from_json(json.loads(result.stdout))


def plan_coming(tables: list[TablePlan]) -> live.Coming:
    return {t.name: (t.chains, tuple(r.restore_line() for r in t.rules)) for t in tables}


def owned_to_json(owned: live.Owned) -> dict:
    return {"rules": [list(r) for r in owned.rules], "chains": [[t, c, list(r)] for t, c, r in owned.chains],
            "by_index": sorted(list(x) for x in owned.by_index)}


def owned_from_json(data: dict) -> live.Owned:
    return live.Owned(tuple((t, c, int(i), s) for t, c, i, s in data["rules"]),
                      tuple((t, c, tuple(r)) for t, c, r in data["chains"]),
                      frozenset((t, c, int(i)) for t, c, i in data.get("by_index", [])))


def claim_to_json(claim: live.Claim) -> dict:
    return {"copies": [[*line, n] for line, n in claim.copies.items()], "inserted": sorted(claim.inserted)}


def claim_from_json(data: dict) -> live.Claim:
    return live.Claim({(t, c, s): int(n) for t, c, s, n in data.get("copies", [])},
                      frozenset((t, c, s) for t, c, s in data.get("inserted", [])))


def commit_table(family: int, plan: TablePlan, going: live.Owned) -> None:
    """Swap our objects `going` in one table for `plan`'s in a single python-iptables commit.
    The caller holds the xtables lock and found `going` under it (positions are exact)."""
    iptc = iptc_loader.load()  # python-iptables: imported here so the nft path works without it

    table = (iptc.Table if family == 4 else iptc.Table6)(plan.name)
    table.autocommit = False
    try:
        table.refresh()
        old_chains = [c for t, c, _r in going.chains if t == plan.name]
        for chain in old_chains:  # first: our chains jump to each other
            table.flush_entries(chain)
        # by position, last first (libiptc counts from 0): python-iptables cannot parse every
        # foreign rule, and never needs to here
        for _t, chain, index, _spec in sorted((r for r in going.rules if r[0] == plan.name),
                                              key=lambda r: (r[1], -r[2])):
            if table._iptc.iptc_delete_num_entry(chain.encode(), index - 1, table._handle) != 1:
                raise iptc.IPTCError(f"can't delete rule {index} of {chain}: {table.strerror()}")
        for chain in old_chains:
            if chain not in plan.chains:
                table.delete_chain(chain)
        for chain in plan.chains:
            if chain not in old_chains:
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
    iptc = iptc_loader.load()

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
