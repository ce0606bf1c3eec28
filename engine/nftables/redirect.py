"""The nftables engine on the redirect-engine contract: one table, `inet tpctl`, that tpctl owns
whole. Install, reconfiguration and the undo of either are each one `nft -f` transaction that
replaces the table; uninstall deletes it and nothing else; status compares the kernel's listing
of it with the one taken right after the install.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from engine.contract import (
    NONE,
    Check,
    Choice,
    Config,
    EnginePlan,
    HostFacts,
    Memo,
    RedirectEngine,
    Say,
    Transaction,
    default_of,
    dns_servers,
    families,
    retrying,
    shape_problem,
)

from . import nft
from .ruleset import TABLE, Inputs, Table, build

# flag -> why the nftables engine cannot honour it (a failed check: fall back, never ignore)
UNSUPPORTED = {
    "store_firewalld": "--store-firewalld stores iptables rules in firewalld's direct.xml; the nftables "
                       "table is not among them",
}
# flag -> why it changes nothing here (said, not an error)
NO_EFFECT = {
    "wait": "--wait is the xtables lock's; nft commits its transaction without it",
    "wait_interval": "--wait-interval is the xtables lock's",
    "iptables_executables": "--iptables-executables names iptables tools; this engine runs nft",
}
DRIFT_LINES = 6  # differing lines status shows at most


@dataclass(frozen=True)
class NftablesPlan(EnginePlan):
    table: Table
    warnings: tuple[str, ...] = ()

    def render(self) -> str:
        """The dry-run text: exactly the script `nft -f` is given."""
        return self.table.script()


def plan_for(config: Config, facts: HostFacts, fams: tuple[int, ...]) -> NftablesPlan:
    servers, warnings = {}, []
    for family in fams:
        servers[family], notes = dns_servers(config, facts, family)
        warnings += notes
    return NftablesPlan(build(config, Inputs(fams, servers)), tuple(warnings))


class NftablesEngine(RedirectEngine):
    name = "nftables"
    title = "nftables"
    selected_by = "--nftables-enabled"

    def __init__(self) -> None:
        self._planned: tuple | None = None  # (config, facts, fams, plan): the check's plan is install's

    def requested(self, config: Config) -> str | None:
        return "--nftables-enabled" if config.nftables_enabled else None

    def _plan_for(self, config: Config, facts: HostFacts, fams: tuple[int, ...]) -> NftablesPlan:
        last = self._planned
        if last is None or last[0] is not config or last[1] is not facts or last[2] != fams:
            self._planned = last = (config, facts, fams, plan_for(config, facts, fams))
        return last[3]

    def base_checks(self, config: Config, facts: HostFacts) -> list[Check]:
        found = nft.tool()
        checks = [Check("nft", found is not None, found or "the nft tool is not installed",
                        fix="install the nftables package")]
        for flag, why in UNSUPPORTED.items():
            if getattr(config, flag):
                checks.append(Check(flag.replace("_", "-"), False, why,
                                    fix=f"drop --{flag.replace('_', '-')}, or use the iptables engine"))
        return checks

    def checks(self, config: Config, facts: HostFacts, memo: Memo = NONE) -> list[Check]:
        """The kernel itself judges the table this install would make: `nft --check` sends the
        very transaction and has the kernel abort it (inet nat needs Linux 5.2, concatenated
        interval sets 5.6, each expression its module). Each set with one element: the features
        are the same, and 20,000 exclusions would triple the check's cost."""
        checks = self.base_checks(config, facts)
        if all(c.ok for c in checks):
            the_plan = self._plan_for(config, facts, families(config, facts)[0])
            problem = nft.check(the_plan.table.sample().script())
            checks.append(Check("nf_tables takes the table", problem is None,
                                f"{nft.version()}: " + ("the kernel accepts the transaction (nft --check)"
                                                        if problem is None else problem.splitlines()[0]),
                                fix="a kernel with nf_tables, inet nat (5.2+) and concatenated ranges (5.6+)"))
        return checks

    def plan(self, config: Config, facts: HostFacts, choice: Choice) -> NftablesPlan:
        return self._plan_for(config, facts, choice.families)

    def notes(self, config: Config, facts: HostFacts, choice: Choice) -> list[str]:
        return [f"# [NOTE] {why}: it has no effect" for flag, why in NO_EFFECT.items()
                if getattr(config, flag) != default_of(flag)]

    def remove_previous(self, tx: Transaction, config: Config, record: dict | None) -> None:
        """Another engine redirects now: our table goes, in one transaction, undone by loading
        the listing taken just before."""
        if record is None and not nft.exists():
            return
        tx.step(f"remove the previous install's nftables table {TABLE}", _take_table, nft.restore)

    def apply(self, tx: Transaction, config: Config, plan: EnginePlan, previous: dict | None, record: dict) -> None:
        """One step, one transaction: the table (ours from an earlier install, or absent) is
        replaced whole, so every packet meets either the old table or the new one."""
        assert isinstance(plan, NftablesPlan)
        record.update({"table": TABLE, "families": list(plan.table.families), **plan.table.summary(),
                       "listing": None})

        def do() -> str | None:
            before = nft.listing()  # what undo puts back: the replaced install's table, or none
            retrying(lambda: nft.apply(plan.render()), config.max_retries, config.sleep_between_retries,
                     (nft.NftError,))
            try:  # what status compares with; the table is in: a failed read must not strand it without undo
                record["listing"] = nft.listing()
            except nft.NftError:
                record["listing"] = None
            return before

        tx.step(f"nftables: replace table {TABLE} in one transaction", do, nft.restore)

    def installed_line(self, plan: EnginePlan, record: dict) -> str:
        assert isinstance(plan, NftablesPlan)
        table = plan.table
        elements = sum(len(s.elements) for s in table.sets)
        return (f"tpctl: installed the nftables engine (table {TABLE}: {table.rule_count()} rules in "
                f"{len(table.chains)} chains, {len(table.sets)} sets of {elements} elements, "
                f"{' + '.join(f'IPv{f}' for f in table.families)})")

    def uninstall(self, record: dict | None, options: dict, dry_run: bool, say: Say) -> list[str]:
        """Our table, found by its name (the only name this engine ever writes); a record naming
        another table is said, and that table left alone."""
        named = (record or {}).get("table", TABLE)
        if named != TABLE:
            say(f"tpctl: warning: the record names nftables table {named!r}, not tpctl's {TABLE!r}: left alone")
        present = nft.exists()
        if present and not dry_run:
            nft.delete()
        return [f"nftables table {TABLE}"] if present else []

    def status(self, record: dict) -> tuple[dict, list[str], list[str]]:
        now = nft.listing()
        summary = {"table": TABLE, "families": record.get("families", []), "chains": record.get("chains", {}),
                   "sets": record.get("sets", {})}
        sets = ", ".join(f"{name} ({count})" for name, count in summary["sets"].items()) or "none"
        lines = [f"table {TABLE} (see it with: nft list table {TABLE}): "
                 f"{sum(summary['chains'].values())} rules in {len(summary['chains'])} chains; sets: {sets}"]
        return summary, lines, drift(record.get("listing"), now)

    def validate_record(self, record: dict) -> str | None:
        return shape_problem(record, {"table": str, "families": [int], "chains": {"*": int}, "sets": {"*": int},
                                      "listing": (str, type(None))}, "nftables")

    def leftovers(self, options: dict) -> list[str]:
        return [f"nftables table {TABLE}"] if nft.exists() else []


def drift(recorded: str | None, now: str | None) -> list[str]:
    """How the kernel's table differs from the listing taken right after the install."""
    if now is None:
        return [f"nftables table {TABLE} is missing"]
    if recorded is None or recorded == now:
        return []  # None: an install that stopped before its listing; nothing to compare with
    changed = [line for line in difflib.unified_diff(recorded.splitlines(), now.splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    shown = "; ".join(f"{'missing' if line[0] == '-' else 'added'}: {line[1:].strip()}"
                      for line in changed[:DRIFT_LINES])
    more = f" and {len(changed) - DRIFT_LINES} more" if len(changed) > DRIFT_LINES else ""
    return [f"nftables table {TABLE} changed since install: {shown}{more}"]


def _take_table() -> str | None:
    saved = nft.listing()
    nft.delete()
    return saved
