"""Aggregation across rounds (median, spread) and the ratios the issue asks for. Pure."""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass

DISTURBED_PCT = 10  # other load (% of the machine) above which a run counts as disturbed


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: how far apart the rounds were."""
        if self.n < 2 or self.median == 0:
            return 0.0
        return (self.high - self.low) / abs(self.median) * 100.0


def summarize(values: list[float]) -> Summary | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return Summary(median=statistics.median(values), low=min(values), high=max(values), n=len(values))


def ratio(value: Summary | None, reference: Summary | None) -> float | None:
    """median / reference median; None when either is missing or the reference is 0."""
    if value is None or reference is None or reference.median == 0:
        return None
    return value.median / reference.median


def summarize_cases(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Summary]]:
    """{case: {metric: [per-round values]}} -> {case: {metric: Summary}} (metrics without values dropped)."""
    out: dict[str, dict[str, Summary]] = {}
    for case, metrics in samples.items():
        out[case] = {}
        for metric, values in metrics.items():
            summary = summarize(values)
            if summary is not None:
                out[case][metric] = summary
    return out


def ratios(summaries: dict[str, dict[str, Summary]], reference: str) -> dict[str, dict[str, float | None]]:
    """Each case's medians divided by the reference case's, metric by metric."""
    ref = summaries.get(reference, {})
    return {case: {metric: ratio(summary, ref.get(metric)) for metric, summary in metrics.items()}
            for case, metrics in summaries.items() if case != reference}


def change_pct(value: float | None) -> str:
    """A ratio as a signed percentage change: 0.88 -> '-12.0%'."""
    if value is None:
        return "n/a"
    return f"{(value - 1.0) * 100:+.1f}%"


def _keep_quiet(figures: dict[str, list], loads: list[float], label: str, dropped: list[str]) -> None:
    """Drop, in place, the rounds whose load was above DISTURBED_PCT, unless every round was."""
    quiet = [i for i, load in enumerate(loads) if load <= DISTURBED_PCT]
    if not quiet or len(quiet) == len(loads):
        return
    for key, values in figures.items():
        if len(values) == len(loads):
            figures[key] = [values[i] for i in quiet]
    dropped += [f"{label} round {i + 1} ({loads[i]:.0f}% other load)" for i in range(len(loads)) if i not in quiet]


def drop_disturbed(results: dict) -> tuple[dict, list[str]]:
    """A copy of `results` whose per-round figures leave out the rounds another tenant disturbed
    (other load above DISTURBED_PCT in the round's new-connection run), where the same case or
    scale cell has quiet rounds left; and the list of what was left out. results.json keeps all."""
    out = copy.deepcopy(results)
    dropped: list[str] = []
    for case, figures in out.get("cases", {}).items():
        loads = out.get("checks", {}).get(case, {}).get("other_load_pct", [])
        _keep_quiet(figures, loads, case, dropped)
    for engine, by_size in out.get("scale", {}).items():
        for size, figures in by_size.items():
            _keep_quiet(figures, list(figures.get("other_load_pct", [])), f"scale {engine} {size}", dropped)
    return out, dropped
