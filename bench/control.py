"""The control path: wall time, CPU time and peak memory of `tpctl install` and `tpctl uninstall`.

Each run installs with kumactl's defaults (dualstack, inbound redirect on: what a user runs)
and uninstalls again; engines are interleaved run by run. Peak memory is the child's
ru_maxrss from wait4. "Cold" and "warm": BCC 0.26 keeps no compiled-object cache and tpctl adds
none, so every eBPF install compiles the programs again; the only state that can make the first
run of a session differ from the later ones is the OS page cache (libclang, headers, Python
modules). The report therefore shows the session's first run next to the median of the others,
and does not claim a compile cache.
"""
from __future__ import annotations

from bench.stack import Stack


def _figures(done) -> dict[str, float]:
    return {"wall_s": done.wall_s, "cpu_s": done.cpu_s, "maxrss_mib": done.maxrss_kib / 1024}


def run(stack: Stack, engines: list[str], runs: int, say=print) -> dict:
    """{engine: {"install": [figures per run, in order], "uninstall": [...]}}"""
    out = {engine: {"install": [], "uninstall": []} for engine in engines}
    for run_no in range(1, runs + 1):
        for engine in engines:
            say(f"control path run {run_no}/{runs}: {engine} install + uninstall")
            with stack.installed(engine, traffic=False) as done:
                pass
            out[engine]["install"].append(_figures(done["install"]))
            out[engine]["uninstall"].append(_figures(done["uninstall"]))
    return out
