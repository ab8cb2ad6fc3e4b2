"""Cross-run judgement: is a cell of a new run slower, faster or unchanged against the same cell
of an old run (`lstmbench compare OLD NEW`), or undecided, and why.

Each side's figure is the run's headline estimator (results schema v2 `estimator`, e.g. the
minimum; v1 files: the median) over its rounds (every round for the minimum, the clean ones
for other estimators: harness.engine.stats.uses_every_round); both sides are judged with the
same estimator. The interval of the ratio new/old comes from a hierarchical bootstrap over
runs (several files of one cell on a side), worker processes and rounds
(harness.engine.significance). Marks:

- `slower` / `faster`: the interval excludes 1, the ratio is beyond --threshold, and beyond
  both runs' noise floors (how much their probe GEMM's speed moved), and what is left once
  the machine's own move (machine_shift) and a move every backend of the workload shared
  (workload_shifts, up to WORKLOAD_DRIFT) are taken out is beyond the threshold too; nothing
  else stands in the way (a contended run, a run beside a busy process, too few clean rounds,
  machines of different speed);
- `unchanged`: the 90% interval lies within +-threshold: two one-sided tests at 5% each
  (Schuirmann's TOST, the usual equivalence test) reject "slower by the threshold" and
  "faster by the threshold" alike;
- `inconclusive`: anything else, with the reason;
- `incomparable`: the cell's sizes, device or threads changed; `failed`: a side did not measure.

With normalize (compare --normalize) each round's time is divided by the probe time of the
same round (harness.results.model.RunCell.values) and judged by the median of those quotients.
In-run comparisons (two variants of one run) are harness.engine.duet's."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..results.model import Pooled, Side
from . import significance as sig
from . import stats

# a cell with this share of unclean rounds on a side is not judged: the headline estimator uses
# clean rounds only, so a cell is judged while a third of its rounds are clean (the run's
# min_clean of 10 in 30); measured: on this 2-core machine with nothing else running, 30-55%
# of rounds are unclean (the probe shares the cores with the previous participant's threads)
CONTENDED_SHARE = 2 / 3
MIN_ROUNDS = 5  # rounds a side needs before a cell can be called faster or slower
SPEED_DIFFERS = 1.25  # best probe GFLOP/s of the two sides this far apart: machines differ
# Every backend of a workload moving together between two runs of identical code: on the
# project's 2-core VM the median cell of a workload moved by up to 14% (0.859-1.073 over five
# trios of smoke runs on 3 December 2026, train workloads most), with the probe GEMM not
# following (docs/measurement.md, "Drift"). A shared move up to this size is not attributed
# to the code; one beyond it is judged as it stands (a copy of a run 25% slower is `slower`).
WORKLOAD_DRIFT = 0.15
MIN_DRIFT_CELLS = 3  # cells a workload needs on both sides before its shared move is estimated


@dataclass
class Verdict:
    mark: str  # faster | slower | unchanged | inconclusive | incomparable | failed
    ratio: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    p: float = math.nan
    old_s: float = math.nan
    new_s: float = math.nan
    reason: str = ""
    regression: bool = False  # counts under --fail-on-regression
    eq_lo: float = math.nan  # the 90% interval: `unchanged` when it lies within +-threshold (TOST)
    eq_hi: float = math.nan
    machine_shift: float | None = None  # new/old best probe time in the cell's workload
    workload_shift: float | None = None  # the move its workload's backends shared, if within the drift
    decided_by: str = ""  # for faster, slower, unchanged: the interval and bound that gave the mark


def workload_shifts(logs: dict[str, list[float]]) -> dict[str, float]:
    """Per workload id, the ratio new/old its median cell moved by (`logs`: each cell's log
    ratio of headline estimates, by workload), where at least MIN_DRIFT_CELLS cells were
    measured on both sides and the move is within WORKLOAD_DRIFT: a move that size is what
    this machine does between runs of identical code."""
    out = {}
    for wid, xs in logs.items():
        m = float(np.median(xs))
        if len(xs) >= MIN_DRIFT_CELLS and abs(m) <= math.log1p(WORKLOAD_DRIFT):
            out[wid] = math.exp(m)
    return out


def machine_shift(old: "Pooled", new: "Pooled") -> float | None:
    """How much slower (> 1) or faster the machine was in the new run than in the old one, where
    this cell was measured: the probe's fastest round in the cell's workload, new over old (the
    fastest over a side's runs); None where a side has no probe rounds for it (v1 files)."""
    def best(pl: "Pooled") -> float | None:
        vals = [r.run.probe_best.get(r.workload) for r in pl.measured]
        vals = [v for v in vals if v]
        return min(vals) if vals else None
    a, b = best(old), best(new)
    return b / a if a and b else None


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def judge(old: Pooled, new: Pooled, *, threshold: float, estimator: str, normalize: bool,
          speeds_differ: str | None, pooled_var: tuple[float, int] | None = None,
          run_spread: float | None = None, seed: int = 0,
          workload_shift: float | None = None) -> Verdict:
    """The mark of one pair of measured cells (module docstring). `workload_shift`: the move
    every backend of the cell's workload shared (workload_shifts), when within WORKLOAD_DRIFT."""
    so, sn = old.side(normalize), new.side(normalize)
    no, nn = sum(a.size for r in so for a in r), sum(a.size for r in sn for a in r)
    if not no or not nn:
        return Verdict("inconclusive", reason="no rounds with a probe time to normalise by"
                       if normalize else "no rounds")
    def interval(level: float) -> tuple[float, float, float, float]:
        ratio, lo, hi, p = sig.ratio_interval(so, sn, estimator, seed=seed, pooled_var=pooled_var,
                                              level=level)
        if run_spread:  # between-run variance (sig.between_run_spread): at least this wide
            z = sig.Z[level]
            lo, hi = min(lo, ratio * math.exp(-z * run_spread)), max(hi, ratio * math.exp(z * run_spread))
        return ratio, lo, hi, p
    ratio, lo, hi, p = interval(0.95)  # a change: the 95% interval excludes 1
    _, eq_lo, eq_hi, _ = interval(0.90)  # no change: two one-sided 5% tests (TOST) = the 90% interval
    v = Verdict("inconclusive", ratio, lo, hi, p, sig.estimate(sig.pooled(so), estimator),
                sig.estimate(sig.pooled(sn), estimator), eq_lo=eq_lo, eq_hi=eq_hi)
    blockers: list[str] = []
    contended: dict[str, str] = {}
    few: dict[str, str] = {}
    for name, pl in (("old", old), ("new", new)):
        runs = {id(r.run): r.run for r in pl.measured}.values()
        share = pl.unclean_share
        worst = max((r.contended or 0.0 for r in runs), default=0.0)
        if share >= CONTENDED_SHARE:
            contended[name] = f"{pct(share)} of rounds"
        elif any(r.verdict == "contended" for r in runs):
            contended[name] = f"{pct(worst)} of probe rounds"
        if pl.noisy:
            clean = sum(sum(s["clean"] for s in r.samples) for r in pl.measured)
            total = sum(len(r.samples) for r in pl.measured)
            few[name] = f"{clean} of {total}"
    for name, pl in (("old", old), ("new", new)):
        busy = max((r.run.foreign.get(r.workload or "", 0.0) for r in pl.measured), default=0.0)
        if busy >= stats.FOREIGN_LIMIT:
            blockers.append(f"{name} run shared the machine: other processes kept {busy:.2f} cores "
                            "busy during its workload")
    if len(contended) == 1:
        (name, what), = contended.items()
        blockers.append(f"{name} run contended: {what}")
    elif contended:
        blockers.append(f"both runs contended (old {contended['old']}, new {contended['new']})")
    if few:
        blockers.append("too few clean rounds (" + ", ".join(f"{k} {v}" for k, v in few.items()) + ")")
    if min(no, nn) < MIN_ROUNDS:
        blockers.append(f"too few clean rounds (old {no}, new {nn}; {MIN_ROUNDS} needed)")
    if speeds_differ and not normalize:
        blockers.append(speeds_differ)
    floors = {name: r.floor for name, pl in (("old", old), ("new", new))
              for r in (x.run for x in pl.measured) if r.floor is not None}
    floor = 0.0 if normalize else max(floors.values(), default=0.0)
    up, down = 1 + threshold, 1 / (1 + threshold)
    tight = eq_lo >= down and eq_hi <= up
    # how much faster or slower the machine itself was in this cell's workload, new against old
    # (the probe's best round there); the part of a change in the same direction that it
    # explains is not the code's: only what remains beyond it must pass the threshold
    shift = None if normalize else machine_shift(old, new)
    v.machine_shift, v.workload_shift = shift, workload_shift
    same = [x for x in (shift, workload_shift) if x and (x > 1) == (ratio > 1)]
    explained = (max(same) if ratio > 1 else min(same)) if same else 1.0
    beyond = ratio / explained
    if blockers:
        v.reason = "; ".join(dict.fromkeys(blockers))
    elif lo > 1 and ratio > up and ratio > 1 + floor and beyond > up:
        v.mark = "slower"
        v.decided_by = _decided(v, threshold, floor, beyond)
    elif hi < 1 and ratio < down and ratio < 1 / (1 + floor) and beyond < down:
        v.mark = "faster"
        v.decided_by = _decided(v, threshold, floor, beyond)
    elif tight:
        v.mark = "unchanged"
        v.decided_by = _decided(v, threshold, floor, beyond)
    elif ((lo > 1 and ratio > up) or (hi < 1 and ratio < down)) and (beyond > up or beyond < down):
        which = max(floors, key=floors.get) if floors else "old"
        v.reason = (f"change {ratio - 1:+.0%} is within the noise floor: the {which} run's probe "
                    f"varied {pct(floor)}")
    elif ((lo > 1 and ratio > up) or (hi < 1 and ratio < down)) and explained == shift:
        v.reason = (f"change {ratio - 1:+.0%} is mostly the machine's: its probe ran "
                    f"{abs(shift - 1):.0%} {'slower' if shift > 1 else 'faster'} in this workload "
                    f"of the new run, leaving {beyond - 1:+.0%}, within the threshold")
    elif (lo > 1 and ratio > up) or (hi < 1 and ratio < down):
        v.reason = (f"change {ratio - 1:+.0%} is mostly shared: every backend of this workload moved "
                    f"{explained - 1:+.0%} together, within what this machine drifts between runs of "
                    f"identical code (up to {pct(WORKLOAD_DRIFT)}), leaving {beyond - 1:+.0%}")
    else:
        v.reason = (f"90% interval [{eq_lo:.3f}, {eq_hi:.3f}] reaches beyond the threshold "
                    f"+-{pct(threshold)}")
    v.regression = v.mark == "slower"
    return v


def _decided(v: Verdict, threshold: float, floor: float, beyond: float) -> str:
    """What gave a faster, slower or unchanged mark, in the words of the module docstring:
    the 95% interval on the side of 1 and the change beyond the threshold, the noise floor and
    what the machine explains; or the 90% interval inside +-threshold."""
    if v.mark == "unchanged":
        return f"90% interval [{v.eq_lo:.3f}, {v.eq_hi:.3f}] within +-{pct(threshold)}"
    side = "above" if v.mark == "slower" else "below"
    out = (f"95% interval [{v.lo:.3f}, {v.hi:.3f}] {side} 1; change {v.ratio - 1:+.0%} beyond "
           f"+-{pct(threshold)}")
    if floor > threshold:
        out += f" and the noise floor {pct(floor)}"
    if abs(beyond / v.ratio - 1) > 0.005:  # the machine or the workload explained part of it
        out += f", {beyond - 1:+.0%} once the machine's own move is taken out"
    return out


def machine_speeds(a: Side, b: Side) -> str | None:
    """A reason when the two sides' best probe GFLOP/s differ by more than SPEED_DIFFERS."""
    ga = [r.best_gflops for r in a.runs if r.best_gflops]
    gb = [r.best_gflops for r in b.runs if r.best_gflops]
    if not ga or not gb:
        return None
    x, y = max(ga), max(gb)
    if max(x, y) / min(x, y) > SPEED_DIFFERS:
        return (f"machine speeds differ: probe best {x:.0f} vs {y:.0f} GFLOP/s "
                "(compare with --normalize)")
    return None
