"""RESULTS.md from a results dict (as results.json holds it). Pure: text in, text out."""
from __future__ import annotations

import math

from bench import bpfstats, stats
from bench import control as control_module
from bench import scale as scale_module
from bench.stats import Summary

HIGHER, LOWER = "higher is better", "lower is better"
TOTAL = "total"  # a count summed over the rounds: no median, no ratio


def case_metrics(concurrency: list[int]) -> list[tuple[str, str, str, str]]:
    """(key, label, format, direction) of every per-case figure, in table order."""
    top = max(concurrency)
    rows = [("conn_rate", "new connections/s (1 request each)", "{:,.0f}", HIGHER),
            ("cpu_us_per_conn", "CPU µs per new connection (client, HAProxy, nginx, ksoftirqd)", "{:,.1f}", LOWER),
            ("machine_us_per_conn", "CPU µs per new connection (whole machine, incl. other tenants)", "{:,.1f}",
             LOWER)]
    for c in concurrency:
        rows += [(f"lat_p50_c{c}", f"latency p50 µs, {c} kept-alive conn.", "{:,.0f}", LOWER),
                 (f"lat_p99_c{c}", f"latency p99 µs, {c} kept-alive conn.", "{:,.0f}", LOWER)]
    rows += [(f"rps_c{c}", f"requests/s, {c} kept-alive conn.", "{:,.0f}", HIGHER) for c in concurrency]
    rows += [(f"cpu_us_per_req_c{top}", f"CPU µs per request, {top} kept-alive conn. (as above)",
              "{:,.1f}", LOWER),
             ("bulk_gbps", "bulk throughput Gbit/s (iperf3, 1 stream)", "{:,.2f}", HIGHER),
             ("bulk_tcp_mem_mib", "peak TCP memory of the whole host during the bulk run, MiB", "{:,.0f}", LOWER),
             ("bulk_failed_runs", "iperf3 runs that failed, all rounds (retried; see Route checks)", "{:,.0f}",
              TOTAL),
             ("cpu_s_per_gbyte", "CPU s per GB of bulk data (client, HAProxy, iperf3 -s, ksoftirqd)", "{:,.2f}",
              LOWER)]
    return rows


def cell(summary: Summary | None, fmt: str) -> str:
    if summary is None:
        return "–"
    text = fmt.format(summary.median)
    if summary.n > 1:
        text += f" ±{summary.spread_pct / 2:.1f}%"
    return text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cases_table(samples: dict[str, dict[str, list]], cases: list[str], concurrency: list[int]) -> str:
    summaries = stats.summarize_cases(samples)
    rows = []
    for key, label, fmt, direction in case_metrics(concurrency):
        if not any(key in summaries.get(case, {}) for case in cases):
            continue
        if direction == TOTAL:
            rows.append([label] + [fmt.format(sum(v for v in samples.get(case, {}).get(key, []) if v))
                                   for case in cases])
        else:
            rows.append([label] + [cell(summaries.get(case, {}).get(key), fmt) for case in cases])
    return table(["figure"] + cases, rows)


def ratio_table(summaries: dict[str, dict[str, Summary]], pairs: list[tuple[str, str]],
                concurrency: list[int]) -> str:
    """One column per (case, reference) pair: the median's change against the reference's."""
    pairs = [(a, b) for a, b in pairs if a in summaries and b in summaries]
    if not pairs:
        return "(not enough cases for this comparison)"
    rows = []
    for key, label, _, direction in case_metrics(concurrency):
        if direction == TOTAL:
            continue
        values = [stats.ratio(summaries[a].get(key), summaries[b].get(key)) for a, b in pairs]
        if any(v is not None for v in values):
            rows.append([label, direction] + [stats.change_pct(v) for v in values])
    return table(["figure", ""] + [f"{a} vs {b}" for a, b in pairs], rows)


