"""The control path: wall time, CPU time and peak memory of `tpctl install`, a reconfiguring
and a no-op reinstall over it, and `tpctl uninstall`.

Each run, per engine (engines interleaved run by run), with kumactl's defaults (dualstack,
inbound redirect on: what a user runs):

  install          `tpctl install --exclude-outbound-ports 7001` on a clean sandbox
  reconfigure      `tpctl install --exclude-outbound-ports 7001,7002` over it (issue 13: the
                   exclusion list changes, nothing else)
  noop_reinstall   the same command again, identical flags
  uninstall

After each install the kernel's excluded-port count (rules, nftables set elements or map
entries) is checked against the flags (1, 2, 2), outside the timed commands, so a reconfigure that did not land cannot
produce a number. Peak memory is the child's ru_maxrss from wait4. "Cold" and "warm": the only
state that can make the first run of a session differ from the later ones is the OS page cache
(libclang, headers, Python modules) and whatever tpctl itself keeps; the report shows the
session's first run next to the median of the others.
"""
from __future__ import annotations

from bench import stats
from bench.scale import installed_exclusions
from bench.stack import Stack, StackError

FIRST = ("--exclude-outbound-ports", "7001")
CHANGED = ("--exclude-outbound-ports", "7001,7002")
# (key in results.json, flags, excluded outbound ports the kernel must then hold)
STEPS = (("install", FIRST, 1), ("reconfigure", CHANGED, 2), ("noop_reinstall", CHANGED, 2))
COMMANDS = ("install", "reconfigure", "noop_reinstall", "uninstall")  # table order
TARGET_ENGINE, TARGET_S = "ebpf", 0.3  # issue 13: eBPF reconfigure and no-op reinstall <= 0.3 s
TARGET_COMMANDS = ("reconfigure", "noop_reinstall")


def _figures(done) -> dict[str, float]:
    return {"wall_s": done.wall_s, "cpu_s": done.cpu_s, "maxrss_mib": done.maxrss_kib / 1024}


def run(stack: Stack, engines: list[str], runs: int, say=print) -> dict:
    """{engine: {command: [figures per run, in order]}} for every command of COMMANDS."""
    out: dict = {engine: {command: [] for command in COMMANDS} for engine in engines}
    for run_no in range(1, runs + 1):
        for engine in engines:
            say(f"control path run {run_no}/{runs}: {engine} install, reconfigure, no-op reinstall, uninstall")
            (first, flags, ports), *again = STEPS
            with stack.installed(engine, *flags, traffic=False) as done:
                _check(stack, engine, first, ports)
                for command, flags, ports in again:
                    done[command] = stack.install(engine, *flags, traffic=False)
                    _check(stack, engine, command, ports)
            for command in COMMANDS:
                out[engine][command].append(_figures(done[command]))
    return out


def _check(stack: Stack, engine: str, command: str, wanted: int) -> None:
    held = installed_exclusions(stack, engine)[0]
    if held != wanted:
        raise StackError(f"{engine} {command}: asked to exclude {wanted} outbound port(s), the kernel holds {held}")


def later_runs(runs: list[dict]) -> list[dict]:
    """The runs after the session's first (all of them when there is only one)."""
    return runs[1:] or runs


def target(control: dict) -> dict | None:
    """Whether this run met issue 13's target: {"met": bool, "figures": {command: median wall s
    of the later runs}, "missing": [commands without a figure]}; None without an eBPF engine."""
    ops = control.get(TARGET_ENGINE)
    if not ops:
        return None
    figures, missing = {}, []
    for command in TARGET_COMMANDS:
        summary = stats.summarize([r["wall_s"] for r in later_runs(ops.get(command, []))])
        if summary is None:
            missing.append(command)
        else:
            figures[command] = summary.median
    met = not missing and all(v <= TARGET_S for v in figures.values())
    return {"met": met, "figures": figures, "missing": missing}
