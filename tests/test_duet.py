"""The in-run comparison's statistics (harness.judge.duet) on synthetic paired data with a known ratio:
host phases shared round by round, a between-process effect per worker, and round noise.
What must hold: the 95% interval covers the true ratio, identical variants come out
`unchanged` and never `faster`/`slower`, a known slowdown comes out `slower` at its size, and
a cell with too few rounds or a failed side is not judged."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.judge import duet


def simulate(rng: np.random.Generator, ratio: float, *, processes: int = 3, rounds: int = 40,
             tau: float = 0.03, phase: float = 0.3, noise: float = 0.03) -> duet.Paired:
    """One cell: base and new each run `processes` workers of `rounds` paired rounds. Each
    worker has its own log-normal effect (SD `tau`), each round a host phase both sides share
    (SD `phase`, the 1.3-2x swings seen on the project's VM), each sample its own noise."""
    pairs = {}
    for p in range(processes):
        host = np.exp(rng.normal(0, phase, rounds))  # (rounds,) shared by the two sides
        eb, en = np.exp(rng.normal(0, tau, 2))  # this process's effect on each side
        b = 1e-3 * eb * host * np.exp(rng.normal(0, noise, rounds))
        n = ratio * 1e-3 * en * host * np.exp(rng.normal(0, noise, rounds))
        pairs[p] = np.stack([b, n], axis=1)
    return duet.paired(pairs, seed=int(rng.integers(1 << 30)), reps=300)


def run_of(rng: np.random.Generator, ratios: list[float], **kw) -> list[duet.Judged]:
    """A run's cells (one ratio each), judged with the between-process variance pooled over them."""
    cells = [simulate(rng, r, **kw) for r in ratios]
    pool = duet.Pool.of(cells)
    return [duet.judge(c, pool) for c in cells]


def test_pairing_keeps_only_rounds_both_ran():
    base = [{"s": 1.0, "process": 0, "round": r} for r in range(5)]
    new = [{"s": 2.0, "process": 0, "round": r} for r in (1, 3, 9)]
    new += [{"s": 3.0, "process": 1, "round": 0}]
    pr = duet.pair_rounds(base, new)
    assert list(pr) == [0] and pr[0].tolist() == [[1.0, 2.0], [1.0, 2.0]]


def test_centre_cancels_a_shared_phase():
    """A host phase that moves both sides alike leaves the paired centre alone; the ratio of
    minima sees only the two fastest rounds."""
    host = np.array([1.0, 1.5, 3.0, 1.2, 2.0])
    pairs = np.stack([host, 1.25 * host], axis=1)
    assert duet.centre(pairs) == pytest.approx(math.log(1.25))
    assert duet.centre(pairs, "min") == pytest.approx(math.log(1.25))


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_interval_covers_the_true_ratio(processes):
    rng = np.random.default_rng(processes)
    truth = np.exp(rng.uniform(-0.3, 0.3, 180))  # 20 runs of 9 cells
    judged = [j for k in range(20) for j in run_of(rng, list(truth[9 * k: 9 * k + 9]), processes=processes)]
    cover = np.mean([j.lo <= t <= j.hi for j, t in zip(judged, truth)])
    cover90 = np.mean([j.eq_lo <= t <= j.eq_hi for j, t in zip(judged, truth)])
    assert cover >= 0.92, cover  # nominal 95%
    assert cover90 >= 0.86, cover90  # nominal 90%
    assert all(j.lo <= j.eq_lo <= j.ratio <= j.eq_hi <= j.hi for j in judged)


def test_identical_variants_are_unchanged_and_never_marked():
    rng = np.random.default_rng(7)
    judged = [j for _ in range(20) for j in run_of(rng, [1.0] * 9)]
    marks = [j.mark for j in judged]
    assert marks.count("faster") + marks.count("slower") == 0
    assert marks.count("unchanged") / len(marks) >= 0.9, marks


def test_a_known_slowdown_is_slower_at_its_size():
    rng = np.random.default_rng(11)
    for j in run_of(rng, [1.2] * 9):
        assert j.mark == "slower" and j.regression, j
        assert abs(j.ratio / 1.2 - 1) < 0.05, j.ratio


def test_a_larger_between_process_effect_widens_the_interval():
    """tau is estimated from the run: a run whose workers differ more gets wider intervals."""
    rng = np.random.default_rng(5)
    quiet = run_of(rng, [1.0] * 9, tau=0.005)
    loud = run_of(rng, [1.0] * 9, tau=0.08)
    width = lambda js: np.median([math.log(j.hi / j.lo) for j in js])  # noqa: E731
    assert width(loud) > 2 * width(quiet)
    assert all(not j.tau_assumed for j in quiet + loud)


def test_one_process_assumes_the_measured_spread():
    rng = np.random.default_rng(3)
    judged = run_of(rng, [1.0] * 9, processes=1, tau=0.0)
    assert all(j.tau_assumed and j.tau == pytest.approx(duet.TAU_ONE_PROCESS) for j in judged)
    # the interval is at least as wide as the assumed between-process spread makes it
    assert all(math.log(j.hi / j.lo) >= 2 * 1.96 * duet.TAU_ONE_PROCESS * 0.99 for j in judged)


def test_too_few_pairs_and_failures_are_not_judged():
    rng = np.random.default_rng(1)
    few = simulate(rng, 1.5, processes=1, rounds=3)
    assert duet.judge(few, duet.Pool(None, 0)).mark == "inconclusive"
    assert duet.judge(None, duet.Pool(None, 0)).reason == "no paired rounds"
    f = duet.failed({"status": "ok"}, {"status": "timeout", "error": "no answer within 30 s"})
    assert f.mark == "failed" and f.regression and "timeout" in f.reason
    f = duet.failed({"status": "crash"}, {"status": "ok"})
    assert f.mark == "failed" and not f.regression
    assert duet.failed({"status": "ok"}, {"status": "ok"}) is None
