"""Aggregation across rounds (median, spread) and the ratios the issue asks for. Pure."""
from __future__ import annotations

import statistics
from dataclasses import dataclass


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
