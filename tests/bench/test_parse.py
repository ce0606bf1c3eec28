"""bench.parse on real tool output (captured in tests/bench/data) and on edge cases."""
from __future__ import annotations

import os

import pytest

from bench import parse

DATA = os.path.join(os.path.dirname(__file__), "data")


def read(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as handle:
        return handle.read()


def test_wrk_report_with_latency_distribution():
    result = parse.wrk(read("wrk_close.txt"))
    assert result.requests == 5018
    assert result.seconds == pytest.approx(1.04)
    assert result.rate == pytest.approx(4839.05)
    assert result.percentiles_us == {50.0: pytest.approx(2130.0), 75.0: pytest.approx(3380.0),
                                     90.0: pytest.approx(6220.0), 99.0: pytest.approx(27510.0)}
    assert result.error_count == 0


def test_wrk_units_errors_and_non_2xx():
    text = """Running 2s test @ http://198.18.0.2:80/
  Latency Distribution
     50%   85.00us
     99%    1.20s
  300 requests in 2.00s, 1.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:    150.00
"""
    result = parse.wrk(text)
    assert result.percentiles_us == {50.0: 85.0, 99.0: 1_200_000.0}
    assert result.errors == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert result.non_2xx == 5
    assert result.error_count == 15


def test_wrk_without_a_report_is_an_error():
    with pytest.raises(parse.ParseError, match="not a wrk report"):
        parse.wrk("unable to connect to 198.18.0.2:80 Connection refused\n")


def test_iperf3_json():
    result = parse.iperf3(read("iperf3.json"))
    assert result.bits_per_second == pytest.approx(9152655787.47628)
    assert result.bytes == 1145569280
    assert result.seconds == pytest.approx(1.0013)


@pytest.mark.parametrize("text, message", [
    (read("iperf3_refused.json"), "Connection refused"),
    ("iperf3: error - unable to connect", "no JSON"),
    ('{"end": {}}', "sum_received"),
])
def test_iperf3_failures(text, message):
    with pytest.raises(parse.ParseError, match=message):
        parse.iperf3(text)


def test_proc_stat_busy_and_total():
    text = "cpu  100 5 50 1000 7 3 2 9 11 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n"
    ticks = parse.proc_stat_cpu(text)
    assert ticks.busy == 100 + 5 + 50 + 3 + 2  # steal (9) and guest (inside user) not added
    assert ticks.total == ticks.busy + 1000 + 7


def test_proc_pid_stat_with_spaces_and_parens_in_the_name():
    text = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 23 0 0 20 0 1 0 5 0 0\n"
    assert parse.proc_pid_cpu(text) == 17 + 23
    with pytest.raises(parse.ParseError):
        parse.proc_pid_cpu("garbage")


def test_haproxy_frontends_from_real_show_stat():
    frontends = parse.haproxy_frontends(read("haproxy_show_stat.csv"))
    assert set(frontends) == {"outbound", "explicit_http", "explicit_iperf"}  # no BACKEND/server rows
    assert frontends["outbound"] == {"stot": 0, "dcon": 0}


def test_haproxy_frontends_reads_the_named_columns():
    text = "# pxname,svname,stot,dcon,\nfe,FRONTEND,12,3,\nfe,BACKEND,99,,\nbe,srv1,7,,\n"
    assert parse.haproxy_frontends(text) == {"fe": {"stot": 12, "dcon": 3}}
    with pytest.raises(parse.ParseError):
        parse.haproxy_frontends("Unknown command\n")


def test_bpftool_entry_count():
    assert parse.bpftool_entry_count('[{"key": ["0x01"], "value": {"error": "x"}}, {"key": ["0x02"]}]') == 2
    assert parse.bpftool_entry_count("[]") == 0
    with pytest.raises(parse.ParseError):
        parse.bpftool_entry_count("Error: bpf obj get")


def test_sockstat_tcp_memory_pages():
    text = "sockets: used 11\nTCP: inuse 1 orphan 0 tw 0 alloc 6 mem 392567\nUDP: inuse 0 mem 0\n"
    assert parse.sockstat_tcp_pages(text) == 392567
    with pytest.raises(parse.ParseError):
        parse.sockstat_tcp_pages("sockets: used 11\n")