def scale_table(scale: dict, sizes: list[int]) -> str:
    engines = list(scale)
    header = ["excluded ports + CIDRs"]
    for engine in engines:
        header += [f"{engine} conn/s", f"{engine} CPU µs/conn", f"{engine} install s"]
    rows = []
    for size in sizes:
        row = [f"{size:,} + {size:,}"]
        for engine in engines:
            figures = scale[engine].get(str(size), {})
            row += [cell(stats.summarize(figures.get("conn_rate", [])), "{:,.0f}"),
                    cell(stats.summarize(figures.get("cpu_us_per_conn", [])), "{:,.1f}"),
                    cell(stats.summarize(figures.get("install_s", [])), "{:,.2f}")]
        rows.append(row)
    if len(sizes) > 1:
        first, last = str(sizes[0]), str(sizes[-1])
        row = [f"{sizes[-1]:,} vs {sizes[0]:,}"]
        for engine in engines:
            for key in ("conn_rate", "cpu_us_per_conn", "install_s"):
                a = stats.summarize(scale[engine].get(last, {}).get(key, []))
                b = stats.summarize(scale[engine].get(first, {}).get(key, []))
                row.append(stats.change_pct(stats.ratio(a, b)))
        rows.append(row)
    return table(header, rows)


def _figure(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def scale_target_section(scale: dict) -> list[str]:
    """The nftables target (bench/scale.py target()): its rate and install time at the two sizes
    beside the other engines', and whether this run met it (computed, never assumed)."""
    verdict = scale_module.target(scale)
    if verdict is None:
        return []
    small, large = scale_module.TARGET_SIZES
    rows = [[engine, _figure(f["rate_small"], "{:,.0f}"), _figure(f["rate_large"], "{:,.0f}"),
             stats.change_pct(f["rate_ratio"]), _figure(f["install_large"], "{:.2f}")]
            for engine, f in verdict["engines"].items()]
    text = (f"Target ({scale_module.TARGET_ENGINE} engine): at {large:,} + {large:,} exclusions its connection rate "
            f"at most {scale_module.TARGET_MAX_DROP:.0%} below its rate at {small:,} + {small:,}, and `tpctl install` "
            f"at {large:,} + {large:,} within {scale_module.TARGET_INSTALL_S} s (medians of the sweep's rounds; "
            "install: wall time). ")
    mine = verdict["engines"][scale_module.TARGET_ENGINE]
    parts = []
    if verdict["rate_met"] is not None:
        parts.append(f"rate {stats.change_pct(mine['rate_ratio'])}: **{'met' if verdict['rate_met'] else 'not met'}**")
    if verdict["install_met"] is not None:
        parts.append(f"install {mine['install_large']:.2f} s: "
                     f"**{'met' if verdict['install_met'] else 'not met'}**")
    if parts:
        text += f"This run: {'; '.join(parts)}."
    if verdict["missing"]:
        text += f" Not measured in this run: {', '.join(verdict['missing'])}."
    header = ["engine", f"conn/s at {small:,} + {small:,}", f"conn/s at {large:,} + {large:,}",
              f"change {large:,} vs {small:,}", f"install s at {large:,} + {large:,}"]
    return [table(header, rows), "", text.strip() + "\n"]


CONTROL_LABELS = {"install": "install", "reconfigure": "reconfigure (7001 → 7001,7002)",
                  "noop_reinstall": "no-op reinstall (same flags)", "uninstall": "uninstall"}


def control_table(control: dict) -> str:
    rows = []
    for engine, ops in control.items():
        for op in [*control_module.COMMANDS, *(k for k in ops if k not in control_module.COMMANDS)]:
            runs = ops.get(op, [])
            if not runs:
                continue
            rest = control_module.later_runs(runs)
            wall = stats.summarize([r["wall_s"] for r in rest])
            cpu = stats.summarize([r["cpu_s"] for r in rest])
            rss = stats.summarize([r["maxrss_mib"] for r in runs])
            rows.append([engine, CONTROL_LABELS.get(op, op), f"{runs[0]['wall_s']:.2f}", cell(wall, "{:.2f}"),
                         cell(cpu, "{:.2f}"), f"{rss.median:.0f} (max {rss.high:.0f})", str(len(runs))])
    return table(["engine", "command", "first run s", "later runs s (median)", "CPU s (median)",
                  "peak memory MiB (median)", "runs"], rows)


def target_sentence(control: dict) -> str:
    """Issue 13's target and whether this run met it (computed, never assumed)."""
    verdict = control_module.target(control)
    if verdict is None:
        return ""
    text = (f"Target (issue 13): eBPF reconfigure and no-op reinstall ≤ {control_module.TARGET_S} s on this "
            "machine (wall time, median of the later runs). ")
    labels = {"reconfigure": "reconfigure", "noop_reinstall": "no-op reinstall"}
    if verdict["missing"]:
        return text + f"Not measured in this run: {', '.join(labels[c] for c in verdict['missing'])}.\n"
    figures = ", ".join(f"{labels[c]} {v:.2f} s" for c, v in verdict["figures"].items())
    return text + f"This run: {figures}: **{'met' if verdict['met'] else 'not met'}**.\n"


def sig(value: float | None) -> str:
    """Three significant digits without an exponent: 0.000147, 1.35, 454, 12,345."""
    if value is None:
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def _sig_cell(values: list[float]) -> str:
    summary = stats.summarize(values)
    if summary is None:
        return "–"
    text = sig(summary.median)
    if summary.n > 1 and summary.median:
        text += f" ±{summary.spread_pct / 2:.0f}%"
    return text


def bpf_table(samples: dict, concurrency: list[int]) -> str:
    """One row per program of one eBPF case: runs and BPF time per new connection and per
    kept-alive request (medians across rounds), and the mean time of one run."""
    keys = ["new"] + [f"c{c}" for c in concurrency if f"c{c}" in samples]
    per = {key: bpfstats.per_unit(samples.get(key, [])) for key in keys}
    one_run = bpfstats.ns_per_run([s for key in keys for s in samples.get(key, [])])
    names = sorted({name for figures in per.values() for name in figures if name != bpfstats.ALL})
    header = ["program", "runs / new conn.", "BPF ns / new conn."]
    for key in keys[1:]:
        header += [f"runs / request, {key[1:]} conn.", f"BPF ns / request, {key[1:]} conn."]
    header.append("ns / run")
    rows = []
    for name in [*names, bpfstats.ALL]:
        row = [name if name != bpfstats.ALL else f"**{name}**"]
        for key in keys:
            figures = per[key].get(name, {"runs": [], "ns": []})
            row += [_sig_cell(figures["runs"]), _sig_cell(figures["ns"])]
        if name == bpfstats.ALL:
            runs = sum(s["progs"][p]["runs"] for k in keys for s in samples.get(k, []) for p in s.get("progs", {}))
            ns = sum(s["progs"][p]["ns"] for k in keys for s in samples.get(k, []) for p in s.get("progs", {}))
            row.append(sig(ns / runs) if runs else "–")
        else:
            row.append(sig(one_run.get(name)))
        rows.append(row)
    return table(header, rows)


def bpf_section(bpf_stats: dict, concurrency: list[int]) -> list[str]:
    if not bpf_stats:
        return []
    out = ["## eBPF programs' own cost (BPF statistics)\n", BPF_NOTE]
    for case, samples in bpf_stats.items():
        if samples.get("unavailable"):
            out += [f"`{case}`: BPF statistics unavailable ({samples['unavailable'][0]}).\n"]
            continue
        rounds = len(samples.get("new", []))
        out += [f"`{case}` ({rounds} round(s)):\n", bpf_table(samples, concurrency), ""]
    return out


CHECK_COLUMNS = (("sessions_new", "HAProxy sessions, new-connection run"), ("wrk_errors", "wrk errors"),
                 ("orig_dst_misses", "SO_ORIGINAL_DST misses"), ("sockhash_entries", "sockhash entries"),
                 ("iperf3_failures", "iperf3 failures"), ("other_load_pct", "other load %, new-connection run"))


def checks_table(checks: dict) -> str:
    """One row per case, each cell the per-round values."""
    rows = []
    for case, found in checks.items():
        rows.append([case] + [", ".join(str(v) for v in found.get(key, [])) or "–" for key, _ in CHECK_COLUMNS])
    return table(["case"] + [label for _, label in CHECK_COLUMNS], rows)


DISTURBED_PCT = stats.DISTURBED_PCT


def disturbance(checks: dict) -> str:
    """One sentence on how much else ran on the machine during the measurements."""
    return load_sentence([v for found in checks.values() for v in found.get("other_load_pct", [])])


def load_sentence(loads: list[float]) -> str:
    if not loads:
        return ""
    busy = sum(1 for v in loads if v > DISTURBED_PCT)
    text = (f"Other load (CPU used outside the measured programs, share of the machine) during the "
            f"new-connection runs: median {stats.summarize(loads).median:.0f}%, max {max(loads):.0f}%. ")
    if busy:
        return text + f"**{busy} of {len(loads)} runs had more than {DISTURBED_PCT}% other load.**\n"
    return text + "The machine was quiet.\n"


def dropped_sentence(dropped: list[str]) -> str:
    if not dropped:
        return ""
    return (f"Left out of the medians as disturbed (more than {DISTURBED_PCT}% other load, quiet rounds of the "
            f"same case remaining; `results.json` keeps them): {'; '.join(dropped)}.\n")


def render(raw: dict) -> str:
    results, dropped = stats.drop_disturbed(raw)
    meta = results["meta"]
    cases = meta["cases"]
    concurrency = meta["concurrency"]
    summaries = stats.summarize_cases(results.get("cases", {}))
    out = ["# tpctl benchmark results\n",
           f"Run on {meta['date']} with:\n\n```\n{meta['command']}\n```\n",
           f"{meta['rounds']} round(s) of {meta['duration_s']} s per measurement, cases interleaved "
           f"round by round ({' '.join(cases)}"
           f"{'; reversed in even rounds' if meta.get('alternate_order') else ''}); "
           f"whole run {meta['elapsed_s'] / 60:.1f} min. "
           "Each figure is the median across rounds; ±x% is half the range across rounds, as a share "
           "of the median. Raw values per round: `results.json`. Plot: `bench.png`.\n",
           disturbance(results.get("checks", {})), dropped_sentence(dropped),
           "## Machine\n",
           table(["", ""], [[k, v] for k, v in meta["machine"].items()]),
           "\nCPU pinning (taskset, the same in every case): " +
           ", ".join(f"{role} on CPU {','.join(map(str, cpus))}" for role, cpus in meta["cpu_layout"].items()) + ".\n",
           "## Method\n", METHOD, "## Cases\n", cases_table(results.get("cases", {}), cases, concurrency), "",
           "## Ratios against `explicit` (the sidecar without any redirection)\n",
           "Change of the median against `explicit`; whether that is good depends on the figure's direction.\n",
           ratio_table(summaries, [(c, "explicit") for c in cases if c != "explicit"], concurrency), "",
           "## eBPF against iptables, and what sk_msg acceleration adds\n",
           ratio_table(summaries, [("ebpf", "iptables-nft"), ("ebpf", "iptables-legacy"),
                                   ("ebpf-noaccel", "iptables-nft"), ("ebpf", "ebpf-noaccel")], concurrency), ""]
    if "nftables" in cases:
        out += ["## nftables against iptables and eBPF\n",
                ratio_table(summaries, [("nftables", "iptables-nft"), ("nftables", "iptables-legacy"),
                                        ("ebpf", "nftables"), ("ebpf-noaccel", "nftables")], concurrency), ""]
    if results.get("scale"):
        out += ["## Scale: excluded outbound ports and CIDRs\n",
                "New-connection rate with N excluded ports plus N excluded CIDRs, none covering the measured "
                "traffic. Install time is the wall time of `tpctl install --config FILE`. Before each "
                "measurement the kernel's counts (iptables rules, nftables set elements, eBPF map entries) "
                "are checked against N.\n",
                scale_table(results["scale"], meta["scale_sizes"]), "",
                *scale_target_section(results["scale"]),
                load_sentence([v for by_size in raw["scale"].values() for figures in by_size.values()
                               for v in figures.get("other_load_pct", [])])]
    if results.get("control"):
        out += ["## Control path: `tpctl install`, reinstall, `tpctl uninstall`\n", CONTROL_NOTE,
                control_table(results["control"]), "", target_sentence(results["control"])]
    out += bpf_section(results.get("bpf_stats", {}), concurrency)
    if results.get("checks"):
        out += ["## Route checks and failures\n", CHECKS_NOTE,
                checks_table(results["checks"]), ""]
    return "\n".join(out) + "\n"


METHOD = """\
- Topology (`sandbox/`): server namespace 198.18.0.2 with nginx (one worker, 65-byte body)
  on :80 and `iperf3 -s` on :5201; app namespace 198.18.0.1 with HAProxy 2.6 as the unmodified
  sidecar (uid 5678, `nbthread 1`, `server original 0.0.0.0` on :15001 forwards to
  SO_ORIGINAL_DST) and the clients, inside the sandbox cgroup where the eBPF engine attaches.
- `direct`: client to 198.18.0.2 with nothing installed. `explicit`: client to HAProxy's own
  port (127.0.0.1:15080 for HTTP, :15201 for iperf3, fixed server) with nothing installed.
  `iptables-nft`, `iptables-legacy`, `nftables`, `ebpf`, `ebpf-noaccel`: client to 198.18.0.2,
  redirected by `tpctl install` (IPv4, inbound redirect off), installed before and uninstalled
  after the case's slot; `nftables` is `--nftables-enabled --no-fallback` (one `table inet
  tpctl`); `ebpf` adds `--ebpf-sk-msg-accel=true` (off by default), `ebpf-noaccel`
  `--ebpf-sk-msg-accel=false`.
- New connections: `wrk -t1 -c16 -H 'Connection: close'` (one request per connection).
  Latency: `wrk -t1 -cN --latency` on kept-alive connections. Bulk: `iperf3 -c -t D -J`,
  one stream, Gbit/s received; meanwhile /proc/net/sockstat's TCP `mem` (pages charged to all
  TCP sockets of the host, the figure net.ipv4.tcp_mem limits) is sampled every 100 ms.
- CPU per request: user+system time, during the run, of the client (wait4), HAProxy, nginx,
  `iperf3 -s` and the ksoftirqd threads (/proc/PID/stat), divided by the requests served (or GB
  moved). This kernel has no IRQ time accounting, so softirq work (most of the network stack)
  is charged to the task it interrupted and is counted here. The whole machine's busy time
  (/proc/stat) per new connection is shown too: it also counts anything else running.
- Every measurement is checked against HAProxy's per-frontend session counters; a case whose
  traffic bypassed the sidecar (or `direct` going through it) aborts the run.
- Per-namespace sysctl `net.ipv4.tcp_tw_reuse=1` in both namespaces, so the client's port range
  does not run out in connection-rate runs whether or not the engine moves the connection onto
  loopback (the kernel default reuses TIME_WAIT ports for loopback only).
"""

CHECKS_NOTE = """\
Values per round. HAProxy sessions: counted in the case's own frontend during the
new-connection run (at least one per completed request, none for `direct`; every other run is
checked the same way). wrk errors: socket errors and non-2xx responses over all wrk runs.
SO_ORIGINAL_DST misses: connections HAProxy accepted without an original destination and
refused (`tcp-request connection reject if { dst_port 15001 }`: its fallback would be its own
listener, a loop). sockhash entries: sockets in the eBPF engine's sockhash while two kept-alive
connections ran after the measured runs (acceleration on: > 0; off: 0). iperf3 failures: runs
that ended in an error and were retried. Other load: the machine's busy time outside the
measured programs during the new-connection run, as a share of all CPUs (other VMs, the
harness): high values mean that round was disturbed.
"""

CONTROL_NOTE = """\
Per run and engine, in the app namespace with kumactl's defaults (dualstack, inbound redirect
on): `install --exclude-outbound-ports 7001`; then `install --exclude-outbound-ports 7001,7002`
over it (reconfigure); the same again with identical flags (no-op reinstall); then `uninstall`.
Engines interleaved run by run. After each install the kernel's excluded-port count (rules, set
elements or map entries) is checked (1, 2, 2), outside the timed commands. Peak memory is the child's
`ru_maxrss` (wait4). The first run of the session is shown apart from the later ones; a
difference between them is the OS page cache (libclang, headers, modules) or whatever tpctl
keeps between runs.
"""

BPF_NOTE = """\
Each eBPF case's slot runs with BPF statistics on (bpf(2) BPF_ENABLE_STATS: on while the
bench holds the fd, off when it closes it or exits; the sysctl `kernel.bpf_stats_enabled` is
not written). Each tpctl program's `run_cnt` and `run_time_ns` (BPF_OBJ_GET_INFO_BY_FD on its
pin) are read before and after the new-connection run and each kept-alive run, and divided by
the connections (one request each) or requests that run served; medians across rounds, ±x% half
the range. `ns / run`: all runs of all those measurements. The time is the programs' own
(between the kernel's two clock reads around each run), not the hooks' kernel work around them;
the statistics themselves add those two clock reads per run to the eBPF cases' figures above.
Kept-alive runs open their N connections inside the measured run, so their connection set-up is
in the per-request figures.
"""
