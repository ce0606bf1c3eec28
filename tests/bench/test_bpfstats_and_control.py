"""The eBPF programs' counters (parsing, per-unit arithmetic, the stats switch's lifetime), the
control path's reinstall steps and its target, and how run_slot windows the counters. Pure or
against stand-ins: no root, no kernel."""
from __future__ import annotations

import contextlib
import os
import struct

import pytest

from bench import bpfstats, control, report, runner
from bench.cases import CASES
from bench.stack import StackError


def info(prog_id=7, name=b"tp_sockops", run_time_ns=1350000, run_cnt=4727) -> bytes:
    buf = bytearray(bpfstats.INFO_SIZE)
    struct.pack_into("=I", buf, 4, prog_id)
    buf[64:64 + len(name)] = name
    struct.pack_into("=QQ", buf, 192, run_time_ns, run_cnt)
    return bytes(buf)


def test_prog_info_counters_at_their_uapi_offsets():
    counters = bpfstats.parse_prog_info(info(), bpfstats.INFO_SIZE)
    assert counters == bpfstats.ProgCounters(7, "tp_sockops", 4727, 1350000)
    # a 15-character name fills the field but for its NUL
    assert bpfstats.parse_prog_info(info(name=b"tp_sock4_getpee"), 232).name == "tp_sock4_getpee"


def test_prog_info_from_a_kernel_without_counters_is_refused():
    with pytest.raises(ValueError, match="run_cnt"):
        bpfstats.parse_prog_info(info(), 192)  # a pre-5.1 kernel fills less than the counters


def test_delta_keeps_only_programs_present_in_both_readings():
    before = {"tp_sockops": (10, 1000), "tp_gone": (1, 1)}
    after = {"tp_sockops": (31, 4000), "tp_new": (5, 5)}
    assert bpfstats.delta(before, after) == {"tp_sockops": {"runs": 21, "ns": 3000}}


def test_per_unit_divides_by_the_runs_units_and_sums_all_programs():
    samples = [{"units": 100, "progs": {"a": {"runs": 200, "ns": 50000}, "b": {"runs": 100, "ns": 10000}}},
               {"units": 0, "progs": {"a": {"runs": 5, "ns": 5}}},          # no unit served: left out
               {"units": 50, "progs": {"a": {"runs": 100, "ns": 30000}, "b": {"runs": 0, "ns": 0}}}]
    per = bpfstats.per_unit(samples)
    assert per["a"] == {"runs": [2.0, 2.0], "ns": [500.0, 600.0]}
    assert per["b"] == {"runs": [1.0, 0.0], "ns": [100.0, 0.0]}
    assert per[bpfstats.ALL] == {"runs": [3.0, 2.0], "ns": [600.0, 600.0]}
    assert bpfstats.ns_per_run(samples) == {"a": pytest.approx(80005 / 305), "b": 100.0}


def test_the_hand_measurement_of_issue_13_gives_its_11_ns_per_request():
    progs = {"connect4": {"runs": 454, "ns": 650_000}, "sockops": {"runs": 4727, "ns": 1_350_000},
             "getsockopt": {"runs": 227, "ns": 190_000}, "getpeername": {"runs": 227, "ns": 260_000}}
    per = bpfstats.per_unit([{"units": 217_000, "progs": progs}])
    assert per[bpfstats.ALL]["ns"][0] == pytest.approx(11.3, abs=0.1)


def test_stats_fd_is_closed_when_the_block_fails(monkeypatch):
    read_end, write_end = os.pipe()
    os.close(read_end)
    monkeypatch.setattr(bpfstats, "enable_stats", lambda: write_end)
    with pytest.raises(RuntimeError), bpfstats.enabled() as problem:
        assert problem is None
        os.fstat(write_end)  # open inside
        raise RuntimeError("a case crashed")
    with pytest.raises(OSError):
        os.fstat(write_end)  # closed: the kernel has turned the statistics off


def test_stats_that_cannot_be_enabled_say_why_and_the_block_still_runs(monkeypatch):
    def refuse():
        raise OSError(22, "BPF_ENABLE_STATS: Invalid argument")
    monkeypatch.setattr(bpfstats, "enable_stats", refuse)
    ran = []
    with bpfstats.enabled() as problem:
        ran.append(problem)
    assert ran == ["[Errno 22] BPF_ENABLE_STATS: Invalid argument"]


def test_counted_records_the_delta_and_the_units(monkeypatch):
    readings = iter([{"p": (1, 10)}, {"p": (4, 70)}])
    monkeypatch.setattr(bpfstats, "read", lambda pin_dir: next(readings))
    into: dict = {}
    with bpfstats.counted("/nowhere", into, "c16") as sample:
        sample["units"] = 3
    assert into == {"c16": {"units": 3, "progs": {"p": {"runs": 3, "ns": 60}}}}


# -- control path ------------------------------------------------------------------------------

class Done:
    def __init__(self, wall_s):
        self.wall_s, self.cpu_s, self.maxrss_kib = wall_s, wall_s / 2, 100 * 1024


