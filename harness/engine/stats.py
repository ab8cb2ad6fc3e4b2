"""Statistics over kept samples: the headline estimator of a cell (`estimate`, the one estimator
the run and every judgement of it use) and its confidence interval (a hierarchical bootstrap
that resamples worker processes, then rounds within them), paired cross-backend ratios, the
marking of rounds taken under contention, and a run's noise (the machine's verdict, the noise
floor its probe puts under any comparison, the share of contended rounds), and the v1 summary
stored with every cell. Judging one run against another, or two participants of one run, is
harness.judge's. Pure Python + NumPy. docs/measurement.md says why these choices (an experiment)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

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


# ---- the headline estimator ----------------------------------------------------------------
# Noise on a shared machine only ever adds time (Chen & Revels 2016), so a low quantile of the
# clean rounds locates the undisturbed time better than the mean or median, and the minimum
# most of all: benchmarks/estimator_experiment.py found it the most stable across repeats
# (quiet and beside a CPU burner) on this project's 2-core machine, where a busy neighbour
# collapses an OpenMP pool in a quarter or more of the rounds. Its bootstrap interval is
# one-sided by nature: [the minimum, the order statistic the minimum reaches in 97.5% of
# resamples], i.e. how far the figure would rise had the luckiest rounds not happened.

ESTIMATORS: dict[str, tuple[float, str]] = {  # name -> (quantile, description)
    "min": (0.0, "minimum of the rounds"),
    "q10": (0.10, "10th percentile of the clean rounds"),
    "q25": (0.25, "25th percentile of the clean rounds (lower quartile)"),
    "median": (0.50, "median of the clean rounds"),
}
ESTIMATOR = "min"  # chosen by benchmarks/estimator_experiment.py (docs/measurement.md)
CLEAN_FACTOR = 1.5  # a round is clean when its probe ran within this factor of the run's best
COLLAPSE_FACTOR = 10.0  # a round this many times slower than typical is a collapse
MIN_CLEAN = 10  # clean rounds a cell needs before its figure is published as clean
# cores other processes of the machine kept busy during a workload (harness.engine.cpuload) at which
# its cells are not judged by compare: a quiet 2-core VM shows 0.00-0.02 beside a run; one
# single-threaded burner shows ~1.0 and slowed pinned eval cells 12-26% (docs/measurement.md)
FOREIGN_LIMIT = 0.25


def estimator_info(name: str = ESTIMATOR) -> dict[str, str]:
    return {"name": name, "description": ESTIMATORS[name][1]
            + f"; rounds are clean when the noise probe ran within {CLEAN_FACTOR}x of the run's best"
            + ("; a cell with too few clean rounds is noisy" if uses_every_round(name) else "")}


def uses_every_round(name: str) -> bool:
    """Whether the estimator `name` is taken over every round rather than the clean ones.
    The minimum is: contention only adds time, so a contended round cannot lower it, while
    the clean filter (the probe ran in another process at another moment of the round)
    dropped cells' fastest rounds. In the first quiet smoke runs, jax train's minimum over
    every round was 272, 281 and 273 us in three runs, over the clean rounds 272, 307 and 273
    (docs/measurement.md). Quantiles above the minimum do move with contention: they keep
    to the clean rounds. Either way the clean share decides whether a cell is `noisy`."""
    return ESTIMATORS.get(name, (0.5, ""))[0] == 0.0


def quantile_of(name: str) -> float:
    """The quantile an estimator name stands for (ESTIMATORS; an unknown name, e.g. a v1 file's:
    the median)."""
    return ESTIMATORS[name][0] if name in ESTIMATORS else 0.5


def estimate(x: Sequence[float] | np.ndarray, name: str = ESTIMATOR) -> float:
    """The estimator `name` over one set of samples (seconds per step); NaN without any."""
    a = np.asarray(x, np.float64)
    if a.size == 0:
        return float("nan")
    q = quantile_of(name)
    return float(a.min()) if q == 0 else float(np.quantile(a, q))


def _stat_rows(m: np.ndarray, name: str) -> np.ndarray:
    """The estimator over each row of m (reps, n)."""
    q = quantile_of(name)
    return m.min(axis=1) if q == 0 else np.quantile(m, q, axis=1)


def hierarchical_bootstrap(groups: Sequence[Sequence[float]], stat: str = ESTIMATOR, *,
                           reps: int = 1000, level: float = 0.95, seed: int = 0,
                           transform: Callable[[np.ndarray], np.ndarray] | None = None,
                           ) -> tuple[float, float]:
    """Percentile interval of `stat` over samples grouped by worker process: each replicate
    draws processes with replacement, then rounds with replacement within each drawn process.
    Between-process variance (allocation, thread placement, compile decisions) thus widens
    the interval, as it should; one process reduces to the ordinary bootstrap of rounds.
    `transform` maps a replicate's statistic (e.g. np.exp for log ratios)."""
    gs = [np.asarray(g, np.float64) for g in groups if len(g)]
    if not gs:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    P = len(gs)
    lens = {g.size for g in gs}
    if len(lens) == 1:  # equal rounds per process: vectorised
        n = lens.pop()
        data = np.stack(gs)  # (P, n)
        pick = rng.integers(0, P, (reps, P))  # (reps, P) processes
        rows = rng.integers(0, n, (reps, P, n))  # (reps, P, n) rounds within each
        m = data[pick[:, :, None], rows].reshape(reps, P * n)
        vals = _stat_rows(m, stat)
    else:
        vals = np.empty(reps)
        for i in range(reps):
            parts = [gs[j][rng.integers(0, gs[j].size, gs[j].size)] for j in rng.integers(0, P, P)]
            vals[i] = _stat_rows(np.concatenate(parts)[None, :], stat)[0]
    if transform is not None:
        vals = transform(vals)
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _by_process(samples: Sequence[dict[str, Any]], key: str = "s") -> list[list[float]]:
    out: dict[int, list[float]] = {}
    for s in samples:
        out.setdefault(int(s.get("process", 0)), []).append(float(s[key]))
    return [out[k] for k in sorted(out)]


def cell_estimate(samples: Sequence[dict[str, Any]], *, min_clean: int = MIN_CLEAN,
                  name: str = ESTIMATOR, seed: int = 0) -> dict[str, Any]:
    """Headline seconds per step for one cell from its samples ({"s", "process", "round",
    "clean"}): the estimator over the clean rounds (every round for the minimum:
    uses_every_round) with its hierarchical-bootstrap interval; with fewer than `min_clean`
    clean rounds, over every round and marked noisy."""
    clean = [s for s in samples if s.get("clean", True)]
    noisy = len(clean) < min_clean
    use = list(samples) if noisy or uses_every_round(name) else clean
    if not use:
        return {"estimate_s": None, "ci_s": None, "clean_rounds": 0, "noisy": True}
    est = estimate([s["s"] for s in use], name)
    lo, hi = hierarchical_bootstrap(_by_process(use), name, seed=seed)
    return {"estimate_s": est, "ci_s": [lo, hi], "clean_rounds": len(clean), "noisy": noisy}


def paired_ratio(a: dict[tuple[int, int], float], b: dict[tuple[int, int], float], *,
                 name: str = ESTIMATOR, reps: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float, int] | None:
    """Time ratio a/b from the rounds both ran in ((process, round) -> seconds per step): the
    estimator over a's rounds over the estimator over b's, with a hierarchical-bootstrap
    interval that resamples processes, then rounds, *as pairs*: a replicate keeps both
    backends' time of each drawn round, so the machine's state in that round weighs on both
    sides alike. None without common rounds."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    by_p: dict[int, list[tuple[float, float]]] = {}
    for k in keys:
        by_p.setdefault(k[0], []).append((float(a[k]), float(b[k])))
    pa = np.array([v[0] for k in sorted(by_p) for v in by_p[k]])
    pb = np.array([v[1] for k in sorted(by_p) for v in by_p[k]])
    ratio = estimate(pa, name) / estimate(pb, name)
    rng = np.random.default_rng(seed)
    groups = [np.asarray(by_p[k]) for k in sorted(by_p)]  # each (n_p, 2)
    P = len(groups)
    vals = np.empty(reps)
    lens = {g.shape[0] for g in groups}
    if len(lens) == 1:  # vectorised: (reps, P, n, 2)
        n = lens.pop()
        data = np.stack(groups)  # (P, n, 2)
        pick = rng.integers(0, P, (reps, P))
        rows = rng.integers(0, n, (reps, P, n))
        m = data[pick[:, :, None], rows].reshape(reps, P * n, 2)
        vals = _stat_rows(m[:, :, 0], name) / _stat_rows(m[:, :, 1], name)
    else:
        for i in range(reps):
            parts = [groups[j][rng.integers(0, groups[j].shape[0], groups[j].shape[0])]
                     for j in rng.integers(0, P, P)]
            m = np.concatenate(parts)
            vals[i] = estimate(m[:, 0], name) / estimate(m[:, 1], name)
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(ratio), float(min(lo, ratio)), float(max(hi, ratio)), len(keys)


# ---- noise -------------------------------------------------------------------------------

def mark_clean(probe_s: float | None, best_probe_s: float | None, factor: float = CLEAN_FACTOR) -> bool:
    """A round is clean when the probe in it ran within `factor` of the best probe time."""
    if probe_s is None or not best_probe_s:
        return True  # no probe: nothing says the round was disturbed (collapses still mark it)
    return probe_s <= factor * best_probe_s


def collapses(values: Sequence[float], factor: float = COLLAPSE_FACTOR) -> list[bool]:
    """Which values are collapses: more than `factor` times the series' median."""
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return []
    med = float(np.median(a))
    return [bool(v > factor * med) for v in a]


def probe_summary(probe_s: Sequence[float], flop: int) -> dict[str, Any]:
    """GFLOP/s (best) and coefficient of variation of a burst of probe rounds."""
    a = np.asarray([p for p in probe_s if p], np.float64)
    if a.size == 0:
        return {"gflops": None, "cv": None, "rounds": 0}
    return {"gflops": flop / a.min() / 1e9, "median_gflops": flop / float(np.median(a)) / 1e9,
            "cv": float(a.std(ddof=1) / a.mean()) if a.size > 1 else 0.0, "rounds": int(a.size)}


def round_spread(summaries: Sequence[dict[str, float]]) -> dict[str, Any] | None:
    """How far the cells' own rounds ran above their fastest: per cell, its median round over
    its minimum (from its `summarize` figures over every round, the result's "stats"); the
    median and 90th percentile of that over cells. The machine's swings as the backends felt
    them: on the project's 2-core VM the median cell's median round was 1.08-1.52x its fastest
    in the runs of 4 December 2026, while the GEMM probe's (busy in the FPU, it feels these
    phases at about a fifth of their size) was 1.05-1.10x its best (docs/measurement.md,
    "4 December 2026"). The headline minimum rests on the fast rounds this says are rare."""
    per = [float(s["median"] / s["min"]) for s in summaries if s.get("rounds") and s["min"] > 0]
    if not per:
        return None
    return {"median": float(np.median(per)), "q90": float(np.percentile(per, 90)), "cells": len(per)}


def noise_verdict(probe_s: Sequence[float], best_s: float | None, collapse_rounds: int,
                  factor: float = CLEAN_FACTOR) -> tuple[float, str]:
    """(contended fraction, verdict): the share of rounds whose probe was slower than `factor`
    times the best; "quiet" under 10% with no collapse, "contended" at 50% or with collapses
    in over 5% of rounds, else "noisy"."""
    a = np.asarray([p for p in probe_s if p], np.float64)
    if a.size == 0 or not best_s:
        return 0.0, "unknown"
    frac = float((a > factor * best_s).mean())
    if frac >= 0.5 or collapse_rounds > 0.05 * a.size:
        return frac, "contended"
    if frac < 0.1 and collapse_rounds == 0:
        return frac, "quiet"
    return frac, "noisy"


def noise_floor(probe_s: Sequence[float | None],
                blocks: Sequence[Sequence[float | None]] | None = None) -> float | None:
    """How far the machine's best speed moved during a run, as the probe saw it: each block's
    fastest probe round against the run's fastest (max over blocks of min_block / min_run - 1).
    A block is a workload (`blocks`, the probe rounds of each; v2 files), or, without them, a
    sixth of the run's probe rounds in order. The headline is a minimum, so what limits its
    reproducibility is how much the probe's minimum moves, not how the typical round scatters:
    on the project's 2-core machine the spread of the probe's rounds (their IQR) was 23-34%
    in quiet runs while their per-workload minima agreed within 0.3-1.5% (docs/measurement.md);
    in a run shared with a CPU-bound process one workload's minimum was 67% off. A change
    smaller than this cannot be told from the machine. None without probe rounds (v1 files)."""
    def clean(xs: Sequence[float | None]) -> np.ndarray:
        return np.asarray([p for p in xs if p is not None and p > 0], np.float64)
    a = clean(probe_s)
    if a.size < 4:
        return None
    parts = [clean(b) for b in blocks] if blocks else list(np.array_split(a, 6))
    mins = [float(b.min()) for b in parts if b.size]
    return float(max(mins) / a.min() - 1) if mins else None



def contended_share(probe_s: Sequence[float | None], factor: float = CLEAN_FACTOR) -> float | None:
    """Share of probe rounds slower than `factor` x the run's best (None without probes)."""
    a = np.asarray([p for p in probe_s if p is not None and p > 0], np.float64)
    if a.size == 0:
        return None
    return float(np.mean(a > factor * a.min()))
