"""Change points in a rank's own series: when did it start running at another speed?

Binary segmentation on each rank's step time relative to its peers (``RankWindows.rel``): the
split of a segment that maximises the two-sample t statistic of the means on either side is a
change point when the statistic and the step are both large enough; then each side is split
again. Each candidate split is scored at once from cumulative sums, so the cost is a few NumPy
passes per segment, never a loop over windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Levels of splitting: up to 2**MAX_DEPTH - 1 changes per rank.
MAX_DEPTH = 3


@dataclass(frozen=True)
class SpeedChange:
    """Rank ``row`` ran at ``before`` x its peers' level up to window ``first``, then at
    ``after`` x until window ``last`` (inclusive; window indices of the matrix)."""

    row: int
    first: int
    last: int
    before: float
    after: float
    t_stat: float

    @property
    def ratio(self) -> float:
        """How many times its own earlier step time the rank now takes."""
        return self.after / self.before


def best_split(y: np.ndarray, min_len: int) -> tuple[int, float]:
    """(index where the second segment starts, t statistic) of the best split of ``y``."""
    n = len(y)
    if n < 2 * min_len:
        return -1, 0.0
    c1 = np.concatenate([[0.0], np.cumsum(y)])
    c2 = np.concatenate([[0.0], np.cumsum(y * y)])
    k = np.arange(min_len, n - min_len + 1)
    n1, n2 = k.astype(float), (n - k).astype(float)
    m1, m2 = c1[k] / n1, (c1[n] - c1[k]) / n2
    ss = (c2[k] - n1 * m1**2) + ((c2[n] - c2[k]) - n2 * m2**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.maximum(ss, 0.0) / max(n - 2, 1))
        t = np.abs(m2 - m1) / (sd * np.sqrt(1 / n1 + 1 / n2))
    t = np.where(np.isfinite(t), t, np.where(np.abs(m2 - m1) > 1e-12, np.inf, 0.0))
    i = int(np.argmax(t))
    return int(k[i]), float(t[i])


def t_stat(a: np.ndarray, b: np.ndarray) -> float:
    """The pooled two-sample t statistic of ``a`` and ``b``'s means."""
    n1, n2 = len(a), len(b)
    ss = float(np.sum((a - a.mean()) ** 2) + np.sum((b - b.mean()) ** 2))
    diff = abs(float(b.mean() - a.mean()))
    sd = np.sqrt(ss / max(n1 + n2 - 2, 1))
    if sd == 0:
        return float("inf") if diff > 1e-12 else 0.0
    return diff / (sd * np.sqrt(1 / n1 + 1 / n2))


def change_points(y: np.ndarray, *, min_len: int, min_change: float, min_t: float) -> list[int]:
    """Sorted indices where a new segment of ``y`` starts."""
    found: list[int] = []
    todo = [(0, len(y), 0)]
    while todo:
        lo, hi, depth = todo.pop()
        if depth >= MAX_DEPTH:
            continue
        k, t = best_split(y[lo:hi], min_len)
        if k < 0 or t < min_t:
            continue
        before, after = np.median(y[lo : lo + k]), np.median(y[lo + k : hi])
        if before <= 0 or abs(after / before - 1) < min_change:
            continue
        found.append(lo + k)
        todo += [(lo, lo + k, depth + 1), (lo + k, hi, depth + 1)]
    return sorted(found)


def speed_changes(
    rel: np.ndarray, *, min_len: int, min_change: float, min_t: float
) -> list[SpeedChange]:
    """Every rank's speed changes (a loop over ranks and segments, vectorised within)."""
    out = []
    for row in range(rel.shape[0]):
        cols = np.flatnonzero(np.isfinite(rel[row]))
        y = rel[row, cols]
        cuts = change_points(y, min_len=min_len, min_change=min_change, min_t=min_t)
        bounds = [0, *cuts, len(y)]
        for i, cut in enumerate(cuts):
            prev, seg = y[bounds[i] : cut], y[cut : bounds[i + 2]]
            before, after = float(np.median(prev)), float(np.median(seg))
            if abs(after / before - 1) < min_change:
                continue  # the split was kept for a neighbour's sake; this side barely moved
            t = t_stat(prev, seg)
            out.append(
                SpeedChange(row, int(cols[cut]), int(cols[bounds[i + 2] - 1]), before, after, t)
            )
    return out
