"""The iptables engine: plan, install steps, uninstall and drift, over either backend."""
from __future__ import annotations

import hashlib
import sys
from collections import Counter
from dataclasses import dataclass

from engine.contract import Choice, Config, EnginePlan, dns_servers, retrying
from engine.iptables import live, nft_scaffold, ownership
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
    rules: family -> [[table, chain, spec]], exactly the lines rendered, one entry per copy added;
    inserted: family -> those of them inserted at a position (-I), not appended;
    comments: whether the rules carry "tpctl/" comments (False: --disable-comments, or no comment
    match on the host; only then may the record claim untagged rules, see ownership.py);
    chains: family -> [[table, chain]];
    nft_created: family -> the nf_tables tables and base chains our applies created (nft_scaffold)."""
    comments = any(r.comment is not None for f in the_plan.families for t in f.tables for r in t.rules)
    return {"backend": the_plan.backend, "applier": the_plan.applier, "rules": {}, "inserted": {},
            "comments": comments, "chains": {}, "nft_created": nft_created, "firewalld": firewalld}


def install_steps(tx: Transaction, config: Config, the_plan: IptablesPlan, record: dict,
                  replaced: dict[int, live.Claim]) -> list[Step]:
    """One step per table of the plan, each swapping the earlier install's objects in it (and
    tagged leftovers) for the new ones in the same commit, then one for each table only the
    earlier install used, in every family: an IPv4-only install replacing a dualstack one empties
    the IPv6 tables too. `replaced`: what the earlier install may claim per family (claims)."""
    backend = make_backend(the_plan.backend, config.wait, parse_executables(config.iptables_executables),
                           the_plan.applier)
    planned_families = {f.family: f for f in the_plan.families}
    steps: list[Step] = []
    for fam_plan in [*the_plan.families, *(FamilyPlan(f) for f in (4, 6) if f not in planned_families)]:
        planned = {t.name for t in fam_plan.tables}
        claim = replaced.get(fam_plan.family, live.NO_CLAIM)
        units = backend.apply_units(fam_plan)
        # tables only the earlier install used: emptied, a commit each, once the new rules are in
        others = [TablePlan(name, (), ()) for name in _tables_holding_ours(backend, fam_plan.family, claim)
                  if name not in planned]
        units += [(f"iptables-{backend.name} {fam_plan.label} {t.name}: remove the earlier install's rules", [t])
                  for t in others]
        for label, tables in units:
            steps.append(_apply_step(tx, config, backend, fam_plan.family, label, tables, record, claim))
    return steps


def _tables_holding_ours(backend: Backend, family: int, claim: live.Claim) -> list[str]:
    try:
        owned = live.find_owned(live.parse_save(backend.save(family)), claim)
    except BackendError:
        return []
    return sorted({t for t, _c, _i, _s in owned.rules} | {t for t, _c, _r in owned.chains})


def replace_steps(wait: int, record: dict | None, backends: tuple[str, ...] = ("legacy", "nft")) -> list[Step]:
    """Steps that remove earlier tpctl rules (in either backend), each undone by restoring them.
    `record`: the previous install's iptables record (what it may claim, in its backend)."""
    found = owned_everywhere(wait, claims(record), backends, claims_in=(record or {}).get("backend"))
    return [_replace_previous(other, family, owned) for other, family, owned in found]


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


def owned_everywhere(wait: int, claims: dict[int, live.Claim] | None = None,
                     names: tuple[str, ...] = ("legacy", "nft"), claims_in: str | None = None):
    """Yield (backend, family, our objects) wherever tpctl objects exist, in both backends.
    `claims`: untagged rules an install record may claim, in the backend `claims_in` (its own;
    None: either), since its copies are where it put them."""
    for backend in available_backends(wait, names):
        for family in (4, 6):
            claim = (claims or {}).get(family, live.NO_CLAIM) if claims_in in (None, backend.name) else live.NO_CLAIM
            try:
                owned = live.find_owned(live.parse_save(backend.save(family)), claim)
            except BackendError:
                continue
            if owned:
                yield backend, family, owned


def _replace_previous(backend: Backend, family: int, owned: live.Owned) -> Step:
    return Step(f"remove previous tpctl rules ({backend.name} IPv{family})",
                lambda: backend.restore(family, live.removal_script(owned)),
                lambda: backend.restore(family, live.restore_script(owned)))


