"""One measurement of one case: run the client, read the figures, prove the route.

Every run is checked against HAProxy's session counters: a redirected or explicit case must
add at least one session per connection the client made to its own frontend and none to the
others; `direct` must add none at all. A case that bypassed the sidecar (or went through it
when it must not) raises RoutingError instead of producing a number.

CPU figures (see RESULTS.md): `cpu_*` is the user+system time of the programs in the path
(the client from wait4; HAProxy, nginx, iperf3 -s and the ksoftirqd threads from /proc/<pid>/stat)
during the run, divided by the requests (or GB) served. Without IRQ time accounting, softirq
work is charged to the task it interrupted, so the kernel's network work in those programs'
context is in it. `machine_us_per_conn` is the whole machine's busy time (/proc/stat) per
connection: exact on a quiet machine, inflated by anything else running (other VMs).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from bench import parse, procs
from bench.cases import Case
from bench.stack import Stack
from sandbox.netns import SRV_V4

WRK_CONNECTIONS_NEW = 16   # concurrent clients in the new-connection run
MAX_ERROR_SHARE = 0.01     # socket errors + non-2xx tolerated, as a share of requests
BULK_ATTEMPTS = 3          # iperf3 runs tried per bulk measurement
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class RoutingError(RuntimeError):
    pass


class MeasureError(RuntimeError):
    pass


def check_route(case: Case, kind: str, before: dict[str, int], after: dict[str, int], minimum: int) -> int:
    """Raise unless the run's sessions went exactly where `case` says; return the count."""
    deltas = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    expected = case.frontend(kind)
    if expected is None:
        used = {name: d for name, d in deltas.items() if d}
        if used:
            raise RoutingError(f"{case.name}: {used} sessions went through HAProxy; this case must not use it")
        return 0
    strays = {name: d for name, d in deltas.items() if d and name != expected}
    if strays:
        raise RoutingError(f"{case.name}: sessions in the wrong HAProxy frontends {strays} (expected {expected})")
    if deltas.get(expected, 0) < minimum:
        raise RoutingError(f"{case.name}: HAProxy frontend {expected} saw {deltas.get(expected, 0)} sessions for "
                           f"{minimum} client connections: traffic bypassed the sidecar")
    return deltas[expected]


def other_load_pct(counters: dict) -> float:
    """The machine's busy time not spent in the measured programs, as a share of all CPUs over
    the run: how much else (other VMs, the harness) ran at the same time."""
    capacity = counters["wall_s"] * (os.cpu_count() or 1)
    return max(0.0, counters["busy_s"] - counters["proc_s"]) / capacity * 100 if capacity else 0.0


