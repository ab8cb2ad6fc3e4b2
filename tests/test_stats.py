"""The statistics behind `lstmbench run`'s figures (harness.engine.stats), on synthetic data with known
noise: interval coverage of the headline estimator (with and without worker-process
structure), paired ratios, marking of contended rounds, collapses and the noise verdict."""
from __future__ import annotations

import numpy as np
import pytest

from harness.engine import stats


def _coverage(P: int, n: int, sp: float, *, naive: bool = False, experiments: int = 200) -> float:
    """Share of `experiments` whose 95% interval for the q25 estimator covers the truth.
    Data: per-step time 1 ms x exp(process effect ~ N(0, sp)) x (1 + Exp(0.2)) noise that only
    adds time, P processes of n rounds. Truth: the q25 of that distribution (Monte Carlo)."""
    rng = np.random.default_rng(123)
    big = np.exp(rng.normal(0, sp, 400_000)) * (1 + rng.exponential(0.2, 400_000))
    truth = float(np.quantile(big, 0.25))
    hits = 0
    for e in range(experiments):
        groups = [list(np.exp(rng.normal(0, sp)) * (1 + rng.exponential(0.2, n))) for _ in range(P)]
        if naive:  # pretend every round came from one process
            groups = [sum(groups, [])]
        lo, hi = stats.hierarchical_bootstrap(groups, "q25", reps=300, seed=e)
        hits += lo <= truth <= hi
    return hits / experiments


def test_interval_coverage_one_process():
    assert 0.90 <= _coverage(1, 40, 0.0) <= 0.99


def test_interval_coverage_respects_process_structure():
    # between-process variance is real: resampling processes covers it, pooling does not
    assert 0.90 <= _coverage(8, 20, 0.05) <= 0.99
    assert _coverage(8, 20, 0.05, naive=True) < 0.85


def test_paired_ratio_interval_coverage():
    # b takes 2x a's time; both see the same per-round machine slowdown plus their own 5% noise
    hits = 0
    for e in range(200):
        rng = np.random.default_rng(1000 + e)
        slow = np.exp(rng.exponential(0.3, 30))
        a = {(0, i): 1e-3 * slow[i] * np.exp(rng.normal(0, 0.05)) for i in range(30)}
        b = {(0, i): 2e-3 * slow[i] * np.exp(rng.normal(0, 0.05)) for i in range(30)}
        _, lo, hi, _ = stats.paired_ratio(b, a, name="median", seed=e, reps=400)
        hits += lo <= 2.0 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_min_interval_is_one_sided():
    x = list(1 + 0.01 * np.arange(30))  # 30 distinct rounds, 1.00 .. 1.29
    lo, hi = stats.hierarchical_bootstrap([x], "min")
    assert lo == 1.0 and 1.01 < hi <= 1.06  # about the 4th smallest of 30


def test_estimators():
    x = [5.0, 1.0, 2.0, 3.0, 4.0]
    assert stats.estimate(x, "min") == 1.0
    assert stats.estimate(x, "median") == 3.0
    assert stats.estimate(x, "q25") == 2.0
    assert stats.ESTIMATOR in stats.ESTIMATORS
    assert stats.estimator_info()["name"] == stats.ESTIMATOR


def test_cell_estimate_uses_clean_rounds_and_marks_noisy():
    rng = np.random.default_rng(0)
    samples = [{"s": 1e-3 * (1 + 0.01 * rng.random()), "process": i % 2, "round": i, "clean": True}
               for i in range(20)]
    samples += [{"s": 5e-3, "process": 0, "round": 20 + i, "clean": False} for i in range(20)]
    r = stats.cell_estimate(samples, min_clean=10)
    assert not r["noisy"] and r["clean_rounds"] == 20
    assert 1e-3 <= r["estimate_s"] <= 1.01e-3  # the dirty 5 ms rounds are left out
    assert r["ci_s"][0] <= r["estimate_s"] <= r["ci_s"][1] < 1.02e-3
    r = stats.cell_estimate(samples, min_clean=25)
    assert r["noisy"] and r["clean_rounds"] == 20  # too few clean: every round, marked noisy