def _apply_step(tx: Transaction, config: Config, backend: Backend, family: int, label: str, tables,
                record: dict, claim: live.Claim) -> Step:
    names = {t.name for t in tables}
    fam = str(family)
    ours = {(t.name, c) for t in tables for c in t.chains}
    rendered = [(t.name, r.chain, r.spec()) for t in tables for r in t.rules]
    inserted = [(t.name, r.chain, r.spec()) for t in tables for r in t.rules if r.position is not None]
    before: dict = {}

    def do():
        before_text = backend.save(family)
        view = backend.scaffold_view(family, before_text)
        going = live.find_owned(live.parse_save(before_text), claim, only_tables=names)
        prior_scaffold = record["nft_created"].get(fam)
        # Recorded before the kernel call (the journal): exactly the lines this step renders, one
        # entry per copy (the kernel prints them so: tests/netns/test_lifecycle.py), never a diff
        # of two saves, which would count another tool's rule added meanwhile as ours.
        record["rules"].setdefault(fam, []).extend(list(x) for x in rendered)
        record["inserted"].setdefault(fam, []).extend(list(x) for x in inserted)
        chains = record["chains"].setdefault(fam, [])
        chains.extend([t, c] for t, c in sorted(ours) if [t, c] not in chains)
        expected = backend.scaffold_expected(view, tables)
        if expected is not None:
            record["nft_created"][fam] = nft_scaffold.merge(prior_scaffold, expected)
        tx.intend()
        before["going"] = retrying(lambda: backend.swap_tables(family, tables, going, claim),
                                   config.max_retries, config.sleep_between_retries, (BackendError,))
        if view is not None:
            created = backend.scaffold_created(view, backend.scaffold_view(family, backend.save(family)), tables)
            before["created"] = created
            record["nft_created"][fam] = nft_scaffold.merge(prior_scaffold, created)

    def undo():
        # the earlier install's objects back in the same commit that takes the new ones out
        mine = ownership.own(rendered, inserted)
        owned = live.find_owned(live.parse_save(backend.save(family)), mine, only_tables=names)
        backend.restore(family, live.swap_script(owned, live.coming_of(before.get("going", live.Owned((), ())))))
        # only what this step created: tables a replaced install created stay for its rules
        backend.remove_scaffold(family, before.get("created"))

    return Step(label, do, undo)


def claims(record: dict | None) -> dict[int, live.Claim]:
    """What an install record (its iptables part) may claim, per family, beyond tagged objects."""
    return {family: ownership.claim_of(record, family) for family in (4, 6)}


def refused_lines(found: dict[int, live.Claim]) -> list[str]:
    """The record's lines that are not tpctl's to delete, as the warnings uninstall prints."""
    return [f"tpctl: the install record names IPv{family} {t}: -A {c} {s}, which carries no tpctl tag and is "
            "not a rule tpctl renders: left alone" for family, claim in sorted(found.items())
            for t, c, s in claim.refused]


def _not_deleted_yet(deleted: Counter, backend: str, family: int, claim: live.Claim) -> live.Claim:
    """`deleted`: copies of untagged rules this removal deleted already, per (backend, family,
    line). lifecycle hands uninstall every record of the same installs (the state file's, the
    journal's) one by one, and two records of one install must not delete two copies (a twin
    another tool made)."""
    copies = {line: n - deleted[(backend, family, line)] for line, n in claim.copies.items()}
    return live.Claim({line: n for line, n in copies.items() if n > 0}, claim.inserted, claim.refused)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def uninstall(record: dict | None, wait: int = 5, dry_run: bool = False, say=None,
              deleted: Counter | None = None) -> list[str]:
    """Remove our rules and chains from every backend and family; return what was removed.
    `record`: the install's iptables record, or None (then tags alone find them); `say`: where
    the record's refused lines are reported; `deleted`: what this removal deleted already (a
    fresh Counter when not given)."""
    deleted = Counter() if deleted is None else deleted
    found = claims(record)
    for warning in refused_lines(found):
        (say or _to_stderr)(warning)
    mine = str((record or {}).get("backend", "nft"))
    found = {family: _not_deleted_yet(deleted, mine, family, claim) for family, claim in found.items()}
    report = []
    going: dict[int, live.Owned] = {}  # what a dry run leaves in the scaffold's backend, counted as gone
    scaffold_backend = make_backend("nft", wait)  # the only backend with a scaffold (nft_created)
    for backend, family, owned in owned_everywhere(wait, found, claims_in=mine):
        report += [f"{backend.name} IPv{family} {t}: -D {c} {s}" for t, c, _i, s in owned.rules]
        report += [f"{backend.name} IPv{family} {t}: -X {c}" for t, c, _r in owned.chains]
        if not dry_run:
            backend.restore(family, live.removal_script(owned))
            deleted.update((backend.name, family, (t, c, s)) for t, c, _i, s in owned.rules if not live.is_tagged(c, s))
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
    found = claims(record)
    for family_text, chains in record.get("chains", {}).items():
        family = int(family_text)
        recorded = {tuple(x) for x in (record.get("rules") or {}).get(family_text, [])}
        tables = live.parse_save(backend.save(family))
        owned = live.find_owned(tables, found[family])
        present = owned.lines()
        for line in sorted(recorded - present):
            problems.append(f"IPv{family} {line[0]}: missing rule -A {line[1]} {line[2]}")
        for line in sorted(present - recorded):
            problems.append(f"IPv{family} {line[0]}: unexpected tpctl rule -A {line[1]} {line[2]}")
        live_chains = {(t, c) for t, c, _r in owned.chains}
        for table, chain in chains:
            if (table, chain) not in live_chains:
                problems.append(f"IPv{family} {table}: missing chain {chain}")
    return problems
