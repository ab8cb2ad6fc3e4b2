"""The statistics of `lstmbench compare`: a ratio of headline estimates between two sides with
an interval from a hierarchical bootstrap (runs, then worker processes within a run, then
rounds within a process), and the noise floor a run's probe rounds put under any verdict.

Why a hierarchy: rounds of one process are not independent draws of "the code's speed".
Allocation, thread placement and compile decisions differ between processes, and the
machine's state differs between runs, so resampling rounds alone gives intervals far too
narrow (the old compare flagged 8 of 21 cells between two runs of identical code). Resampling
the upper levels first makes their variance show up in the interval whenever a side has more
than one of them. With one run per side, between-run variance cannot be estimated from the
data: the probes' noise floor stands in for it (compare requires a change beyond it).

Pure NumPy. The estimator is the run's own (harness.engine.stats.estimate: one estimator for
the run and its judgement), the t quantiles harness.judge.tdist's; the probe's noise floor, a
figure of one run, is harness.engine.stats.noise_floor."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..engine.stats import estimate, quantile_of
from .tdist import t_quantile

# One side of a comparison: runs -> processes -> rounds (seconds per step, or probe-normalised)
Side = Sequence[Sequence[np.ndarray]]


def pooled(side: Side) -> np.ndarray:
    parts = [np.asarray(g, np.float64) for run in side for g in run if len(g)]
    return np.concatenate(parts) if parts else np.empty(0)


def replicates(side: Side, name: str, *, reps: int = 1000,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Bootstrap replicates (reps,) of the estimator over one side: draw runs with replacement,
    then each drawn run's processes with replacement, then rounds within each drawn process.
    Vectorised over replicates with NaN padding where runs have fewer processes or processes
    fewer rounds than the largest."""
    rng = rng or np.random.default_rng(0)
    runs = [[np.asarray(g, np.float64) for g in run if len(g)] for run in side]
    runs = [r for r in runs if r]
    if not runs:
        return np.full(reps, np.nan)
    groups = [g for r in runs for g in r]
    n_proc = np.array([len(r) for r in runs])  # (R,)
    offset = np.concatenate([[0], np.cumsum(n_proc)[:-1]])  # (R,) first group of each run
    lens = np.array([g.size for g in groups])  # (G,)
    L, P, R = int(lens.max()), int(n_proc.max()), len(runs)
    data = np.full((len(groups), L), np.nan)  # (G, L)
    for i, g in enumerate(groups):
        data[i, :g.size] = g
    run_pick = rng.integers(0, R, (reps, R))  # (reps, R)
    proc_in = np.floor(rng.random((reps, R, P)) * n_proc[run_pick][:, :, None]).astype(int)  # (reps, R, P)
    proc_ok = np.arange(P)[None, None, :] < n_proc[run_pick][:, :, None]  # (reps, R, P)
    grp = offset[run_pick][:, :, None] + proc_in  # (reps, R, P) global process index
    n_rounds = lens[grp]  # (reps, R, P)
    rnd = np.floor(rng.random((reps, R, P, L)) * n_rounds[..., None]).astype(int)  # (reps, R, P, L)
    ok = proc_ok[..., None] & (np.arange(L)[None, None, None, :] < n_rounds[..., None])
    vals = np.where(ok, data[grp[..., None], rnd], np.nan).reshape(reps, -1)  # (reps, R*P*L)
    q = quantile_of(name)
    return np.nanmin(vals, axis=1) if q == 0 else np.nanquantile(vals, q, axis=1)


def unit_logs(side: Side, name: str) -> np.ndarray:
    """Log of each unit's own estimate (a unit: one process of one run)."""
    return np.asarray([np.log(estimate(g, name)) for run in side for g in run if len(g)])


def unit_spread(old: Side, new: Side, name: str) -> tuple[float, int]:
    """(sum of squared deviations of unit log-estimates from their side's mean, degrees of
    freedom) of one cell: its between-unit variance, to be pooled over cells."""
    ss, df = 0.0, 0
    for side in (old, new):
        a = unit_logs(side, name)
        if a.size > 1:
            ss += float(((a - a.mean()) ** 2).sum())
            df += a.size - 1
    return ss, df


def unit_interval(old: Side, new: Side, name: str, ratio: float,
                  pooled_var: tuple[float, int] | None = None,
                  level: float = 0.95) -> tuple[float, float] | None:
    """The ratio's 95% interval from the spread between units (every process of every run),
    centred on `ratio`: a t interval with the between-unit variance of this cell, or the
    variance pooled over every cell of the comparison (`pooled_var`: variance, df) when that
    is larger, with the pooled degrees of freedom. The bootstrap over two or three processes
    cannot see how far a fourth would land; this can. None without two units on a side."""
    na, nb = unit_logs(old, name).size, unit_logs(new, name).size
    ss, df = unit_spread(old, new, name)
    if na == 0 or nb == 0:
        return None
    var = ss / df if df else 0.0
    if pooled_var is not None and pooled_var[1] > 0:
        var, df = max(var, pooled_var[0]), max(df, pooled_var[1])
    if df < 1:
        return None
    if quantile_of(name) < 0.5:  # a low quantile of pooled units follows the luckiest unit:
        na = nb = 1  # it varies about as much as one unit does, not as a mean of them would
    half = t_quantile(df, level) * np.sqrt(var * (1 / na + 1 / nb))
    return float(ratio * np.exp(-half)), float(ratio * np.exp(half))


def ratio_interval(old: Side, new: Side, name: str, *, reps: int = 1000, level: float = 0.95,
                   seed: int = 0, pooled_var: tuple[float, int] | None = None,
                   ) -> tuple[float, float, float, float]:
    """(ratio new/old of the estimates, lo, hi, two-sided bootstrap p of "no change").
    Time ratio: > 1 is slower. The sides are resampled independently; the interval is the
    hull of the bootstrap's and unit_interval's, the more cautious of the two."""
    rng = np.random.default_rng(seed)
    ratio = estimate(pooled(new), name) / estimate(pooled(old), name)
    r = replicates(new, name, reps=reps, rng=rng) / replicates(old, name, reps=reps, rng=rng)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return ratio, float("nan"), float("nan"), 1.0
    lo, hi = np.percentile(r, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    p = min(1.0, 2 * min(float(np.mean(r <= 1)), float(np.mean(r >= 1))))
    units = unit_interval(old, new, name, ratio, pooled_var, level)
    if units is not None:
        lo, hi = min(lo, units[0]), max(hi, units[1])
    return float(ratio), float(lo), float(hi), p


MIN_CELLS_FOR_SPREAD = 8  # cells both sides measured before their spread is estimated


def between_run_spread(log_ratios: Sequence[float]) -> float | None:
    """How far a cell's figure moves between the two sides beyond any shift all cells share:
    the robust standard deviation (1.4826 x median absolute deviation) of the cells' log
    ratios about their median. With one worker process per run, nothing inside a run shows
    this between-run variance (a machine state that lasts a whole workload moves every round
    of it); across the cells of a comparison it shows, as long as most cells did not change,
    and a change every cell shares (the machine, or the code everywhere) leaves it alone.
    On the project's machine: about 2% between two quiet smoke runs, 7% between two runs
    an hour later when its neighbours were busier (docs/measurement.md). None with fewer
    than MIN_CELLS_FOR_SPREAD cells."""
    a = np.asarray([x for x in log_ratios if np.isfinite(x)], np.float64)
    if a.size < MIN_CELLS_FOR_SPREAD:
        return None
    return float(1.4826 * np.median(np.abs(a - np.median(a))))
