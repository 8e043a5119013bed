"""Small statistics helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples: Sequence[float]) -> str:
    """Median / p99 / max of samples given in seconds, printed in milliseconds."""
    return (
        f"median {statistics.median(samples) * 1e3:7.2f} ms   "
        f"p99 {percentile(samples, 0.99) * 1e3:7.2f} ms   "
        f"max {max(samples) * 1e3:7.2f} ms   (n={len(samples)})"
    )
