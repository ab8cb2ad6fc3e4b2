"""In-run comparison: two participants of one run judged against each other from their paired
rounds (duet benchmarking, Bulej et al. 2020; randomized multiple interleaved trials, Abedi
and Brecht 2017). `compare RESULTS --variants BASE,NEW` (a backend in two variants),
`lstmbench ab` and `lstmbench baselines` (a backend against its hand-written step) all judge
here, with one statistic and one set of marks.

Both participants ran in every round of the same randomized rotation, a few milliseconds
apart, so a phase of the host that slows one slows the other: their per-round time ratio
cancels it. What it does not cancel is the worker process: each participant's process has its
own allocation, placement and compile decisions, and two processes of identical code differ
(docs/measurement.md, "Duet measurement"). So the statistic is built from processes up:

- per process p, the centre c_p of the log time ratios new/base of its paired rounds
  (CENTRE: the median of the per-round log ratios; or "min", the ratio of the two minima);
- the estimate is the mean of c_p over processes (ratio = exp(mean));
- its variance is max(tau^2 + w, kappa w) / P, with w the within-process variance of one c_p
  (a paired bootstrap over the rounds of each process), tau^2 the between-process variance
  and kappa the factor by which the processes scatter beyond w (contention in bursts longer
  than a round makes rounds of one process alike), both pooled over every cell of the
  comparison (Pool); where a cell's
  own scatter of c_p is significantly larger (a chi-square test at 1%), that is used instead,
  with its own degrees of freedom;
- with one process per side, tau^2 cannot be seen in the run: TAU_ONE_PROCESS, measured on
  this project's machine, stands in for it, and the output says so.

Marks at --threshold t (default 10%), by the one rule of harness.judge.marks: `slower` when the
95% interval lies above 1 and the ratio beyond 1+t; `faster` likewise below; `unchanged` when
the 90% interval lies within [1/(1+t), 1+t] (two one-sided 5% tests, as cross-run compare);
`inconclusive` otherwise (too few paired rounds first), with the reason; `failed` where a side
did not measure (a regression when the base measured and the new did not)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .marks import THRESHOLD, mark, pct, too_wide
from .tdist import chi2_ratio_99, t_quantile

CENTRE = "median"  # per-process centre of the paired log ratios: "median" | "min"
MIN_PAIRS = 8  # paired rounds a cell needs, over all processes, before it is judged
# Between-process standard deviation of a per-process log ratio, for runs with one process per
# side (nothing in the run shows it). Measured on the project's 2-core VM (docs/measurement.md,
# "Duet measurement"): pooled over the cells of seven runs with 2-4 processes per variant,
# 0-4.1%, median 1.8%.
TAU_ONE_PROCESS = 0.02
REPS = 1000  # bootstrap replicates


Pairs = dict[int, np.ndarray]  # process -> (n, 2) seconds per step of (base, new), paired rounds


def pair_rounds(base: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]) -> Pairs:
    """The rounds both ran, by process: each (process, round) the two samples share."""
    b = {(int(s["process"]), int(s["round"])): float(s["s"]) for s in base}
    out: dict[int, list[tuple[float, float]]] = {}
    for s in new:
        k = (int(s["process"]), int(s["round"]))
        if k in b and b[k] > 0 and float(s["s"]) > 0:
            out.setdefault(k[0], []).append((b[k], float(s["s"])))
    return {p: np.asarray(v) for p, v in sorted(out.items())}


def centre(pairs: np.ndarray, how: str = CENTRE) -> float:
    """c_p: the log ratio new/base of one process's paired rounds (n, 2)."""
    if how == "min":
        return float(np.log(pairs[:, 1].min()) - np.log(pairs[:, 0].min()))
    return float(np.median(np.log(pairs[:, 1]) - np.log(pairs[:, 0])))


def _centres_boot(pairs: np.ndarray, how: str, rng: np.random.Generator, reps: int) -> np.ndarray:
    """Bootstrap replicates (reps,) of one process's centre, resampling its paired rounds."""
    n = pairs.shape[0]
    idx = rng.integers(0, n, (reps, n))  # (reps, n) rounds, each a pair
    m = pairs[idx]  # (reps, n, 2)
    if how == "min":
        return np.log(m[:, :, 1].min(axis=1)) - np.log(m[:, :, 0].min(axis=1))
    return np.median(np.log(m[:, :, 1]) - np.log(m[:, :, 0]), axis=1)


