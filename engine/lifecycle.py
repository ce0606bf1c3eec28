"""uninstall and status over every registered engine: from State when there is one, and always
by what each engine's tags and pins show."""
from __future__ import annotations

from typing import Callable

from engine import passthrough, registry, state

Say = Callable[[str], None]


def uninstall(state_dir: str, options: dict, dry_run: bool, say: Say) -> list[str]:
    """Remove what install made. `options`: uninstall's flags (ebpf_bpffs_path)."""
    if dry_run:  # read only: not even the state directory is created
        return _uninstall(state.load(state_dir), options, True, say)
    with state.locked(state_dir):
        removed = _uninstall(state.load(state_dir), options, False, say)
        state.remove(state_dir)
    return removed


def _uninstall(record: dict | None, options: dict, dry_run: bool, say: Say) -> list[str]:
    if record is None:
        say("# no state file: finding tpctl objects by their tags (TPCTL_ chains, tpctl/ comments, "
            "pins under <bpffs>/tpctl)")
    removed: list[str] = []
    for engine in registry.engines():
        removed += engine.uninstall(state.engine_part(record, engine.name), options, dry_run, say)
    if state.owns_passthrough(record):
        removed.append("lo: remove ::6/128")
        if not dry_run:
            passthrough.remove()
    return removed


def status(state_dir: str, options: dict) -> tuple[dict, list[str]]:
    """What is installed and whether it drifted, as (the --json report, lines for people);
    `drift` non-empty means exit code 5."""
    record = state.load(state_dir)
    report: dict = {"installed": record is not None, "state_dir": state_dir, "drift": []}
    if record is None:
        found = [x for engine in registry.engines() for x in engine.leftovers(options)]
        report["drift"] = [f"not installed (no state), but tpctl objects exist: {x}" for x in found]
        return report, []
    report.update({k: record.get(k) for k in ("engine", "installed_at", "choice", "config")})
    report["ipv6_passthrough_added"] = state.owns_passthrough(record)
    engine = registry.get(str(record.get("engine")))
    mine = state.engine_part(record, engine.name) if engine else None
    if engine is None or mine is None:
        report["drift"] = [f"the state file in {state_dir} records engine {record.get('engine')!r} without its "
                           f"part (engines here: {', '.join(registry.names())}); fix: tpctl uninstall"]
        return report, []
    report[engine.name], lines, report["drift"] = engine.status(mine)
    return report, lines
