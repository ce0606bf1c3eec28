"""The iptables engine on the redirect-engine contract: kumactl's rules through either backend."""
from __future__ import annotations

import dataclasses
import functools
from collections import Counter

from engine import firewalld
from engine.contract import Check, Choice, Config, EnginePlan, HostFacts, RedirectEngine, Say, Step, Transaction
from engine.iptables import engine as iptables
from engine.iptables import selection
from engine.iptables.engine import IptablesPlan


class IptablesEngine(RedirectEngine):
    name = "iptables"
    title = "iptables"

    def requested(self, config: Config) -> str | None:
        return "the default"  # the registry's last engine: the default and every fallback

    def choose(self, config: Config, facts: HostFacts) -> tuple[dict, list[str]]:
        return selection.choose(config, facts)

    def facts_for(self, config: Config, facts: HostFacts, choice: Choice) -> HostFacts:
        """python-iptables' self-test costs two interpreter start-ups: only the legacy backend pays.
        Docker's DOCKER_OUTPUT chain is looked for where the DNS rules will go, as kumactl does."""
        found: dict[str, object] = {}
        if config.dns_enabled and facts.docker_output is None:
            found["docker_output"] = iptables.docker_output_families(choice.backend or "nft", choice.families,
                                                                     config.wait)
        if choice.backend == "legacy" and facts.python_iptables_problem is None:
            from engine.iptables.legacy_selftest import python_iptables_problem

            found["python_iptables_problem"] = python_iptables_problem() or ""
        return dataclasses.replace(facts, **found) if found else facts  # type: ignore[arg-type]

    def plan(self, config: Config, facts: HostFacts, choice: Choice) -> IptablesPlan:
        return iptables.plan(config, facts, choice)

    def notes(self, config: Config, facts: HostFacts, choice: Choice) -> list[str]:
        """Never leave rules where the user's `iptables` does not look without saying so."""
        shown = "nft" if facts.iptables_default == "nf_tables" else "legacy"
        if facts.iptables_default and choice.backend != shown:
            return [f"# [NOTE] rules go to the {choice.backend} tables, but `iptables` on this host is "
                    f"{facts.iptables_default}: see them with iptables-{choice.backend}-save"]
        return []

    def remove_previous(self, tx: Transaction, config: Config, record: dict | None) -> None:
        """Another engine is installed now: our rules of the earlier install go, in both backends."""
        self._remove(tx, config, record, ("legacy", "nft"))

    def _remove(self, tx: Transaction, config: Config, record: dict | None, backends: tuple[str, ...]) -> None:
        tx.run(iptables.replace_steps(config.wait, record, backends))
        # the nf_tables tables and base chains it created go too once empty (an iptables-nft
        # install inherits them instead). No undo: the removal steps' undo puts the rules back,
        # and iptables-nft-restore remakes the tables.
        for family, created in sorted((record or {}).get("nft_created", {}).items()):
            tx.step(f"remove the previous install's empty nf_tables tables (IPv{family})",
                    functools.partial(iptables.remove_scaffold, config.wait, int(family), created))

    def apply(self, tx: Transaction, config: Config, plan: EnginePlan, previous: dict | None, record: dict) -> None:
        """Each table is swapped in one commit: the earlier install's rules there (recorded, or
        found by their tags) go in the commit that adds the new ones. The other backend's rules
        of an earlier install go afterwards, once the new ones redirect."""
        assert isinstance(plan, IptablesPlan)
        # a replaced install's nf_tables scaffold stays ours to remove once empty
        same_backend = (previous or {}).get("backend") == plan.backend
        record.update(iptables.new_record(plan, dict((previous or {}).get("nft_created", {})) if same_backend else {},
                                          firewalld=config.store_firewalld))
        tx.run(iptables.install_steps(tx, config, plan, record, iptables.claims(previous)))
        other = tuple(b for b in ("legacy", "nft") if b != plan.backend)
        self._remove(tx, config, previous if not same_backend else None, other)
        if config.store_firewalld:
            tx.run([_firewalld_step(plan)])

    def validate_record(self, part: dict) -> str | None:
        """Why this engine's part of an install record cannot be used (state.record_problem)."""
        return record_problem(part)

    def installed_line(self, plan: EnginePlan, record: dict) -> str:
        assert isinstance(plan, IptablesPlan)
        return (f"tpctl: installed the iptables engine ({plan.backend} backend through {plan.applier}, "
                f"{', '.join(f.label for f in plan.families)})")

    def uninstall(self, record: dict | None, options: dict, dry_run: bool, say: Say) -> list[str]:
        removed = iptables.uninstall(record, dry_run=dry_run, say=say,
                                     deleted=options.get("removal", {}).setdefault("iptables_deleted", Counter()))
        if (record or {}).get("firewalld") or record is None:
            path = None if dry_run else firewalld.remove_ours()
            if path:
                removed.append(f"{path}: tpctl entries")
        return removed

    def status(self, record: dict) -> tuple[dict, list[str], list[str]]:
        summary = {
            "backend": record["backend"],
            "applier": record.get("applier", selection.PYTHON_IPTABLES if record["backend"] == "legacy"
                                  else selection.NFT_RESTORE),
            "families": sorted(record["chains"]),
            "rules": {fam: len(lines) for fam, lines in record["rules"].items()},
            "chains": record["chains"],
        }
        lines = [f"backend: {summary['backend']} tables, written through {summary['applier']} "
                 f"(see them with iptables-{summary['backend']}-save)"]
        for family in summary["families"]:
            chains = sorted({c for _t, c in record["chains"][family]})
            lines.append(f"IPv{family}: {summary['rules'].get(family, 0)} rules in {len(chains)} chains "
                         f"({', '.join(chains)})")
        if record.get("firewalld"):
            lines.append(f"firewalld: rules stored in {firewalld.direct_path()}")
        return summary, lines, iptables.drift(record)

    def leftovers(self, options: dict) -> list[str]:
        return [f"{backend.name} IPv{family} chain {c}"
                for backend, family, owned in iptables.owned_everywhere(5) for _t, c, _r in owned.chains]


