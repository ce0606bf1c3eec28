"""One benchmark session: build the sandbox and stack, run the control path, the interleaved
case rounds and the scale sweep, tear everything down, return the results dict."""
from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass

from bench import bpfstats, configs, control, machine, procs, scale
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
    bpf_stats: bool = True
    alternate: bool = False  # even rounds run the cases in reverse order (ABBA: no case always follows another)


def round_order(cases: list[Case], round_no: int, alternate: bool) -> list[Case]:
    """The cases of round `round_no` (from 1): as given, or reversed in even rounds."""
    return list(reversed(cases)) if alternate and round_no % 2 == 0 else list(cases)


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


class _Counts:
    """The eBPF programs' counters around each measurement of one slot, or nothing."""

    def __init__(self, stack: Stack | None):
        self.pin_dir = stack.pin_dir() if stack is not None else None
        self.samples: dict = {}

    def around(self, key: str):
        if self.pin_dir is None:
            return contextlib.nullcontext({})
        return bpfstats.counted(self.pin_dir, self.samples, key)


def run_slot(stack: Stack, measurer: Measurer, case: Case, concurrency: list[int],
             bpf_stats: bool = False) -> tuple[dict, dict, dict]:
    """One case's turn in a round: install (if any), every measurement, uninstall. The third
    value: for an eBPF case with `bpf_stats`, each program's runs and run time during the
    new-connection run ("new") and each kept-alive run ("c16", ...), with the connections or
    requests served ("units"); or {"unavailable": why}."""
    sockhash: list[int] = []
    installing = stack.installed(case.engine, *case.extra_flags) if case.engine else contextlib.nullcontext({})
    counting = bpf_stats and case.engine == "ebpf"
    with installing as done:
        with bpfstats.enabled() if counting else contextlib.nullcontext("off") as problem:
            counts = _Counts(stack if counting and problem is None else None)
            with counts.around("new") as sample:
                figures = measurer.new_connections(case)
                sample["units"] = figures["requests_new"]
            for c in concurrency:
                with counts.around(f"c{c}") as sample:
                    figures.update(measurer.keepalive(case, c))
                    sample["units"] = figures[f"requests_c{c}"]
        figures.update(measurer.bulk(case))
        if case.engine == "ebpf":  # after the measured runs, so that bpftool's work is not in them
            measurer.during_traffic(case, lambda: sockhash.append(stack.bpf_map_entries("tp_sock_hash")))
    check_accel(case, sockhash)
    for key in [k for k in figures if k.startswith("requests_")]:
        figures.pop(key)
    checks = {"sessions_new": figures.pop("sessions_new", None),
              "other_load_pct": round(figures.pop("other_load_pct", 0.0)),
              "wrk_errors": sum(figures.pop(k) for k in [k for k in figures if k.startswith("errors_")]),
              "orig_dst_misses": sum(figures.pop(k) for k in [k for k in figures if k.startswith("denied_")]),
              "iperf3_failures": "; ".join(figures.pop("bulk_failures", None) or []) or None}
    if done:
        figures["install_s"] = done["install"].wall_s
    if sockhash:
        checks["sockhash_entries"] = sockhash[-1]
    programs = {} if not counting else counts.samples if problem is None else {"unavailable": problem}
    return figures, {k: v for k, v in checks.items() if v is not None}, programs


def _add_programs(into: dict, case: str, programs: dict) -> None:
    """{case: {"new": [per round], "c16": [...], "unavailable": [why, per round]}}"""
    for key, sample in programs.items():
        into.setdefault(case, {}).setdefault(key, []).append(sample)


def run(opts: Options, say=print) -> dict:
    started = time.monotonic()
    layout = configs.cpu_layout(sorted(os.sched_getaffinity(0)))
    names = [c.name for c in opts.cases]
    results: dict = {
        "meta": {"command": opts.command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "duration_s": opts.duration, "rounds": opts.rounds, "cases": names,
                 "concurrency": opts.concurrency, "scale_sizes": [] if opts.skip_scale else opts.scale,
                 "scale_rounds": opts.scale_rounds, "control_runs": opts.control_runs, "cpu_layout": layout,
                 "bpf_stats": opts.bpf_stats, "alternate_order": opts.alternate,
                 "machine": machine.describe()},
        "cases": {name: {} for name in names}, "checks": {name: {} for name in names}, "scale": {}, "control": {},
        "bpf_stats": {},
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
                for case in round_order(opts.cases, round_no, opts.alternate):
                    say(f"round {round_no}/{opts.rounds}: {case.name}")
                    figures, checks, programs = run_slot(stack, measurer, case, opts.concurrency, opts.bpf_stats)
                    _add_programs(results["bpf_stats"], case.name, programs)
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
