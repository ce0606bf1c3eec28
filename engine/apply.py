"""install, the one pipeline: probe once -> choose -> plan once -> dry run, or under the state
lock one transaction: the ::6 passthrough, the chosen engine's steps (which replace its own
previous install in place), then every other engine's previous install removed (new before old:
no connection goes around the sidecar while engines switch), the state record. Engines are
reached only through engine.registry and engine.contract."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

from engine import boot_trust, journal, passthrough, persist, registry, ssh_guard, state
from engine.choice import choose
from engine.config import Config
from engine.contract import Check, Choice, RedirectEngine, Transaction, transaction
from engine.memo import NONE, Memo
from engine.probe import HostFacts, probe

Say = Callable[[str], None]
PASSTHROUGH_STEP = "add ::6/128 to lo (IPv6 inbound passthrough source)"


def decide(config: Config, memo: Memo = NONE) -> tuple[HostFacts, Choice]:
    """HostFacts once, each requested engine's checks once (only as far as the choice needs);
    `memo` keeps passed expensive checks between runs."""
    facts = probe(config.dns_servers_file)  # resolv.conf only when DNS redirection needs its servers
    judged: dict[str, Sequence[Check]] = {}

    def checks_of(engine: RedirectEngine) -> Sequence[Check]:
        if engine.name not in judged:
            judged[engine.name] = engine.checks(config, facts, memo)
        return judged[engine.name]

    choice = choose(config, facts, checks_of)
    engine = _engine(choice)
    more = engine.facts_for(config, facts, choice)  # what only the chosen engine pays for
    if more is not facts:
        facts, choice = more, choose(config, more, checks_of)
    return facts, choice


def install(config: Config, state_dir: str, say: Say, show: Say) -> None:
    """`say` is for progress and notes (stderr), `show` for the dry-run plan (stdout)."""
    # before anything is probed or written: a refused install changes nothing (not even checks.json)
    ssh_guard.check(config, say)
    boot_trust.check(config, state_dir)  # --persist: what root runs at every boot must be root's alone
    state.check_dir(state_dir)  # an unsafe state directory is bad input (exit 2), found before any probe
    memo = Memo(state_dir, writable=not config.dry_run, hold=True)  # written once the install applies
    facts, choice = decide(config, memo)
    for reason in choice.reasons:
        say(f"# {reason}")
    engine = _engine(choice)
    plan = engine.plan(config, facts, choice)
    for warning in plan.warnings:
        say(f"# [WARNING] {warning}")
    for note in engine.notes(config, facts, choice):
        say(note)
    paths = persist.Paths.here(state_dir)  # the unit names this state dir: its uninstall alone removes it
    if config.dry_run:
        if config.persist:
            say(f"# --persist: would write {paths.config} and {paths.unit}, enabled (at boot: "
                f"{persist.command_line(config)})")
        show(plan.render())
        return
    digest = plan.digest()
    with state.locked(state_dir):  # the state directory and its lock exist from here on, not before
        memo.save()
        previous = _previous_install(config, state_dir, say)
        mine = state.engine_part(previous, engine.name)
        if (previous and mine is not None and previous.get("digest") == digest and not engine.status(mine)[2]
                and (not config.persist or persist.written(config, paths))):
            say("tpctl: already installed with this configuration; nothing changed")
            return
        record: dict = {}  # the engine fills it in, each object before it exists
        whole = state.install_record(engine.name, digest, choice.to_json(), config.as_dict(),
                                     ipv6_passthrough_added=False, **{engine.name: record})
        journaled = [r for r in (previous, whole) if r]

        def journal_step(step: str) -> None:
            journal.write(state_dir, False, step, journaled)

        committed, tx = False, None
        try:
            with transaction(say if config.verbose else (lambda _m: None), journal=journal_step) as tx:
                if previous is not None:
                    say("# replacing the previous tpctl install")
                _passthrough(tx, 6 in choice.families, state.owns_passthrough(previous), whole)
                engine.apply(tx, config, plan, mine, record)
                # the other engines' objects go once the new install redirects (each engine leaves
                # the others' redirect target, 127.0.0.1:15001, alone, so the overlap is safe)
                for each in registry.engines():
                    if each is not engine:
                        each.remove_previous(tx, config, state.engine_part(previous, each.name))
                _passthrough_gone(tx, 6 in choice.families, state.owns_passthrough(previous))
                if config.persist:  # the same for every engine: the file and the unit install it at boot
                    tx.step(f"persist: write {paths.config} and {paths.unit}, enable it",
                            lambda: persist.write(config, paths), lambda before: persist.restore(paths, before))
                # the journal keeps naming the replaced install while its last objects (no traffic
                # goes through them any more) are still to go after the commit
                tx.step("record the install in the state file",
                        lambda: _commit(state_dir, whole, previous if tx and tx.commit_actions else None),
                        lambda _r: _uncommit(state_dir, previous))
            committed = True
        finally:
            if not committed and tx is not None and tx.rolled_back_cleanly:  # the host is as before: so is the journal
                _uncommit(state_dir, previous)
        if tx.commit_actions:
            for action in tx.commit_actions:
                try:
                    action()
                except Exception as err:  # committed: the new install redirects; say what stayed
                    say(f"tpctl: warning: the replaced install's last objects were not all removed ({err}); "
                        "tpctl uninstall removes them (the journal names them)")
                    break
            else:
                journal.write(state_dir, True, None, [whole])
    say(engine.installed_line(plan, record))


def _previous_install(config: Config, state_dir: str, say: Say) -> dict | None:
    """The install this one replaces. An uncommitted journal (an install that crashed or was
    killed) is undone first, with the install it was replacing; without a usable state file
    the committed journal's record stands in."""
    from engine import lifecycle

    previous, problem = state.read(state_dir)
    if problem:
        say(f"# {problem}: removing what the journal, tags and pins show instead")
    found, journal_problem = journal.read(state_dir)
    if journal_problem:
        say(f"# {journal_problem}: ignoring it (tags and pins still find tpctl's objects)")
    if found is not None and not found.get("committed"):
        say(f"# an earlier install stopped at step {found.get('step')!r} (journal): removing everything it "
            "and the install before it made")
        lifecycle.remove(lifecycle.records_of(previous, found),  # never the boot persistence: not this crash's
                         {"ebpf_bpffs_path": config.ebpf_bpffs_path, "keep_persistence": True}, False, say)
        state.forget(state_dir)
        journal.remove(state_dir)
        return None
    if previous is None and found is not None:
        return next(iter(journal.installs(found)[-1:]), None)
    return previous


