"""The iptables engine: plan, install steps, uninstall and drift, over either backend."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from engine.contract import Choice, Config, EnginePlan, dns_servers, retrying
from engine.iptables import live, nft_scaffold
from engine.iptables.backends import Backend, BackendError, make_backend
from engine.iptables.builder import FamilyInputs, build_family
from engine.iptables.rules import FamilyPlan, TablePlan
from engine.probe import HostFacts
from engine.transaction import Step, Transaction


@dataclass(frozen=True)
class IptablesPlan(EnginePlan):
    backend: str
    applier: str  # selection's PYTHON_IPTABLES, LEGACY_RESTORE or NFT_RESTORE
    families: tuple[FamilyPlan, ...]
    warnings: tuple[str, ...] = ()

    def render(self) -> str:
        """The dry-run text: iptables-restore input per family, as kumactl prints it."""
        return "\n".join(f"### {f.label} ###\n\n{f.restore_text()}" for f in self.families)

    def digest(self) -> str:  # the same rules through another backend or applier are another install
        return hashlib.sha256((self.backend + self.applier + self.render()).encode()).hexdigest()


def family_inputs(config: Config, facts: HostFacts, family: int) -> tuple[FamilyInputs, list[str]]:
    servers, warnings = dns_servers(config, facts, family)
    conntrack = facts.extensions.get("CT", True)
    if config.dns_enabled and not conntrack and not config.skip_dns_conntrack_zone_split:
        warnings.append("the CT target is missing: DNS conntrack zone split is off")
    docker = family in (facts.docker_output or ())
    if docker and config.capture_all_dns and conntrack and not config.skip_dns_conntrack_zone_split:
        # as kumactl: zones and Docker's embedded DNS do not mix when all DNS is captured
        warnings.append(f"IPv{family}: Docker's DOCKER_OUTPUT chain is present and all DNS is captured: the DNS "
                        "conntrack zone split is off (unsupported inside Docker custom networks, as in kumactl)")
        conntrack = False
    return FamilyInputs(family, servers, comments=facts.extensions.get("comment", True),
                        conntrack_zones=conntrack, docker_output=docker), warnings


def docker_output_families(backend: str, families: tuple[int, ...], wait: int) -> tuple[int, ...]:
    """The families whose nat table has Docker's DOCKER_OUTPUT chain (kumactl looks for
    `:DOCKER_OUTPUT` in `iptables-save -t nat`): kuma-dp's own DNS then jumps there."""
    found = []
    backend_tools = make_backend(backend, wait)
    for family in families:
        try:
            nat = live.parse_save(backend_tools.save(family)).get("nat")
        except BackendError:
            continue
        if nat is not None and "DOCKER_OUTPUT" in nat.chains:
            found.append(family)
    return tuple(found)


def plan(config: Config, facts: HostFacts, choice: Choice) -> IptablesPlan:
    families, warnings = [], []
    for family in choice.families:
        inputs, notes = family_inputs(config, facts, family)
        families.append(build_family(config, inputs))
        warnings += notes
    return IptablesPlan(choice.backend or "nft", choice.applier or "", tuple(families), tuple(warnings))


def parse_executables(text: str) -> dict[str, str]:
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = item.partition(":")
        result[name] = path
    return result


def new_record(the_plan: IptablesPlan, nft_created: dict, firewalld: bool) -> dict:
    """The engine part of State, filled in while the steps run (each object before it exists):
    rules: family -> [[table, chain, spec]]; chains: family -> [[table, chain]];
    nft_created: family -> the nf_tables tables and base chains our applies created (nft_scaffold)."""
    return {"backend": the_plan.backend, "applier": the_plan.applier, "rules": {}, "chains": {},
            "nft_created": nft_created, "firewalld": firewalld}


