"""Measurer against a stand-in stack whose "client" prints canned tool output (no root, no
namespaces): retries and failure records of the bulk run, the route check on wrk runs."""
from __future__ import annotations

import json
import os
import shlex
import time

import pytest

from bench import measure
from bench.cases import CASES
from bench.procs import PeakSampler

DATA = os.path.join(os.path.dirname(__file__), "data")


def canned(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as handle:
        return handle.read()


class FakeStack:
    """Each client run prints the next canned output; the sidecar's outbound frontend counts
    `per_run` sessions per run."""

    def __init__(self, outputs: list[tuple[str, int]], per_run: int = 2):
        self.outputs = list(outputs)
        self.sessions = 0
        self.per_run = per_run
        self.reads = 0

    def alive(self):
        pass

    def frontends(self):
        self.reads += 1
        if self.reads % 2 == 0:  # read after a run: that run's sessions are in
            self.sessions += self.per_run
        return {"outbound": {"stot": self.sessions, "dcon": 0}, "explicit_http": {"stot": 0, "dcon": 0},
                "explicit_iperf": {"stot": 0, "dcon": 0}}

    def process_ticks(self):
        return {}

    def client(self, argv):
        text, code = self.outputs.pop(0)
        return ["sh", "-c", f"printf '%s' {shlex.quote(text)}; exit {code}"]


ENOMEM = json.dumps({"error": "unable to write to stream socket: Cannot allocate memory"})


def test_bulk_retries_and_keeps_each_failure():
    stack = FakeStack([(ENOMEM, 1), (ENOMEM, 1), (canned("iperf3.json"), 0)])
    figures = measure.Measurer(stack, duration=1).bulk(CASES["ebpf"])
    assert figures["bulk_gbps"] == pytest.approx(9.152655787)
    assert figures["bulk_failed_runs"] == 2
    assert figures["bulk_failures"] == ["iperf3: unable to write to stream socket: Cannot allocate memory"] * 2


def test_bulk_that_never_succeeds_gives_no_number_but_the_failures():
    stack = FakeStack([(ENOMEM, 1)] * measure.BULK_ATTEMPTS)
    figures = measure.Measurer(stack, duration=1).bulk(CASES["ebpf"])
    assert figures["bulk_gbps"] is None and figures["bulk_failed_runs"] == measure.BULK_ATTEMPTS


def test_bulk_that_bypassed_the_sidecar_fails_loudly():
    stack = FakeStack([(canned("iperf3.json"), 0)], per_run=0)
    with pytest.raises(measure.RoutingError, match="bypassed"):
        measure.Measurer(stack, duration=1).bulk(CASES["iptables-nft"])


def test_new_connections_need_one_sidecar_session_per_request():
    # the canned wrk report says 5018 requests; 5018 sessions pass, 5017 do not
    ok = FakeStack([(canned("wrk_close.txt"), 0)], per_run=5018)
    figures = measure.Measurer(ok, duration=1).new_connections(CASES["ebpf"])
    assert figures["conn_rate"] == pytest.approx(4839.05) and figures["sessions_new"] == 5018
    short = FakeStack([(canned("wrk_close.txt"), 0)], per_run=5017)
    with pytest.raises(measure.RoutingError):
        measure.Measurer(short, duration=1).new_connections(CASES["ebpf"])


def test_a_client_that_fails_is_an_error():
    stack = FakeStack([("", 1)])
    with pytest.raises(measure.MeasureError, match="exited 1"):
        measure.Measurer(stack, duration=1).keepalive(CASES["explicit"], 16)


def test_peak_sampler_keeps_the_highest_reading():
    readings = iter([3, 9, 4] + [1] * 100000)
    sampler = PeakSampler(lambda: next(readings), interval=0.001).start()
    deadline = time.monotonic() + 5
    while sampler.peak < 9 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sampler.stop() == 9


def test_bulk_reports_the_host_tcp_memory_peak():
    stack = FakeStack([(canned("iperf3.json"), 0)])
    figures = measure.Measurer(stack, duration=1).bulk(CASES["ebpf"])
    assert figures["bulk_tcp_mem_mib"] >= 0