def _lines_problem(value: object, width: int, where: str) -> str | None:
    """Family -> [[text, ...]] with `width` texts per entry (rules, inserted, chains)."""
    if not isinstance(value, dict):
        return f"{where} is not a record"
    for family, lines in value.items():
        if family not in ("4", "6") or not isinstance(lines, list):
            return f"{where}.{family} is not a family's list"
        if not all(isinstance(x, list) and len(x) == width and all(isinstance(t, str) for t in x) for x in lines):
            return f"{where}.{family} holds an entry that is not {width} texts"
    return None


def record_problem(part: dict) -> str | None:
    """The shape every install of this engine writes (new_record); None when it matches."""
    if not any(part.get(key) for key in ("backend", "rules", "inserted", "chains", "nft_created")):
        return None  # the journal of an install stopped before its first iptables step: nothing yet
    if part.get("backend") not in ("legacy", "nft"):
        return f"backend {part.get('backend')!r} is neither legacy nor nft"
    for key, width in (("rules", 3), ("inserted", 3), ("chains", 2)):
        why = _lines_problem(part.get(key, {}), width, key)
        if why:
            return why
    for key in ("comments", "firewalld"):
        if key in part and not isinstance(part[key], bool):
            return f"{key} is not true or false"
    created = part.get("nft_created", {})
    if not isinstance(created, dict) or not all(isinstance(v, dict) for v in created.values()):
        return "nft_created is not a record of records"
    for family, scaffold in created.items():  # uninstall reads these after our rules are gone
        if family not in ("4", "6"):
            return f"nft_created names family {family!r}, not 4 or 6"
        tables, chains = scaffold.get("tables", []), scaffold.get("chains", [])
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            return f"nft_created[{family}].tables is not a list of names"
        if not isinstance(chains, list) or not all(
                isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in chains):
            return f"nft_created[{family}].chains is not a list of [table, chain] pairs"
    return None


def _firewalld_step(plan: IptablesPlan) -> Step:
    saved: dict = {}

    def do():
        saved["path"], saved["previous"] = firewalld.write(plan.families)

    return Step("store rules in firewalld's direct.xml", do,
                lambda: firewalld.restore(saved["path"], saved["previous"]))


__all__ = ["IptablesEngine", "Check"]