def install_steps(tx: Transaction, config: Config, the_plan: IptablesPlan, record: dict,
                  replaced: dict[int, set]) -> list[Step]:
    """One step per table of the plan, each swapping the earlier install's objects in it (and
    tagged leftovers) for the new ones in the same commit, then one for each table only the
    earlier install used. `replaced`: the earlier install's rule texts per family (recorded_lines)."""
    backend = make_backend(the_plan.backend, config.wait, parse_executables(config.iptables_executables),
                           the_plan.applier)
    steps: list[Step] = []
    for fam_plan in the_plan.families:
        planned = {t.name for t in fam_plan.tables}
        units = backend.apply_units(fam_plan)
        # tables only the earlier install used: emptied, a commit each, once the new rules are in
        others = [TablePlan(name, (), ()) for name in _tables_holding_ours(backend, fam_plan.family,
                                                                             replaced.get(fam_plan.family, set()))
                  if name not in planned]
        units += [(f"iptables-{backend.name} {fam_plan.label} {t.name}: remove the earlier install's rules", [t])
                  for t in others]
        for label, tables in units:
            steps.append(_apply_step(tx, config, backend, fam_plan.family, label, tables, record,
                                     frozenset(replaced.get(fam_plan.family, set()))))
    return steps


def _tables_holding_ours(backend: Backend, family: int, recorded: set) -> list[str]:
    try:
        owned = live.find_owned(live.parse_save(backend.save(family)), recorded)
    except BackendError:
        return []
    return sorted({t for t, _c, _i, _s in owned.rules} | {t for t, _c, _r in owned.chains})


def replace_steps(wait: int, recorded: dict[int, set], backends: tuple[str, ...] = ("legacy", "nft")) -> list[Step]:
    """Steps that remove earlier tpctl rules (in either backend), each undone by restoring them.
    `recorded`: the previous install's rule texts per family (see recorded_lines)."""
    return [_replace_previous(other, family, owned) for other, family, owned in owned_everywhere(wait, recorded, backends)]


def available_backends(wait: int, names: tuple[str, ...] = ("legacy", "nft")) -> list[Backend]:
    """The backends whose save tool runs (HostFacts.backends names the available ones)."""
    found = []
    for name in names:
        backend = make_backend(name, wait)
        try:
            backend.tool(4, "save")
        except BackendError:
            continue
        found.append(backend)
    return found


def owned_everywhere(wait: int, recorded: dict[int, set] | None = None, names: tuple[str, ...] = ("legacy", "nft")):
    """Yield (backend, family, our objects) wherever tpctl objects exist, in both backends."""
    for backend in available_backends(wait, names):
        for family in (4, 6):
            try:
                owned = live.find_owned(live.parse_save(backend.save(family)), (recorded or {}).get(family, set()))
            except BackendError:
                continue
            if owned:
                yield backend, family, owned


def _replace_previous(backend: Backend, family: int, owned: live.Owned) -> Step:
    return Step(f"remove previous tpctl rules ({backend.name} IPv{family})",
                lambda: backend.restore(family, live.removal_script(owned)),
                lambda: backend.restore(family, live.restore_script(owned)))


def _apply_step(tx: Transaction, config: Config, backend: Backend, family: int, label: str, tables,
                record: dict, replaced: frozenset) -> Step:
    names = {t.name for t in tables}
    fam = str(family)
    ours = {(t.name, c) for t in tables for c in t.chains}
    planned = {(t.name, r.chain, r.spec()) for t in tables for r in t.rules}
    before: dict = {}

    def do():
        before_text = backend.save(family)
        tables_before = live.parse_save(before_text)
        before["lines"] = _all_lines(tables_before, names)
        going = live.find_owned(tables_before, replaced, only_tables=names)
        rules = record["rules"].setdefault(fam, [])
        chains = record["chains"].setdefault(fam, [])
        prior_scaffold = record["nft_created"].get(fam)
        # Recorded before the kernel call (the journal): the rules as rendered (their tags find
        # them too), our chains, and the tables and base chains this apply will create.
        rendered = [list(x) for x in sorted(planned) if list(x) not in rules]
        rules.extend(rendered)
        chains.extend([t, c] for t, c in sorted(ours) if [t, c] not in chains)
        expected = backend.scaffold_expected(before_text, tables)
        if expected is not None:
            record["nft_created"][fam] = nft_scaffold.merge(prior_scaffold, expected)
        tx.intend()
        before["going"] = retrying(lambda: backend.swap_tables(family, tables, going, replaced),
                                   config.max_retries, config.sleep_between_retries, (BackendError,))
        # Record what the kernel now reports, not what we rendered: status compares like with like.
        after_text = backend.save(family)
        added = _all_lines(live.parse_save(after_text), names) - (before["lines"] - before["going"].lines())
        rules[:] = [r for r in rules if r not in rendered] + [[t, c, s] for t, c, s in sorted(added)]
        created = backend.scaffold_created(before_text, after_text, ours)
        if created is not None:
            before["created"] = created
            record["nft_created"][fam] = nft_scaffold.merge(prior_scaffold, created)

    def undo():
        # the earlier install's objects back in the same commit that takes the new ones out
        recorded = {tuple(x) for x in record["rules"].get(fam, [])} | planned
        owned = live.find_owned(live.parse_save(backend.save(family)), recorded, only_tables=names)
        backend.restore(family, live.swap_script(owned, live.coming_of(before.get("going", live.Owned((), ())))))
        # only what this step created: tables a replaced install created stay for its rules
        backend.remove_scaffold(family, before.get("created"))

    return Step(label, do, undo)


