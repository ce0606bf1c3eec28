"""bench.png from a results dict: one panel per figure, medians with min–max whiskers."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from bench import stats  # noqa: E402

COLORS = {"direct": "#7f7f7f", "explicit": "#bcbd22", "iptables-nft": "#1f77b4", "iptables-legacy": "#17becf",
          "nftables": "#2ca02c", "ebpf": "#d62728", "ebpf-noaccel": "#ff9896"}



def _ticks(ax, positions, labels, **style) -> None:
    """Tick labels the way Matplotlib 3.3 (Debian 11) understands too: set_xticks() takes labels
    and text properties only since 3.5."""
    ax.set_xticks(list(positions))
    ax.set_xticklabels(labels, fontsize=8, **style)

def _bars(ax, cases, summaries, key, title, ylabel):
    values = [summaries.get(c, {}).get(key) for c in cases]
    xs = range(len(cases))
    med = [v.median if v else 0 for v in values]
    err = [[(v.median - v.low) if v else 0 for v in values], [(v.high - v.median) if v else 0 for v in values]]
    ax.bar(xs, med, yerr=err, capsize=3, color=[COLORS.get(c, "#999") for c in cases])
    for x, m, top in zip(xs, med, err[1]):
        ax.annotate(f"{m:,.0f}" if m >= 100 else f"{m:,.2f}", (x, m + top), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 2), textcoords="offset points")
    _ticks(ax, list(xs), cases, rotation=30, ha="right")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.margins(y=0.12)


def _grouped(ax, cases, summaries, keys, labels, title, ylabel):
    width = 0.8 / max(len(cases), 1)
    for i, case in enumerate(cases):
        values = [summaries.get(case, {}).get(k) for k in keys]
        xs = [j + (i - (len(cases) - 1) / 2) * width for j in range(len(keys))]
        med = [v.median if v else 0 for v in values]
        err = [[(v.median - v.low) if v else 0 for v in values], [(v.high - v.median) if v else 0 for v in values]]
        ax.bar(xs, med, width, yerr=err, capsize=2, label=case, color=COLORS.get(case, "#999"))
    _ticks(ax, range(len(keys)), labels)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)


def _scale(ax, scale, sizes):
    for engine, by_size in scale.items():
        xs, med, low, high = [], [], [], []
        for size in sizes:
            s = stats.summarize(by_size.get(str(size), {}).get("conn_rate", []))
            if s:
                xs.append(size)
                med.append(s.median)
                low.append(s.median - s.low)
                high.append(s.high - s.median)
        ax.errorbar(xs, med, yerr=[low, high], marker="o", capsize=3, label=engine, color=COLORS.get(engine))
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_title("new connections/s vs excluded ports + CIDRs", fontsize=10)
    ax.set_xlabel("N excluded ports and N excluded CIDRs", fontsize=8)
    ax.set_ylabel("connections/s", fontsize=8)
    ax.legend(fontsize=7)


CONTROL_COLORS = {"install": "#2ca02c", "reconfigure": "#9467bd", "noop_reinstall": "#c5b0d5",
                  "uninstall": "#98df8a"}


def _control(ax, control):
    engines = list(control)
    ops = [op for op in CONTROL_COLORS if any(control[e].get(op) for e in engines)]
    width = 0.8 / max(len(ops), 1)
    for i, op in enumerate(ops):
        med, err_low, err_high = [], [], []
        for engine in engines:
            runs = control[engine].get(op, [])
            s = stats.summarize([r["wall_s"] for r in runs])
            med.append(s.median if s else 0)
            err_low.append(s.median - s.low if s else 0)
            err_high.append(s.high - s.median if s else 0)
        xs = [j + (i - (len(ops) - 1) / 2) * width for j in range(len(engines))]
        ax.bar(xs, med, width, yerr=[err_low, err_high], capsize=3, label=op.replace("_", " "),
               color=CONTROL_COLORS[op])
    _ticks(ax, range(len(engines)), engines)
    ax.set_title("control path wall time (median, min–max)", fontsize=10)
    ax.set_ylabel("seconds", fontsize=8)
    ax.legend(fontsize=7)


def render(raw: dict, path: str) -> None:
    results, _ = stats.drop_disturbed(raw)  # as in RESULTS.md
    meta = results["meta"]
    cases, conc = meta["cases"], meta["concurrency"]
    summaries = stats.summarize_cases(results.get("cases", {}))
    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5))
    a = axes.flat
    _bars(next(a), cases, summaries, "conn_rate", "new connections/s (1 request each)", "connections/s")
    _bars(next(a), cases, summaries, "cpu_us_per_conn", "CPU per new connection (client, HAProxy, nginx, ksoftirqd)", "µs")
    _grouped(next(a), cases, summaries, [f"lat_p50_c{c}" for c in conc], [f"{c} conn." for c in conc],
             "latency p50, kept-alive connections", "µs")
    ax = next(a)
    _grouped(ax, cases, summaries, [f"lat_p99_c{c}" for c in conc], [f"{c} conn." for c in conc],
             "latency p99, kept-alive connections (log scale)", "µs")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.legend(fontsize=7)
    top = max(conc)
    _bars(next(a), cases, summaries, f"rps_c{top}", f"requests/s, {top} kept-alive connections", "requests/s")
    _bars(next(a), cases, summaries, "bulk_gbps", "bulk throughput (iperf3, 1 stream)", "Gbit/s")
    ax = next(a)
    if results.get("scale"):
        _scale(ax, results["scale"], meta["scale_sizes"])
    else:
        ax.set_axis_off()
    ax = next(a)
    if results.get("control"):
        _control(ax, results["control"])
    else:
        ax.set_axis_off()
    fig.suptitle(f"tpctl: HAProxy sidecar, medians of {meta['rounds']} round(s) × {meta['duration_s']} s, "
                 f"whiskers min–max — {meta['machine'].get('kernel', '')}, {meta['machine'].get('cpu', '')}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
