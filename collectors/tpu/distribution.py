"""Percentiles from a libtpu ``Distribution``'s buckets: pure functions over counts and bounds.

Bucket 0 is the underflow bucket and the last one the overflow bucket, as in Google's
monitoring ``Distribution``; a quantile is interpolated linearly inside the bucket it falls in
(the overflow bucket answers its lower bound). Cumulative distributions (``megascale.*``) are
read as the difference of two scrapes, so a percentile describes the last interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Buckets:
    """Bucket lower bounds (``bounds[i]`` is where bucket ``i + 1`` starts) and counts."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def minus(self, earlier: Buckets) -> Buckets | None:
        """The observations made since ``earlier``; None if the buckets changed or reset."""
        if earlier.bounds != self.bounds or len(earlier.counts) != len(self.counts):
            return None
        delta = tuple(a - b for a, b in zip(self.counts, earlier.counts))
        if any(d < 0 for d in delta):
            return None
        return Buckets(self.bounds, delta)


def bounds_of(options: object, n_buckets: int) -> tuple[float, ...] | None:
    """The finite bucket boundaries of a ``BucketOptions`` message, or None if unknown."""
    which = options.WhichOneof("options")  # type: ignore[attr-defined]
    if which == "exponential_buckets":
        e = options.exponential_buckets  # type: ignore[attr-defined]
        if e.scale <= 0 or e.growth_factor <= 1:
            return None
        n = e.num_finite_buckets or max(0, n_buckets - 2)
        return tuple(e.scale * e.growth_factor**i for i in range(n + 1))
    if which == "linear_buckets":
        lin = options.linear_buckets  # type: ignore[attr-defined]
        if lin.width <= 0:
            return None
        n = lin.num_finite_buckets or max(0, n_buckets - 2)
        return tuple(lin.offset + lin.width * i for i in range(n + 1))
    if which == "explicit_buckets":
        bounds = tuple(options.explicit_buckets.bounds)  # type: ignore[attr-defined]
        if list(bounds) != sorted(bounds):
            return None
        return bounds
    return None


def quantile(b: Buckets, q: float) -> float | None:
    """The ``q`` quantile (0..1) of the observations in ``b``; None when there are none."""
    total = b.total
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    bounds = b.bounds
    for i, count in enumerate(b.counts):
        if count <= 0:
            continue
        if seen + count >= rank:
            lower = 0.0 if i == 0 else bounds[min(i - 1, len(bounds) - 1)]
            if i == 0:
                upper = bounds[0] if bounds else 0.0
            elif i - 1 >= len(bounds) - 1:
                return lower  # overflow bucket: no upper bound
            else:
                upper = bounds[i]
            return lower + (upper - lower) * max(0.0, rank - seen) / count
        seen += count
    return bounds[-1] if bounds else None


def quantiles(b: Buckets, qs: Sequence[float]) -> list[float | None]:
    """Several quantiles (ascending ``qs``) in one pass over the buckets."""
    total = b.total
    if total <= 0:
        return [None] * len(qs)
    out: list[float | None] = []
    bounds, last = b.bounds, len(b.bounds) - 1
    seen = 0
    qi = 0
    for i, count in enumerate(b.counts):
        if count <= 0:
            continue
        while qi < len(qs) and seen + count >= qs[qi] * total:
            rank = qs[qi] * total
            if i == 0:
                lower, upper = 0.0, bounds[0] if bounds else 0.0
            elif i - 1 >= last:
                out.append(bounds[last])  # overflow bucket: its lower bound
                qi += 1
                continue
            else:
                lower, upper = bounds[i - 1], bounds[i]
            out.append(lower + (upper - lower) * max(0.0, rank - seen) / count)
            qi += 1
        seen += count
    out += [bounds[-1] if bounds else None] * (len(qs) - len(out))
    return out


def from_samples(values: Sequence[float], bounds: Sequence[float]) -> tuple[int, ...]:
    """Bucket counts of ``values`` (underflow, finite buckets, overflow): for simulators and tests."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[_bucket(v, bounds)] += 1
    return tuple(counts)


def _bucket(value: float, bounds: Sequence[float]) -> int:
    if math.isnan(value):
        return 0
    lo, hi = 0, len(bounds)
    while lo < hi:  # first bound > value
        mid = (lo + hi) // 2
        if bounds[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo
