"""install, the one pipeline: probe once -> choose -> plan once -> dry run, or under the state
lock one transaction: remove the previous install, the ::6 passthrough, the engine's steps, the
state record. Engines are reached only through engine.registry and engine.contract."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

from engine import passthrough, registry, state
from engine.choice import choose
from engine.config import Config
from engine.contract import Check, Choice, RedirectEngine, Transaction, transaction
from engine.probe import HostFacts, probe

Say = Callable[[str], None]
PASSTHROUGH_STEP = "add ::6/128 to lo (IPv6 inbound passthrough source)"


def decide(config: Config) -> tuple[HostFacts, Choice]:
    """HostFacts once, each requested engine's checks once (only as far as the choice needs)."""
    facts = probe(config.resolv_conf)
    judged: dict[str, Sequence[Check]] = {}

    def checks_of(engine: RedirectEngine) -> Sequence[Check]:
        if engine.name not in judged:
            judged[engine.name] = engine.checks(config, facts)
        return judged[engine.name]

    choice = choose(config, facts, checks_of)
    engine = _engine(choice)
    more = engine.facts_for(config, facts, choice)  # what only the chosen engine pays for
    if more is not facts:
        facts, choice = more, choose(config, more, checks_of)
    return facts, choice


def install(config: Config, state_dir: str, say: Say, show: Say) -> None:
    """`say` is for progress and notes (stderr), `show` for the dry-run plan (stdout)."""
    facts, choice = decide(config)
    for reason in choice.reasons:
        say(f"# {reason}")
    engine = _engine(choice)
    plan = engine.plan(config, facts, choice)
    for warning in plan.warnings:
        say(f"# [WARNING] {warning}")
    for note in engine.notes(config, facts, choice):
        say(note)
    if config.dry_run:
        show(plan.render())
        return
    digest = plan.digest()
    with state.locked(state_dir):
        previous = state.load(state_dir)
        mine = state.engine_part(previous, engine.name)
        if previous and mine is not None and previous.get("digest") == digest and not engine.status(mine)[2]:
            say("tpctl: already installed with this configuration; nothing changed")
            return
        with transaction(say if config.verbose else (lambda _m: None)) as tx:
            if previous is not None:
                say("# replacing the previous tpctl install")
            for each in registry.engines():
                each.remove_previous(tx, config, state.engine_part(previous, each.name))
            owns_passthrough = _passthrough(tx, 6 in choice.families, state.owns_passthrough(previous))
            record = engine.apply(tx, config, plan, mine)
            whole = state.install_record(engine.name, digest, choice.to_json(), config.as_dict(),
                                         ipv6_passthrough_added=owns_passthrough, **{engine.name: record})
            tx.step("record the install in the state file", lambda: state.save(state_dir, whole),
                    lambda _r: state.save(state_dir, previous) if previous else state.forget(state_dir))
    say(engine.installed_line(plan, record))


def _engine(choice: Choice) -> RedirectEngine:
    engine = registry.get(choice.engine)
    assert engine is not None, choice.engine  # choose() names registry engines only
    return engine


def _passthrough(tx: Transaction, wanted: bool, inherited: bool) -> bool:
    """::6/128 on lo when IPv6 is redirected. A replaced install's address stays owned by the
    new one (so uninstall still removes it); one the new install does not need is removed."""
    if wanted:
        added = tx.step(PASSTHROUGH_STEP, passthrough.add, lambda made: passthrough.remove() if made else None)
        return bool(added) or inherited
    if inherited:
        tx.step("remove ::6/128 from lo (the previous install added it)", passthrough.remove,
                lambda _r: passthrough.add())
    return False