@dataclass
class Paired:
    """One cell's paired comparison before the between-process variance is pooled."""
    centres: np.ndarray  # (P,) c_p
    within: np.ndarray  # (P,) bootstrap variance of each c_p
    pairs: int  # paired rounds over all processes
    boot: np.ndarray  # (reps,) bootstrap of the mean centre over processes (rounds resampled)

    @property
    def processes(self) -> int:
        return int(self.centres.size)

    @property
    def log_ratio(self) -> float:
        return float(self.centres.mean())


def paired(pairs: Pairs, how: str = CENTRE, seed: int = 0, reps: int = REPS) -> Paired | None:
    """The per-process centres of a cell's paired rounds and their within-process variance;
    None without a pair. A process with a single pair has no within variance of its own: its
    bootstrap is a point, so it counts as variance 0 there (the between-process term covers it)."""
    ps = [v for v in pairs.values() if len(v)]
    if not ps:
        return None
    rng = np.random.default_rng(seed)
    boots = np.stack([_centres_boot(v, how, rng, reps) for v in ps])  # (P, reps)
    return Paired(np.asarray([centre(v, how) for v in ps]), boots.var(axis=1, ddof=1),
                  int(sum(len(v) for v in ps)), boots.mean(axis=0))


@dataclass
class Pool:
    """What the cells of one comparison say together about how far a process's centre strays
    beyond what its own rounds show: the between-process variance tau^2 (a process's own
    allocation, placement, compile decisions: an additive term) and the inflation kappa of the
    within-process variance (rounds of one process are not independent draws when the host's
    contention comes in bursts longer than a round: a factor). Each is pooled over every cell
    with two processes or more, weighted by its degrees of freedom."""
    tau2: float | None  # None: no cell had two processes
    df: int
    kappa: float = 1.0

    @staticmethod
    def of(cells: Sequence[Paired | None]) -> "Pool":
        num, ratio, df = 0.0, 0.0, 0
        for c in cells:
            if c is None or c.processes < 2:
                continue
            s2, w = float(c.centres.var(ddof=1)), float(c.within.mean())
            num += (c.processes - 1) * (s2 - w)
            ratio += (c.processes - 1) * (s2 / w if w > 0 else 1.0)
            df += c.processes - 1
        if not df:
            return Pool(None, 0)
        return Pool(max(0.0, num / df), df, max(1.0, ratio / df))


@dataclass
class Judged:
    """A paired comparison's estimate, intervals and mark."""
    mark: str  # faster | slower | unchanged | inconclusive | failed
    ratio: float = math.nan  # time new / base: > 1 is slower
    lo: float = math.nan  # 95% interval (a change: excludes 1)
    hi: float = math.nan
    eq_lo: float = math.nan  # 90% interval (no change: within the threshold)
    eq_hi: float = math.nan
    pairs: int = 0
    processes: int = 0
    per_process: list[float] = field(default_factory=list)  # exp(c_p)
    sd: float = math.nan  # standard error of the log ratio
    tau: float | None = None  # the between-process SD that entered it
    tau_assumed: bool = False  # TAU_ONE_PROCESS stood in for it
    reason: str = ""
    regression: bool = False

    def to_json(self) -> dict[str, Any]:
        f = (lambda x: float(x) if x is not None and math.isfinite(x) else None)
        return {"mark": self.mark, "ratio": f(self.ratio), "ci": [f(self.lo), f(self.hi)],
                "ci90": [f(self.eq_lo), f(self.eq_hi)], "pairs": self.pairs,
                "processes": self.processes, "per_process": [f(x) for x in self.per_process],
                "se_log": f(self.sd), "tau": f(self.tau), "tau_assumed": self.tau_assumed,
                "reason": self.reason, "regression": self.regression}


