"""Latency samples and their summaries: pure functions with no I/O, so they are easy to test.

Samples are integer nanoseconds (what ``time.perf_counter_ns`` differences give); summaries are in
milliseconds. Percentiles use the nearest-rank method: the p-th percentile of n samples is the
smallest sample such that at least p% of the samples are at or below it, so it is always one of the
measured values, never an interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

NS_PER_MS = 1_000_000


def nearest_rank(sorted_samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of samples that are already sorted ascending."""
    if not sorted_samples:
        raise ValueError("the percentile of no samples is undefined")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    rank = math.ceil(q / 100 * len(sorted_samples))
    return sorted_samples[max(rank, 1) - 1]


def percentile(samples: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ``samples`` in any order, by nearest rank."""
    return nearest_rank(sorted(samples), q)


@dataclass(frozen=True)
class Summary:
    """Count and latency figures of one RPC in milliseconds; all zero when there are no samples."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples_ns: Sequence[int]) -> Summary:
    """Summarize latency samples given in nanoseconds."""
    if not samples_ns:
        return Summary(0, 0.0, 0.0, 0.0, 0.0)
    ordered = sorted(samples_ns)
    return Summary(
        count=len(ordered),
        p50_ms=nearest_rank(ordered, 50) / NS_PER_MS,
        p99_ms=nearest_rank(ordered, 99) / NS_PER_MS,
        max_ms=ordered[-1] / NS_PER_MS,
        mean_ms=sum(ordered) / len(ordered) / NS_PER_MS,
    )


def merge_samples(parts: Iterable[Mapping[str, Sequence[int]]]) -> dict[str, list[int]]:
    """Join per-RPC sample lists from several clients (or client processes) into one."""
    merged: dict[str, list[int]] = {}
    for part in parts:
        for rpc, samples in part.items():
            merged.setdefault(rpc, []).extend(samples)
    return merged


def rate_per_second(count: int, wall_ns: int) -> float:
    """``count`` events in ``wall_ns`` nanoseconds as events per second (0 for an empty interval)."""
    return count * 1e9 / wall_ns if wall_ns > 0 else 0.0
