"""Statistics over kept samples: the summary stored with every cell, and the significance
test `lstmbench compare` uses. Pure Python + NumPy."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """median, IQR, min, max, mean, stddev and rounds of per-step seconds."""
    a = np.asarray(samples, np.float64)
    if a.size == 0:
        return {"rounds": 0}
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return {"median": float(q50), "iqr": float(q75 - q25), "min": float(a.min()),
            "max": float(a.max()), "mean": float(a.mean()),
            "stddev": float(a.std(ddof=1)) if a.size > 1 else 0.0, "rounds": int(a.size)}


def bootstrap_ratio(old: Sequence[float], new: Sequence[float], *, reps: int = 2000,
                    level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Ratio of medians new/old (time: > 1 is slower) and its bootstrap confidence interval."""
    a, b = np.asarray(old, np.float64), np.asarray(new, np.float64)
    ratio = float(np.median(b) / np.median(a))
    rng = np.random.default_rng(seed)
    ra = np.median(rng.choice(a, (reps, a.size)), axis=1)
    rb = np.median(rng.choice(b, (reps, b.size)), axis=1)
    r = rb / ra
    lo, hi = np.percentile(r, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return ratio, float(lo), float(hi)


def mann_whitney_p(old: Sequence[float], new: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U test p-value (normal approximation with tie correction)."""
    a, b = np.asarray(old, np.float64), np.asarray(new, np.float64)
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return 1.0
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(allv.size)
    sorted_v = allv[order]
    i = 0
    while i < allv.size:  # average ranks over ties
        j = i
        while j + 1 < allv.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    _, counts = np.unique(allv, return_counts=True)
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - (counts ** 3 - counts).sum() / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - n1 * n2 / 2) / np.sqrt(var)
    from math import erfc, sqrt
    return float(erfc(abs(z) / sqrt(2)))
