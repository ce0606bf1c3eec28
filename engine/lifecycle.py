"""uninstall and status over every registered engine: from State and the journal when there are
any, and always by what each engine's tags and pins show."""
from __future__ import annotations

import os
from typing import Callable

from engine import journal, passthrough, persist, registry, state
from engine.contract import RedirectEngine
from engine.transaction import signal_point

Say = Callable[[str], None]
LEFTOVER = "not installed (no state), but tpctl objects exist: "  # the drift line of each leftover


def records_of(record: dict | None, found_journal: dict | None) -> list[dict]:
    """Every install record known: the state file's and the journal's (an interrupted install,
    the one it replaced, or the owner record of a committed one), each once."""
    out: list[dict] = []
    for candidate in [*([record] if record else []), *journal.installs(found_journal)]:
        if candidate and candidate not in out:
            out.append(candidate)
    return out


def remove(records: list[dict], options: dict, dry_run: bool, say: Say) -> list[str]:
    """Remove what these installs made, then whatever else the tags and pins show.
    options["removal"]: a fresh dict for this removal, which an engine may use to remember what
    it removed for one record so that another record of the same install does not remove it again."""
    options = {**options, "removal": {}}
    removed: list[str] = []
    for engine in registry.engines():
        parts: list[dict | None] = [p for p in (state.engine_part(r, engine.name) for r in records) if p is not None]
        for part in parts or [None]:  # each engine's uninstall also removes what its tags show
            removed += [line for line in _uninstall_part(engine, part, options, dry_run, say) if line not in removed]
        signal_point(f"uninstall:{engine.name}")  # for the tests: a kill -9 here, then uninstall again
    if any(state.owns_passthrough(r) for r in records) and passthrough.present():
        removed.append("lo: remove ::6/128")
        if not dry_run:
            passthrough.remove()
    # only an uninstall of the state dir that persisted it removes it; the unit's own ExecStop keeps it
    if options.get("state_dir") and not options.get("keep_persistence"):
        removed += persist.remove(persist.Paths.here(options["state_dir"]), dry_run)
    return removed


# what an engine raises reading a record of the wrong shape that its validate_record let through
RECORD_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _uninstall_part(engine: RedirectEngine, part: dict | None, options: dict, dry_run: bool, say: Say) -> list[str]:
    """The engine's uninstall of one recorded part; a part it cannot read is ignored, said, and
    its objects found by their tags and pins instead."""
    try:
        return engine.uninstall(part, options, dry_run, say)
    except RECORD_ERRORS as err:
        if part is None:
            raise
        say(f"# the recorded {engine.title} install cannot be used ({type(err).__name__}: {err}): ignoring it, "
            "removing what the tags and pins show")
        return engine.uninstall(None, options, dry_run, say)


def uninstall(state_dir: str, options: dict, dry_run: bool, say: Say) -> list[str]:
    """Remove what install made. `options`: uninstall's flags (ebpf_bpffs_path, keep_persistence)."""
    options = {**options, "state_dir": state_dir}  # whose boot persistence may go (engine/persist.py)
    if dry_run:  # read only: not even the state directory is created
        return remove(_known(state_dir, say), options, True, say)
    with state.locked(state_dir):
        removed = remove(_known(state_dir, say), options, False, say)
        state.remove(state_dir)
    return removed


def _known(state_dir: str, say: Say) -> list[dict]:
    record, problem = state.read(state_dir)
    found, journal_problem = journal.read(state_dir)
    for line in (problem, journal_problem):
        if line:
            say(f"# {line}: removing what the tags and pins show")
    if record is None:
        say("# no state file: finding tpctl objects by the journal and their tags (TPCTL_ chains, tpctl/ "
            "comments, pins under <bpffs>/tpctl)" if found else
            "# no state file: finding tpctl objects by their tags (TPCTL_ chains, tpctl/ comments, "
            "pins under <bpffs>/tpctl)")
    if found is not None and not found.get("committed"):
        say(f"# an install stopped at step {found.get('step')!r}: removing what its journal names too")
    return records_of(record, found)


def status(state_dir: str, options: dict) -> tuple[dict, list[str]]:
    """What is installed and whether it drifted, as (the --json report, lines for people);
    `drift` non-empty means exit code 5."""
    record, problem = state.read(state_dir)
    seen = None
    if record is not None:  # a record its engine cannot read is reported as damaged, like any other
        seen, problem = _engine_status(state_dir, record)
        record = record if seen else None
    found, journal_problem = journal.read(state_dir)
    report: dict = {"installed": seen is not None, "state_dir": state_dir, "drift": [],
                    "persistent": persist.status(persist.Paths.here(state_dir), installed=seen is not None)}
    if problem or journal_problem:
        report["drift"] += [f"{p} (fix: tpctl uninstall removes what the journal, tags and pins show)"
                            for p in (problem, journal_problem) if p]
    if found is not None and not found.get("committed"):
        report["drift"].append(f"an install stopped at step {found.get('step')!r} ({os.path.join(state_dir, journal.NAME)}): "
                               "tpctl uninstall removes what it made, tpctl install removes it and installs")
    if record is None or seen is None:
        found_objects = [x for engine in registry.engines() for x in engine.leftovers(options)]
        owned = [r for r in journal.installs(found) if state.owns_passthrough(r)]
        if owned and passthrough.present():
            found_objects.append("::6/128 on lo (the journal says tpctl added it)")
        report["drift"] += [f"{LEFTOVER}{x}" for x in found_objects]
        return report, []
    report.update({k: record.get(k) for k in ("engine", "installed_at", "choice", "config")})
    report["ipv6_passthrough_added"] = state.owns_passthrough(record)
    name, summary, lines, drift = seen
    report[name] = summary
    report["drift"] += drift
    return report, lines


def _engine_status(state_dir: str, record: dict) -> tuple[tuple | None, str | None]:
    """(engine name, summary, lines, drift) from the recorded engine, or why its part cannot be used."""
    path = os.path.join(state_dir, state.NAME)
    engine = registry.get(str(record.get("engine")))
    mine = state.engine_part(record, engine.name) if engine else None
    if engine is None or mine is None:  # state.read refuses both; a record read elsewhere may not
        return None, (f"the state file {path} records engine {record.get('engine')!r}, which this tpctl does not "
                      f"have ({', '.join(registry.names())})")
    try:
        return (engine.name, *engine.status(mine)), None
    except RECORD_ERRORS as err:
        return None, f"the state file {path} holds a {engine.name} record this tpctl cannot use ({type(err).__name__}: {err})"