def _all_lines(tables: dict, names: set[str]) -> set:
    return {(t.name, c, s) for t in tables.values() if t.name in names for c, s in t.rules}


def recorded_lines(record: dict | None) -> dict[int, set]:
    """The rule texts an install recorded, per family (its iptables record)."""
    out: dict[int, set] = {4: set(), 6: set()}
    for family, lines in ((record or {}).get("rules", {}) or {}).items():
        out[int(family)] = {tuple(x) for x in lines}
    return out


def uninstall(record: dict | None, wait: int = 5, dry_run: bool = False) -> list[str]:
    """Remove our rules and chains from every backend and family; return what was removed.
    `record`: the install's iptables record, or None (then tags alone find them)."""
    recorded = recorded_lines(record)
    report = []
    going: dict[int, live.Owned] = {}  # what a dry run leaves in the scaffold's backend, counted as gone
    scaffold_backend = make_backend("nft", wait)  # the only backend with a scaffold (nft_created)
    for backend, family, owned in owned_everywhere(wait, recorded):
        report += [f"{backend.name} IPv{family} {t}: -D {c} {s}" for t, c, _i, s in owned.rules]
        report += [f"{backend.name} IPv{family} {t}: -X {c}" for t, c, _r in owned.chains]
        if not dry_run:
            backend.restore(family, live.removal_script(owned))
        elif backend.name == scaffold_backend.name:
            going[family] = owned
    for family, created in sorted((record or {}).get("nft_created", {}).items()):
        try:
            report += scaffold_backend.remove_scaffold(int(family), created, dry_run, going.get(int(family)))
        except BackendError as err:  # our rules are gone; only empty tables would stay
            report.append(f"kept the empty nf_tables IPv{family} tables install created: {err}")
    return report


def remove_scaffold(wait: int, family: int, created: dict | None) -> list[str]:
    """The nf_tables tables and base chains an install created, where they are empty."""
    return make_backend("nft", wait).remove_scaffold(family, created)


def drift(record: dict) -> list[str]:
    """Differences between what install recorded (its iptables record) and the kernel now."""
    backend = make_backend(record.get("backend", "nft"), 5)
    problems = []
    recorded = recorded_lines(record)
    for family_text, chains in record.get("chains", {}).items():
        family = int(family_text)
        tables = live.parse_save(backend.save(family))
        owned = live.find_owned(tables, recorded[family])
        present = owned.lines()
        for line in sorted(recorded[family] - present):
            problems.append(f"IPv{family} {line[0]}: missing rule -A {line[1]} {line[2]}")
        for line in sorted(present - recorded[family]):
            problems.append(f"IPv{family} {line[0]}: unexpected tpctl rule -A {line[1]} {line[2]}")
        live_chains = {(t, c) for t, c, _r in owned.chains}
        for table, chain in chains:
            if (table, chain) not in live_chains:
                problems.append(f"IPv{family} {table}: missing chain {chain}")
    return problems
