"""RESULTS.md and bench.png from a synthetic results dict; the command-line options."""
from __future__ import annotations

import pytest

from bench import cli, plot, report

CASES = ["direct", "explicit", "iptables-nft", "iptables-legacy", "nftables", "ebpf", "ebpf-noaccel"]


def figures(scale: float) -> dict[str, list[float]]:
    out = {"conn_rate": [1000 * scale, 1100 * scale, 900 * scale], "cpu_us_per_conn": [100 / scale] * 3,
           "machine_us_per_conn": [80 / scale] * 3, "bulk_gbps": [5 * scale] * 3, "cpu_s_per_gbyte": [2 / scale] * 3}
    for c in (1, 16):
        out.update({f"lat_p50_c{c}": [100 / scale] * 3, f"lat_p99_c{c}": [400 / scale] * 3,
                    f"rps_c{c}": [9000 * scale] * 3})
    out["cpu_us_per_req_c16"] = [30 / scale] * 3
    out["bulk_failed_runs"] = [0, 2, 1] if scale == 0.9 else [0, 0, 0]
    return out


@pytest.fixture
def results() -> dict:
    speed = {"direct": 2.0, "explicit": 1.0, "iptables-nft": 0.8, "iptables-legacy": 0.75, "nftables": 0.85,
             "ebpf": 0.9, "ebpf-noaccel": 0.85}
    flat = ("ebpf", "nftables")  # rates that do not fall with the exclusions
    scale = {engine: {str(n): {"conn_rate": [1000.0 / (1 + n / 1000 * (engine not in flat))], "install_s": [0.5],
                               "cpu_us_per_conn": [100.0]} for n in (10, 10000)}
             for engine in ("iptables-nft", "iptables-legacy", "nftables", "ebpf")}
    run = {"wall_s": 1.5, "cpu_s": 1.2, "maxrss_mib": 120.0}
    return {
        "meta": {"command": "python -m bench --duration 5", "date": "2026-01-01T00:00:00+00:00", "duration_s": 5,
                 "rounds": 3, "cases": CASES, "concurrency": [1, 16], "scale_sizes": [10, 10000],
                 "cpu_layout": {"client": [0], "sidecar": [1], "server": [1]}, "elapsed_s": 600.0,
                 "machine": {"kernel": "Linux 6.18 x86_64", "cpu": "AMD EPYC", "haproxy": "HAProxy version 2.6"}},
        "cases": {case: figures(speed[case]) for case in CASES},
        "checks": {"ebpf": {"sessions_new": [10, 11, 12], "sockhash_entries": [2, 2, 2], "other_load_pct": [1, 2, 3],
                            "iperf3_failures": ["iperf3: unable to write to stream socket: Cannot allocate memory"]}},
        "scale": scale,
        "control": {"ebpf": {"install": [{**run, "wall_s": 4.0}, run, run], "reconfigure": [run, run, run],
                             "noop_reinstall": [run, {**run, "wall_s": 0.2}, {**run, "wall_s": 0.3}],
                             "uninstall": [run]}},
        "bpf_stats": {"ebpf-noaccel": {
            "new": [{"units": 1000, "progs": {"tp_sockops": {"runs": 21000, "ns": 3_300_000}}}] * 3,
            "c16": [{"units": 100_000, "progs": {"tp_sockops": {"runs": 100, "ns": 20_000}}}] * 3}},
    }


