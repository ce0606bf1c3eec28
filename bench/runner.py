"""One benchmark session: build the sandbox and stack, run the control path, the interleaved
case rounds and the scale sweep, tear everything down, return the results dict."""
from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass

from bench import configs, control, machine, procs, scale
from bench.cases import Case, engines_of
from bench.measure import Measurer, RoutingError
from bench.stack import Stack
from sandbox.netns import Sandbox

ACCEL_FLAG = "--ebpf-sk-msg-accel=true"  # off by default


@dataclass(frozen=True)
class Options:
    duration: int
    rounds: int
    cases: list[Case]
    scale: list[int]
    skip_scale: bool
    skip_control: bool
    out: str
    concurrency: list[int]
    control_runs: int
    scale_rounds: int
    command: str


def check_accel(case: Case, sockhash_entries: list[int]) -> None:
    """sk_msg acceleration must be what the case says: sockets in the sockhash when on, none when off."""
    if case.engine != "ebpf":
        return
    accel = ACCEL_FLAG in case.extra_flags
    seen = sockhash_entries[-1] if sockhash_entries else None
    if seen is None:
        raise RoutingError(f"{case.name}: the sockhash was not read")
    if accel and seen == 0:
        raise RoutingError(f"{case.name}: sk_msg acceleration is on, yet no socket was in the sockhash")
    if not accel and seen > 0:
        raise RoutingError(f"{case.name}: acceleration is off, yet {seen} sockets were in the sockhash")


def run_slot(stack: Stack, measurer: Measurer, case: Case, concurrency: list[int]) -> tuple[dict, dict]:
    """One case's turn in a round: install (if any), every measurement, uninstall."""
    sockhash: list[int] = []
    installing = stack.installed(case.engine, *case.extra_flags) if case.engine else contextlib.nullcontext({})
    with installing as done:
        figures = measurer.new_connections(case)
        for c in concurrency:
            figures.update(measurer.keepalive(case, c))
        figures.update(measurer.bulk(case))
        if case.engine == "ebpf":  # after the measured runs, so that bpftool's work is not in them
            measurer.during_traffic(case, lambda: sockhash.append(stack.bpf_map_entries("tp_sock_hash")))
    check_accel(case, sockhash)
    checks = {"sessions_new": figures.pop("sessions_new", None),
              "other_load_pct": round(figures.pop("other_load_pct", 0.0)),
              "wrk_errors": sum(figures.pop(k) for k in [k for k in figures if k.startswith("errors_")]),
              "orig_dst_misses": sum(figures.pop(k) for k in [k for k in figures if k.startswith("denied_")]),
              "iperf3_failures": "; ".join(figures.pop("bulk_failures", None) or []) or None}
    if done:
        figures["install_s"] = done["install"].wall_s
    if sockhash:
        checks["sockhash_entries"] = sockhash[-1]
    return figures, {k: v for k, v in checks.items() if v is not None}


def run(opts: Options, say=print) -> dict:
    started = time.monotonic()
    layout = configs.cpu_layout(sorted(os.sched_getaffinity(0)))
    names = [c.name for c in opts.cases]
    results: dict = {
        "meta": {"command": opts.command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "duration_s": opts.duration, "rounds": opts.rounds, "cases": names,
                 "concurrency": opts.concurrency, "scale_sizes": [] if opts.skip_scale else opts.scale,
                 "scale_rounds": opts.scale_rounds, "control_runs": opts.control_runs, "cpu_layout": layout,
                 "machine": machine.describe()},
        "cases": {name: {} for name in names}, "checks": {name: {} for name in names}, "scale": {}, "control": {},
    }
    engines = engines_of(opts.cases)
    with Sandbox("tpb") as sb:
        try:
            say(f"sandbox {sb.app} / {sb.srv}, cgroup {sb.cgroup}; CPU layout {layout}")
            stack = Stack(sb, layout).start()
            measurer = Measurer(stack, opts.duration)
            if not opts.skip_control and engines:
                results["control"] = control.run(stack, engines, opts.control_runs, say)
            for round_no in range(1, opts.rounds + 1):
                for case in opts.cases:
                    say(f"round {round_no}/{opts.rounds}: {case.name}")
                    figures, checks = run_slot(stack, measurer, case, opts.concurrency)
                    for key, value in figures.items():
                        results["cases"][case.name].setdefault(key, []).append(value)
                    for key, value in checks.items():
                        results["checks"][case.name].setdefault(key, []).append(value)
            if not opts.skip_scale and engines and opts.scale:
                results["scale"] = scale.run(stack, measurer, engines, opts.scale, opts.scale_rounds, say)
        finally:
            procs.stop_all()
    results["meta"]["elapsed_s"] = time.monotonic() - started
    return results