class FakeControlStack:
    """Records the tpctl commands; each install's wall time is its position in the session."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.ports = 0

    def install(self, engine, *flags, traffic=True):
        assert traffic is False  # kumactl's defaults, as the control path always used
        self.calls.append((engine, *flags))
        self.ports = len(flags[-1].split(","))
        return Done(len(self.calls) / 10)

    @contextlib.contextmanager
    def installed(self, engine, *flags, traffic=True):
        record = {"install": self.install(engine, *flags, traffic=traffic)}
        yield record
        self.calls.append((engine, "uninstall"))
        record["uninstall"] = Done(0.05)


def test_control_runs_install_reconfigure_noop_uninstall_interleaved(monkeypatch):
    stack = FakeControlStack()
    monkeypatch.setattr(control, "installed_exclusions", lambda s, engine: (s.ports, 0))
    out = control.run(stack, ["iptables-nft", "ebpf"], runs=2, say=lambda _: None)
    one = [("--exclude-outbound-ports", "7001"), ("--exclude-outbound-ports", "7001,7002"),
           ("--exclude-outbound-ports", "7001,7002"), ("uninstall",)]
    assert stack.calls == [(engine, *step) for _ in range(2) for engine in ("iptables-nft", "ebpf") for step in one]
    assert set(out["ebpf"]) == set(control.COMMANDS)
    assert [r["wall_s"] for r in out["ebpf"]["reconfigure"]] == [0.6, 1.4]
    assert all(len(runs) == 2 for ops in out.values() for runs in ops.values())


def test_a_reconfigure_that_did_not_land_fails_the_run(monkeypatch):
    monkeypatch.setattr(control, "installed_exclusions", lambda s, engine: (1, 0))  # still the old list
    with pytest.raises(StackError, match="reconfigure: asked to exclude 2 outbound port"):
        control.run(FakeControlStack(), ["ebpf"], runs=1, say=lambda _: None)


def runs(*walls):
    return [{"wall_s": w, "cpu_s": w, "maxrss_mib": 100.0} for w in walls]


@pytest.mark.parametrize("reconfigure, noop, met", [
    (runs(3.0, 0.2, 0.3, 0.25), runs(3.0, 0.1, 0.1), True),   # the first run is not the figure
    (runs(0.1, 0.31, 0.4), runs(0.1, 0.1), False),
    (runs(0.2), runs(0.35), False),                            # one run: it is the figure
])
def test_target_is_computed_from_the_later_runs(reconfigure, noop, met):
    verdict = control.target({"ebpf": {"reconfigure": reconfigure, "noop_reinstall": noop}})
    assert verdict["met"] is met and not verdict["missing"]
    text = report.target_sentence({"ebpf": {"reconfigure": reconfigure, "noop_reinstall": noop}})
    assert "≤ 0.3 s" in text and (f"**{'met' if met else 'not met'}**") in text


def test_target_without_ebpf_or_without_reinstall_figures():
    assert control.target({"iptables-nft": {"install": runs(0.2)}}) is None
    assert report.target_sentence({"iptables-nft": {"install": runs(0.2)}}) == ""
    verdict = control.target({"ebpf": {"install": runs(2.0), "uninstall": runs(0.3)}})  # an older results.json
    assert verdict == {"met": False, "figures": {}, "missing": ["reconfigure", "noop_reinstall"]}
    assert "Not measured in this run: reconfigure, no-op reinstall" in report.target_sentence(
        {"ebpf": {"install": runs(2.0)}})


def test_control_table_rows_in_command_order():
    text = report.control_table({"ebpf": {"uninstall": runs(0.3), "noop_reinstall": runs(2.0, 0.2),
                                          "install": runs(4.0, 3.0), "reconfigure": runs(2.5, 0.25)}})
    rows = [line.split(" | ")[1] for line in text.splitlines()[2:]]
    assert rows == ["install", "reconfigure (7001 → 7001,7002)", "no-op reinstall (same flags)", "uninstall"]
    assert "| ebpf | reconfigure (7001 → 7001,7002) | 2.50 | 0.25 |" in text


@pytest.mark.parametrize("value, text", [(None, "–"), (0, "0"), (0.000147, "0.000147"), (1.354, "1.35"),
                                         (11.26, "11.3"), (454.2, "454"), (12345.6, "12,346")])
def test_three_significant_digits(value, text):
    assert report.sig(value) == text


def test_bpf_section_per_program_and_in_all():
    sample = {"units": 1000, "progs": {"tp_sockops": {"runs": 21000, "ns": 3_300_000},
                                       "tp_sock4_connect": {"runs": 2000, "ns": 1_000_000}}}
    keep = {"units": 200_000, "progs": {"tp_sockops": {"runs": 340, "ns": 60_000},
                                        "tp_sock4_connect": {"runs": 32, "ns": 16_000}}}
    text = "\n".join(report.bpf_section({"ebpf-noaccel": {"new": [sample], "c16": [keep]},
                                         "ebpf": {"unavailable": ["[Errno 22] BPF_ENABLE_STATS"]}}, [1, 16]))
    assert "| program | runs / new conn. | BPF ns / new conn. | runs / request, 16 conn. |" in text
    assert "| tp_sockops | 21.0 | 3,300 | 0.00170 | 0.300 |" in text
    assert "| **all programs** | 23.0 | 4,300 | 0.00186 | 0.380 |" in text
    assert "`ebpf`: BPF statistics unavailable ([Errno 22] BPF_ENABLE_STATS)" in text
    assert report.bpf_section({}, [16]) == []


# -- run_slot's windows ------------------------------------------------------------------------

class SlotStack:
    def __init__(self):
        self.events: list[str] = []

    @contextlib.contextmanager
    def installed(self, engine, *flags, traffic=True):
        self.events.append("install")
        record = {"install": Done(1.0)}
        yield record
        self.events.append("uninstall")
        record["uninstall"] = Done(0.1)

    def pin_dir(self):
        return "/pins"

    def bpf_map_entries(self, name):
        return 0


class SlotMeasurer:
    def __init__(self, stack):
        self.stack = stack

    def new_connections(self, case):
        self.stack.events.append("new")
        return {"conn_rate": 5.0, "requests_new": 500, "sessions_new": 500, "other_load_pct": 1.0,
                "errors_new": 0, "denied_new": 0}

    def keepalive(self, case, c):
        self.stack.events.append(f"c{c}")
        return {f"rps_c{c}": 9.0, f"requests_c{c}": 9000, f"errors_c{c}": 0, f"denied_c{c}": 0}

    def bulk(self, case):
        self.stack.events.append("bulk")
        return {"bulk_gbps": 1.0}

    def during_traffic(self, case, action):
        action()


def fake_stats(monkeypatch, stack):
    count = iter(range(100))

    def read(pin_dir):
        stack.events.append("read")
        n = next(count)
        return {"tp_sockops": (n * 10, n * 1000)}

    @contextlib.contextmanager
    def enabled():
        stack.events.append("stats on")
        yield None
        stack.events.append("stats off")

    monkeypatch.setattr(bpfstats, "read", read)
    monkeypatch.setattr(bpfstats, "enabled", enabled)


def test_run_slot_counts_around_each_measurement_with_stats_on_only_then(monkeypatch):
    stack = SlotStack()
    fake_stats(monkeypatch, stack)
    figures, checks, programs = runner.run_slot(stack, SlotMeasurer(stack), CASES["ebpf-noaccel"], [16],
                                                bpf_stats=True)
    assert stack.events == ["install", "stats on", "read", "new", "read", "read", "c16", "read", "stats off",
                            "bulk", "uninstall"]
    assert programs == {"new": {"units": 500, "progs": {"tp_sockops": {"runs": 10, "ns": 1000}}},
                        "c16": {"units": 9000, "progs": {"tp_sockops": {"runs": 10, "ns": 1000}}}}
    assert not any(key.startswith("requests_") for key in figures)  # counts, not figures
    assert figures["install_s"] == 1.0 and checks["sessions_new"] == 500


def test_run_slot_without_stats_or_for_iptables_reads_nothing(monkeypatch):
    for case, flag in ((CASES["ebpf"], False), (CASES["iptables-nft"], True)):
        stack = SlotStack()
        fake_stats(monkeypatch, stack)
        stack.bpf_map_entries = lambda name: 4
        _, _, programs = runner.run_slot(stack, SlotMeasurer(stack), case, [16], bpf_stats=flag)
        assert programs == {} and "read" not in stack.events and "stats on" not in stack.events


def test_run_slot_records_why_stats_were_unavailable(monkeypatch):
    stack = SlotStack()
    fake_stats(monkeypatch, stack)

    @contextlib.contextmanager
    def refused():
        yield "BPF_ENABLE_STATS: Invalid argument"
    monkeypatch.setattr(bpfstats, "enabled", refused)
    _, _, programs = runner.run_slot(stack, SlotMeasurer(stack), CASES["ebpf-noaccel"], [16], bpf_stats=True)
    assert programs == {"unavailable": "BPF_ENABLE_STATS: Invalid argument"} and "read" not in stack.events
    into: dict = {}
    runner._add_programs(into, "ebpf-noaccel", programs)
    runner._add_programs(into, "ebpf-noaccel", programs)
    assert into == {"ebpf-noaccel": {"unavailable": ["BPF_ENABLE_STATS: Invalid argument"] * 2}}


def test_alternate_order_reverses_even_rounds():
    cases = [CASES["explicit"], CASES["iptables-nft"], CASES["ebpf-noaccel"]]
    names = [[c.name for c in runner.round_order(cases, n, True)] for n in (1, 2, 3)]
    assert names == [["explicit", "iptables-nft", "ebpf-noaccel"], ["ebpf-noaccel", "iptables-nft", "explicit"],
                     ["explicit", "iptables-nft", "ebpf-noaccel"]]
    assert runner.round_order(cases, 2, False) == cases