def interval(c: Paired, pool: Pool, level: float) -> tuple[float, float, float, float | None, bool]:
    """(lo, hi, se, tau, assumed) of exp(mean centre) at `level` (0.95 or 0.90)."""
    w = float(c.within.mean())
    tau2, df, assumed = pool.tau2, pool.df, False
    if tau2 is None:
        tau2, df, assumed = TAU_ONE_PROCESS ** 2, None, True
    var1 = max(tau2 + w, pool.kappa * w)  # variance of one process's centre: the larger model
    if c.processes >= 2:
        own = float(c.centres.var(ddof=1))
        k = c.processes - 1
        if own > chi2_ratio_99(k) * var1:
            # this cell's processes scatter more than the pooled model allows (a chi-square test
            # at 1%): its own variance, with its own few degrees of freedom, is the honest one
            var1, df = own, k
    se = math.sqrt(var1 / c.processes)
    half = t_quantile(df, level) * se
    # never narrower than the rounds alone say (the bootstrap of the mean over processes)
    q = 100 * (1 - level) / 2
    blo, bhi = np.percentile(c.boot, [q, 100 - q])
    m = c.log_ratio
    return (math.exp(min(m - half, float(blo))), math.exp(max(m + half, float(bhi))), se,
            math.sqrt(tau2), assumed)


def judge(c: Paired | None, pool: Pool, threshold: float = THRESHOLD) -> Judged:
    """The mark of one cell's paired comparison (module docstring; the rule is harness.judge.marks')."""
    if c is None or c.pairs == 0:
        return Judged("inconclusive", reason="no paired rounds")
    lo, hi, se, tau, assumed = interval(c, pool, 0.95)
    eq_lo, eq_hi, *_ = interval(c, pool, 0.90)
    ratio = math.exp(c.log_ratio)
    j = Judged("inconclusive", ratio, lo, hi, eq_lo, eq_hi, c.pairs, c.processes,
               [math.exp(x) for x in c.centres], se, tau, assumed)
    got = mark(ratio, (lo, hi), (eq_lo, eq_hi), threshold) if c.pairs >= MIN_PAIRS else None
    if c.pairs < MIN_PAIRS:
        j.reason = f"too few paired rounds ({c.pairs}; {MIN_PAIRS} needed)"
    elif got is not None:
        j.mark = got
    elif lo > 1 or hi < 1:
        j.reason = (f"a change of {ratio - 1:+.1%} is shown, but its 90% interval [{eq_lo:.3f}, "
                    f"{eq_hi:.3f}] straddles the threshold +-{pct(threshold)}")
    else:
        j.reason = too_wide((eq_lo, eq_hi), threshold)
    j.regression = j.mark == "slower"
    return j


def failed(base: dict[str, Any], new: dict[str, Any]) -> Judged | None:
    """The `failed` mark where a side did not measure (None when both did): a regression when
    the base measured and the new did not."""
    ok_b, ok_n = base.get("status") == "ok", new.get("status") == "ok"
    if ok_b and ok_n:
        return None
    why = "; ".join(f"{k} {r.get('status')}" + (f": {str(r.get('error') or '').splitlines()[0][:100]}"
                                                 if r.get("error") else "")
                    for k, r in (("base", base), ("new", new)) if r.get("status") != "ok")
    return Judged("failed", reason=why, regression=ok_b and not ok_n)


Results = dict[str, Any]  # a cell's result as a results file keeps it (status, samples, estimate_s, ...)


def judge_pairs(pairs: Sequence[tuple[Results, Results]], threshold: float = THRESHOLD,
                centre: str = CENTRE, seed: int = 0) -> tuple[list[Judged], Pool]:
    """Every (base, new) pair of one run's cells judged in one comparison: the paired rounds of
    each, the between-process variance pooled over all that both measured (the Pool, returned
    too), then each cell's mark, `failed` where a side did not measure. `compare --variants`,
    `ab` and `baselines` (a backend against its baseline) all judge here."""
    paired_of = [paired(pair_rounds(b.get("samples") or [], n.get("samples") or []), centre, seed=seed)
                 if b.get("status") == "ok" and n.get("status") == "ok" else None for b, n in pairs]
    pool = Pool.of(paired_of)
    return [failed(b, n) or judge(c, pool, threshold) for (b, n), c in zip(pairs, paired_of)], pool
