"""install: Config -> HostFacts -> Choice -> Plan -> a transaction of steps -> State."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable

from engine import firewalld, state, transaction
from engine.choice import Choice, choose
from engine.config import Config
from engine.iptables import engine as iptables_engine
from engine.probe import HostFacts, probe
from engine.transaction import Step

Say = Callable[[str], None]


def ebpf_checks(config: Config, facts: HostFacts) -> list:
    from engine import ebpf_glue

    return ebpf_glue.checks(config, facts)


def decide(config: Config) -> tuple[HostFacts, Choice]:
    facts = probe(config.resolv_conf)
    checks = ebpf_checks(config, facts) if config.ebpf_enabled else None
    choice = choose(config, facts, checks)
    if choice.backend == "legacy" and facts.python_iptables_problem is None:
        # python-iptables' self-test costs two interpreter start-ups: only the legacy backend pays
        from engine.iptables.legacy_selftest import python_iptables_problem

        facts = dataclasses.replace(facts, python_iptables_problem=python_iptables_problem() or "")
        choice = choose(config, facts, checks)
    return facts, choice


def install(config: Config, state_dir: str, say: Say, show: Say) -> None:
    """`say` is for progress and notes (stderr), `show` for the dry-run plan (stdout)."""
    facts, choice = decide(config)
    for reason in choice.reasons:
        say(f"# {reason}")
    if choice.engine == "ebpf":
        from engine import ebpf_glue

        ebpf_glue.install(config, facts, choice, state_dir, say, show)
        return
    plan = iptables_engine.plan(config, facts, choice)
    for warning in plan.warnings:
        say(f"# [WARNING] {warning}")
    _note_backend_visibility(choice, facts, say)
    if config.dry_run:
        show(plan.render())
        return
    digest = hashlib.sha256((plan.backend + plan.applier + plan.render()).encode()).hexdigest()
    with state.locked(state_dir):
        previous = state.load(state_dir)
        if previous and previous.get("digest") == digest and not iptables_engine.drift(previous):
            say("tpctl: already installed with this configuration; nothing changed")
            return
        if previous and previous.get("engine") == "ebpf":
            from engine import ebpf_glue

            say("# replacing the previous eBPF install")
            ebpf_glue.uninstall(previous["ebpf"]["bpffs_path"], previous["ebpf"], dry_run=False)
            previous = None
        record = iptables_engine.InstallRecord(plan.backend, plan.applier)
        # a replaced install's nf_tables scaffold stays ours to remove once empty
        record.nft_created = dict((previous or {}).get("iptables", {}).get("nft_created", {}))
        recorded = iptables_engine.recorded_lines(previous)
        steps = iptables_engine.install_steps(config, plan, recorded, record)
        if config.store_firewalld:
            steps.append(_firewalld_step(plan))
        done = transaction.run(steps, say if config.verbose else (lambda _m: None))
        state.save(state_dir, state.install_record(
            "iptables", digest, choice.to_json(), config.as_dict(), steps=done,
            iptables={"backend": record.backend, "applier": record.applier, "rules": record.rules, "chains": record.chains,
                      "ipv6_passthrough_added": record.ipv6_passthrough_added,
                      "nft_created": record.nft_created,
                      "firewalld": config.store_firewalld}))
    say(f"tpctl: installed the iptables engine ({plan.backend} backend through {plan.applier}, "
        f"{', '.join(f.label for f in plan.families)})")


def _firewalld_step(plan) -> Step:
    saved: dict = {}

    def do():
        saved["path"], saved["previous"] = firewalld.write(plan.families)

    return Step("store rules in firewalld's direct.xml", do,
                lambda: firewalld.restore(saved["path"], saved["previous"]))


def _note_backend_visibility(choice: Choice, facts: HostFacts, say: Say) -> None:
    """Never leave rules where the user's `iptables` does not look without saying so."""
    shown = "nft" if facts.iptables_default == "nf_tables" else "legacy"
    if facts.iptables_default and choice.backend != shown:
        say(f"# [NOTE] rules go to the {choice.backend} tables, but `iptables` on this host is "
            f"{facts.iptables_default}: see them with iptables-{choice.backend}-save")