class Measurer:
    def __init__(self, stack: Stack, duration: int, server_v4: str = SRV_V4):
        self.stack = stack
        self.duration = duration
        self.server_v4 = server_v4
        self.timeout = duration + 60

    def _observed(self, case: Case, kind: str, argv: list[str], during: Callable[[], None] | None = None,
                  duration: float | None = None, check: bool = True) -> tuple[procs.Finished, dict]:
        """Run a client with the counters read around it; `during` runs halfway through."""
        self.stack.alive()
        before = self.stack.frontends()
        ticks, proc_ticks = procs.system_ticks(), self.stack.process_ticks()
        running = procs.start(self.stack.client(argv))
        if during is not None:
            time.sleep((duration or self.duration) / 2)
            during()
        done = running.finish(self.timeout)
        after_ticks, after_proc = procs.system_ticks(), self.stack.process_ticks()
        time.sleep(0.05)  # HAProxy counts a session when it ends; the last ones close just now
        after = self.stack.frontends()
        if check and done.returncode != 0:
            raise MeasureError(f"{case.name}: {argv[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        proc_s = done.cpu_s + sum(after_proc[k] - proc_ticks[k] for k in after_proc if k in proc_ticks) / procs.CLK_TCK
        return done, {"sessions_before": {k: v["stot"] for k, v in before.items()},
                      "sessions_after": {k: v["stot"] for k, v in after.items()},
                      "denied": sum(after[k]["dcon"] - before[k]["dcon"] for k in after),
                      "busy_s": (after_ticks.busy - ticks.busy) / procs.CLK_TCK, "proc_s": proc_s,
                      "wall_s": done.wall_s}

    def _wrk(self, case: Case, connections: int, close: bool) -> tuple[parse.WrkResult, dict]:
        host, port = case.target("http", self.server_v4)
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{self.duration}s", "--timeout", "5s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{host}:{port}/")
        done, counters = self._observed(case, "http", argv)
        result = parse.wrk(done.stdout)
        if result.requests == 0:
            raise MeasureError(f"{case.name}: wrk completed no request: {done.stdout.strip()[-500:]}")
        if result.error_count > MAX_ERROR_SHARE * result.requests:
            raise MeasureError(f"{case.name}: wrk errors {result.errors}, non-2xx {result.non_2xx} for "
                               f"{result.requests} requests")
        minimum = result.requests if close else connections
        counters["sessions"] = check_route(case, "http", counters.pop("sessions_before"),
                                           counters.pop("sessions_after"), minimum)
        counters["errors"] = result.error_count
        return result, counters

    def during_traffic(self, case: Case, action: Callable[[], None], seconds: int = 2) -> None:
        """Run `action` while two kept-alive connections carry requests (not a measurement:
        whatever `action` costs stays out of the measured runs)."""
        host, port = case.target("http", self.server_v4)
        argv = ["wrk", "-t1", "-c2", f"-d{seconds}s", "--timeout", "5s", f"http://{host}:{port}/"]
        done, counters = self._observed(case, "http", argv, during=action, duration=seconds)
        parse.wrk(done.stdout)
        check_route(case, "http", counters["sessions_before"], counters["sessions_after"], 2)

    def new_connections(self, case: Case) -> dict[str, float]:
        """One request per connection (Connection: close): connections per second."""
        result, c = self._wrk(case, WRK_CONNECTIONS_NEW, close=True)
        return {"conn_rate": result.rate,
                "cpu_us_per_conn": c["proc_s"] * 1e6 / result.requests,
                "machine_us_per_conn": c["busy_s"] * 1e6 / result.requests,
                "errors_new": c["errors"], "sessions_new": c["sessions"], "denied_new": c["denied"],
                "requests_new": result.requests, "other_load_pct": other_load_pct(c)}

    def keepalive(self, case: Case, concurrency: int) -> dict[str, float]:
        """Kept-alive connections: latency percentiles, request rate, CPU per request."""
        result, c = self._wrk(case, concurrency, close=False)
        missing = {50.0, 99.0} - set(result.percentiles_us)
        if missing:
            raise MeasureError(f"{case.name}: wrk printed no percentile {sorted(missing)}")
        return {f"lat_p50_c{concurrency}": result.percentiles_us[50.0],
                f"lat_p99_c{concurrency}": result.percentiles_us[99.0],
                f"rps_c{concurrency}": result.rate,
                f"cpu_us_per_req_c{concurrency}": c["proc_s"] * 1e6 / result.requests,
                f"errors_c{concurrency}": c["errors"], f"denied_c{concurrency}": c["denied"],
                f"requests_c{concurrency}": result.requests}

    def bulk(self, case: Case) -> dict:
        """iperf3, one stream, client -> server: Gbit/s received. A failed iperf3 run is retried
        (up to BULK_ATTEMPTS) and every failure is kept: with sk_msg acceleration a sender can get
        ENOMEM from write(), which is a finding, not noise to hide."""
        host, port = case.target("iperf", self.server_v4)
        argv = ["iperf3", "-c", host, "-p", str(port), "-t", str(self.duration), "-J", "--connect-timeout", "5000"]
        failures = []
        for _ in range(BULK_ATTEMPTS):
            sampler = procs.PeakSampler(procs.tcp_memory_pages).start()
            try:
                done, c = self._observed(case, "iperf", argv, check=False)
            finally:
                peak_pages = sampler.stop()
            try:
                result = parse.iperf3(done.stdout)
            except parse.ParseError as err:
                failures.append(str(err))
                continue
            # iperf3 makes a control and a data connection
            check_route(case, "iperf", c["sessions_before"], c["sessions_after"], 2)
            return {"bulk_gbps": result.bits_per_second / 1e9, "denied_bulk": c["denied"],
                    "bulk_tcp_mem_mib": peak_pages * PAGE_SIZE / 2**20,
                    "cpu_s_per_gbyte": c["proc_s"] / (result.bytes / 1e9) if result.bytes else None,
                    "bulk_failed_runs": len(failures), "bulk_failures": failures}
        return {"bulk_gbps": None, "cpu_s_per_gbyte": None, "bulk_tcp_mem_mib": None, "bulk_failed_runs": len(failures),
                "bulk_failures": failures}