def _commit(state_dir: str, whole: dict, replaced: dict | None = None) -> None:
    state.save(state_dir, whole)
    # the owner record, for when state.json is lost (and the replaced one, while it has objects left)
    journal.write(state_dir, True, None, [*([replaced] if replaced else []), whole])  # the install last, as always


def _uncommit(state_dir: str, previous: dict | None) -> None:
    """Back to the replaced install's record (or none): its objects are back in place."""
    if previous:
        state.save(state_dir, previous)
        journal.write(state_dir, True, None, [previous])
    else:
        state.forget(state_dir)
        journal.remove(state_dir)


def _engine(choice: Choice) -> RedirectEngine:
    engine = registry.get(choice.engine)
    assert engine is not None, choice.engine  # choose() names registry engines only
    return engine


def _passthrough(tx: Transaction, wanted: bool, inherited: bool, whole: dict) -> None:
    """::6/128 on lo when IPv6 is redirected, owned (whole["ipv6_passthrough_added"]) when this
    install adds it, recorded before it exists. A replaced install's address stays owned by the
    new one (so uninstall still removes it)."""
    if wanted:
        whole["ipv6_passthrough_added"] = inherited or not passthrough.present()
        added = tx.step(PASSTHROUGH_STEP, passthrough.add, lambda made: passthrough.remove() if made else None)
        whole["ipv6_passthrough_added"] = bool(added) or inherited


def _passthrough_gone(tx: Transaction, wanted: bool, inherited: bool) -> None:
    """A replaced install's ::6 that the new install does not need goes, after its rules."""
    if not wanted and inherited:
        tx.step("remove ::6/128 from lo (the previous install added it)", passthrough.remove,
                lambda _r: passthrough.add())
