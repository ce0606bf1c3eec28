"""`python -m bench`: options, pre-flight checks, the run, and the files it leaves."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

from bench import cases as cases_module
from bench import parse, plot, procs, report, runner
from bench.measure import MeasureError, RoutingError
from bench.stack import StackError
from sandbox.netns import SandboxError

FAILURES = (RoutingError, MeasureError, StackError, SandboxError, procs.ChildTimeout, parse.ParseError,
            OSError, subprocess.SubprocessError)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TOOLS = ("wrk", "nginx", "haproxy", "iperf3", "taskset", "setpriv", "nsenter", "ip", "bpftool")
ENGINE_TOOLS = {"nftables": ("nft",)}  # what the harness itself runs for that engine (set counts)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of whole numbers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers >= 1")
    return values


def _positive(text: str) -> int:
    values = _int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not one whole number")
    return values[0]


def _cases(text: str) -> list[cases_module.Case]:
    try:
        return cases_module.select(text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("--duration", type=_positive, default=3, help="seconds per measurement (default 3)")
    p.add_argument("--rounds", type=_positive, default=5, help="rounds of interleaved cases (default 5)")
    p.add_argument("--cases", type=_cases, default=list(cases_module.CASES.values()),
                   help="comma list of " + ", ".join(cases_module.CASES) +
                        "; `iptables` means both iptables-nft and iptables-legacy (default: all)")
    p.add_argument("--concurrency", type=_int_list, default=[1, 16, 64],
                   help="kept-alive connections for the latency runs (default 1,16,64)")
    p.add_argument("--scale", type=_int_list, default=[10, 100, 1000, 10000],
                   help="excluded ports and CIDRs per size (default 10,100,1000,10000; at most 16384)")
    p.add_argument("--scale-rounds", type=_positive, default=2, help="rounds of the scale sweep (default 2)")
    p.add_argument("--skip-scale", action="store_true", help="no scale sweep")
    p.add_argument("--control-runs", type=_positive, default=5,
                   help="install/reconfigure/no-op reinstall/uninstall runs per engine for the control path "
                        "(default 5)")
    p.add_argument("--skip-control", action="store_true", help="no control-path measurement")
    p.add_argument("--alternate-order", action="store_true",
                   help="run the cases in reverse order in even rounds (default: the same order every round)")
    p.add_argument("--skip-bpf-stats", action="store_true",
                   help="eBPF cases without BPF statistics (per-program runs and run time; on by default)")
    p.add_argument("--out", default=DEFAULT_OUT, help="directory for RESULTS.md, bench.png, results.json "
                                                      "(default bench/results; the files are replaced)")
    return p


def preflight(args) -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root: the bench builds network namespaces and installs rules in them")
    engines = {case.engine for case in args.cases}
    tools = [*TOOLS, *(tool for engine, needed in ENGINE_TOOLS.items() if engine in engines for tool in needed)]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        problems.append(f"missing {', '.join(missing)}: run scripts/setup.sh (make bench does)")
    if args.scale and max(args.scale) > 16384 and not args.skip_scale:
        problems.append("--scale: at most 16384 (the /30 networks of 198.19.0.0/16)")
    return problems


def write_outputs(results: dict, out: str) -> dict[str, str]:
    """RESULTS.md, bench.png, results.json in `out`, each replacing the previous run's file."""
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in ("RESULTS.md", "bench.png", "results.json")}
    staged = {name: os.path.join(out, f".new-{name}") for name in paths}
    with open(staged["results.json"], "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    with open(staged["RESULTS.md"], "w", encoding="utf-8") as handle:
        handle.write(report.render(results))
    plot.render(results, staged["bench.png"])
    for name, path in paths.items():
        os.replace(staged[name], path)
    return paths


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the sandbox's cleanup, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    problems = preflight(args)
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    opts = runner.Options(duration=args.duration, rounds=args.rounds, cases=args.cases, scale=args.scale,
                          skip_scale=args.skip_scale, skip_control=args.skip_control, out=args.out,
                          concurrency=args.concurrency, control_runs=args.control_runs,
                          scale_rounds=args.scale_rounds, command=shlex.join(["python", "-m", "bench", *argv]),
                          bpf_stats=not args.skip_bpf_stats, alternate=args.alternate_order)
    try:
        results = runner.run(opts, say=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("bench: interrupted; the sandbox was removed", file=sys.stderr)
        return 130
    except FAILURES as err:
        print(f"bench: FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    paths = write_outputs(results, args.out)
    print(report.render(results))
    print(f"bench: wrote {', '.join(paths.values())}", file=sys.stderr)
    return 0