def test_paired_ratio_cancels_shared_noise():
    # both backends suffer the same per-round slowdown (up to 3x): pairing removes it
    rng = np.random.default_rng(1)
    slow = 1 + 2 * rng.random(60)
    a = {(0, i): 2e-3 * slow[i] * (1 + 0.01 * rng.standard_normal()) for i in range(60)}
    b = {(0, i): 1e-3 * slow[i] * (1 + 0.01 * rng.standard_normal()) for i in range(60)}
    ratio, lo, hi, n = stats.paired_ratio(a, b)  # the headline estimator's ratio
    assert n == 60 and lo <= 2.0 <= hi and hi - lo < 0.15
    assert ratio == pytest.approx(2.0, rel=0.03)
    ratio, lo, hi, n = stats.paired_ratio(a, b, name="median")
    assert lo <= 2.0 <= hi and ratio == pytest.approx(2.0, rel=0.02)
    assert stats.paired_ratio({(0, 1): 1.0}, {(0, 2): 1.0}) is None


def test_contended_series_is_flagged():
    best = 1e-3
    quiet = [best * (1 + 0.05 * i / 40) for i in range(40)]
    assert stats.noise_verdict(quiet, best, 0) == (0.0, "quiet")
    contended = [best] * 16 + [3 * best] * 24  # 60% of rounds 3x slower than the best
    frac, verdict = stats.noise_verdict(contended, best, 0)
    assert frac == pytest.approx(0.6) and verdict == "contended"
    some = [best] * 34 + [2 * best] * 6
    assert stats.noise_verdict(some, best, 0)[1] == "noisy"
    assert stats.noise_verdict(quiet, best, 10)[1] == "contended"  # collapses alone suffice


def test_clean_marks_and_collapses():
    assert stats.mark_clean(1.4e-3, 1e-3) and not stats.mark_clean(1.6e-3, 1e-3)
    assert stats.mark_clean(None, 1e-3)  # no probe: nothing says the round was disturbed
    series = [1.0] * 20 + [1000.0]  # torch's OpenMP collapse beside a busy neighbour
    assert stats.collapses(series) == [False] * 20 + [True]


def test_probe_summary():
    s = stats.probe_summary([2e-3, 1e-3, 4e-3], flop=2 * 256 ** 3)
    assert s["gflops"] == pytest.approx(2 * 256 ** 3 / 1e-3 / 1e9) and s["rounds"] == 3
    assert stats.probe_summary([], 1)["gflops"] is None


def test_minimum_uses_every_round_other_quantiles_the_clean_ones():
    """An unclean round (the probe ran slow then) that holds the cell's fastest time still
    counts for the minimum: contention cannot make a round faster. q25 keeps to clean ones."""
    clean = [{"s": 2e-3 + 1e-5 * i, "process": 0, "round": i, "clean": True} for i in range(12)]
    fast_dirty = [{"s": 1.5e-3, "process": 0, "round": 12, "clean": False}]
    slow_dirty = [{"s": 9e-3, "process": 0, "round": 13 + i, "clean": False} for i in range(12)]
    samples = clean + fast_dirty + slow_dirty
    assert stats.uses_every_round("min") and not stats.uses_every_round("q25")
    r = stats.cell_estimate(samples, min_clean=10, name="min")
    assert r["estimate_s"] == 1.5e-3 and not r["noisy"] and r["clean_rounds"] == 12
    r = stats.cell_estimate(samples, min_clean=10, name="q25")
    assert 2e-3 <= r["estimate_s"] < 2.1e-3  # the 9 ms dirty rounds would pull q25 up to ~9 ms
    r = stats.cell_estimate(samples, min_clean=13, name="min")
    assert r["noisy"]  # the clean share still decides `noisy`


def test_round_spread_is_the_cells_median_round_over_their_fastest():
    # three cells: steady (1.0x), median round twice its fastest (2.0x), and 1.5x
    cells = [[1e-3] * 9, [1e-3, 2e-3, 2e-3, 3e-3, 5e-3], [2e-3, 3e-3, 3e-3, 9e-3]]
    s = stats.round_spread([stats.summarize(c) for c in cells + [[]]])  # no rounds: left out
    assert s["cells"] == 3 and s["median"] == pytest.approx(1.5)
    assert s["q90"] == pytest.approx(np.percentile([1.0, 2.0, 1.5], 90))
    assert stats.round_spread([stats.summarize([]), {}]) is None
