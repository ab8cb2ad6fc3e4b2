"""The distribution quantiles every judgement takes, in one table each: Student t (two-sided
95% and 90% intervals, by degrees of freedom), the normal quantiles where the degrees of
freedom are unknown or large, and the chi-square ratios duet's per-cell variance test uses.
Standard values (any statistics table); looked up at the tabulated df at or above the one
asked for, so a df between two rows takes the smaller quantile of the next one up."""
from __future__ import annotations

import math

LEVELS = (0.95, 0.90)  # the two-sided levels the judgements use: a change, and no change (TOST)
Z = {0.95: 1.96, 0.90: 1.645}  # normal quantiles of those levels

_T = {  # df -> (two-sided 95%, two-sided 90%): the 97.5% and 95% quantiles of Student t
    1: (12.71, 6.31), 2: (4.30, 2.92), 3: (3.18, 2.35), 4: (2.78, 2.13), 5: (2.57, 2.02),
    6: (2.45, 1.94), 7: (2.36, 1.89), 8: (2.31, 1.86), 9: (2.26, 1.83), 10: (2.23, 1.81),
    12: (2.18, 1.78), 15: (2.13, 1.75), 20: (2.09, 1.72), 30: (2.04, 1.70), 60: (2.00, 1.67)}

# 99th percentile of chi-square(k) / k, k = 1..9: how far k+1 samples' variance may exceed a
# known variance before it is taken to differ (a one-sided test at 1%)
_CHI2_99 = {1: 6.63, 2: 4.61, 3: 3.78, 4: 3.32, 5: 3.02, 6: 2.80, 7: 2.64, 8: 2.51, 9: 2.41}


def t_quantile(df: float | None, level: float) -> float:
    """Two-sided Student t quantile for a `level` interval (0.95 or 0.90) with `df` degrees of
    freedom; the normal quantile without df (None, infinite) or beyond the table."""
    i = LEVELS.index(level)
    if df is None or not math.isfinite(df):
        return Z[level]
    return next((v[i] for k, v in sorted(_T.items()) if df <= k), Z[level])


def chi2_ratio_99(k: int) -> float:
    """The 99th percentile of chi-square(k) / k (k beyond the table: its last row)."""
    return _CHI2_99[min(max(1, k), max(_CHI2_99))]