def test_report_holds_machine_command_tables_and_ratios(results):
    text = report.render(results)
    assert "python -m bench --duration 5" in text and "AMD EPYC" in text and "HAProxy version 2.6" in text
    assert "| figure | direct | explicit | iptables-nft | iptables-legacy | nftables | ebpf | ebpf-noaccel |" in text
    rate_row = next(line for line in text.splitlines() if line.startswith("| new connections/s") and "±" in line)
    assert "1,000 ±10.0%" in rate_row and "2,000 ±10.0%" in rate_row
    # ratios: iptables-nft 0.8x explicit's rate, ebpf 0.9/0.8 of iptables-nft's
    ratio_rows = [line for line in text.splitlines() if line.startswith("| new connections/s") and "better" in line]
    assert "-20.0%" in ratio_rows[0] and "+100.0%" in ratio_rows[0]
    assert "+12.5%" in ratio_rows[1]
    assert "+5.9%" in ratio_rows[2]  # the nftables section: ebpf 0.9/0.85 of nftables
    assert "| nftables | 1,000 | 1,000 | +0.0% | 0.50 |" in text and "| iptables-nft | 990 | 91 | -90.8% | 0.50 |" in text
    assert "This run: rate +0.0%: **met**; install 0.50 s: **met**." in text
    assert "10,000 vs 10" in text and "-90.8%" in text  # iptables conn rate at 10,000 vs 10
    assert "| ebpf | install | 4.00 | 1.50 ±0.0% |" in text  # first run apart from the later ones
    assert "| ebpf | no-op reinstall (same flags) | 1.50 | 0.25 ±20.0% |" in text
    assert "This run: reconfigure 1.50 s, no-op reinstall 0.25 s: **not met**." in text
    assert "| tp_sockops | 21.0 ±0% | 3,300 ±0% | 0.00100 ±0% | 0.200 ±0% | 157 |" in text.split("## eBPF programs' own cost")[1]
    assert ("| ebpf | 10, 11, 12 | – | – | 2, 2, 2 | iperf3: unable to write to stream socket: Cannot allocate "
            "memory |") in text
    failed = [line for line in text.splitlines() if line.startswith("| iperf3 runs that failed")]
    assert failed == ["| iperf3 runs that failed, all rounds (retried; see Route checks) | 0 | 0 | 0 | 0 | 0 | 3 | 0 |"]


def test_report_says_whether_the_machine_was_quiet(results):
    assert "max 3%. The machine was quiet." in report.render(results)
    results["checks"]["ebpf"]["other_load_pct"] = [1, 80, 75]
    assert "**2 of 3 runs had more than 10% other load" in report.render(results)


def test_report_flags_a_disturbed_scale_sweep(results):
    results["scale"]["ebpf"]["10"]["other_load_pct"] = [60.0]
    scale_part = report.render(results).split("## Scale")[1].split("## Control")[0]
    assert "**1 of 1 runs had more than 10% other load" in scale_part


def test_report_without_scale_and_control(results):
    results["scale"], results["control"], results["meta"]["scale_sizes"] = {}, {}, []
    text = report.render(results)
    assert "## Scale" not in text and "## Control path" not in text and "Target (issue 13)" not in text


def test_plot_writes_a_png(results, tmp_path):
    path = tmp_path / "bench.png"
    plot.render(results, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_defaults():
    args = cli.parser().parse_args([])
    assert [c.name for c in args.cases] == CASES
    assert args.scale == [10, 100, 1000, 10000] and args.concurrency == [1, 16, 64]
    assert args.out.endswith("bench/results")


def test_cli_options():
    args = cli.parser().parse_args(["--cases", "direct,iptables", "--scale", "10", "--duration", "2",
                                    "--skip-control", "--out", "/tmp/x"])
    assert [c.name for c in args.cases] == ["direct", "iptables-nft", "iptables-legacy"]
    assert (args.scale, args.duration, args.skip_control, args.out) == ([10], 2, True, "/tmp/x")
    assert (args.skip_bpf_stats, args.alternate_order) == (False, False)
    args = cli.parser().parse_args(["--skip-bpf-stats", "--alternate-order"])
    assert (args.skip_bpf_stats, args.alternate_order) == (True, True)


def test_report_of_an_older_results_json_without_the_new_parts(results):
    del results["bpf_stats"]
    results["control"] = {"ebpf": {"install": results["control"]["ebpf"]["install"],
                                   "uninstall": results["control"]["ebpf"]["uninstall"]}}
    text = report.render(results)
    assert "Not measured in this run: reconfigure, no-op reinstall" in text
    assert "## eBPF programs' own cost" not in text


@pytest.mark.parametrize("argv", [["--cases", "nope"], ["--duration", "0"], ["--scale", "10,x"],
                                  ["--rounds", "1,2"]])
def test_cli_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parser().parse_args(argv)
    assert exit_info.value.code == 2


def test_write_outputs_replaces_the_files(results, tmp_path):
    (tmp_path / "RESULTS.md").write_text("old run")
    paths = cli.write_outputs(results, str(tmp_path))
    assert "old run" not in (tmp_path / "RESULTS.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "bench.png", "results.json"]
    assert set(paths) == {"RESULTS.md", "bench.png", "results.json"}
