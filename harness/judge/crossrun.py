"""Cross-run judgement: is a cell of a new run slower, faster or unchanged against the same cell
of an old run (`lstmbench compare OLD NEW`), or undecided, and why.

Each side's figure is the run's headline estimator (results schema v2 `estimator`, e.g. the
minimum; v1 files: the median) over its rounds (every round for the minimum, the clean ones
for other estimators: harness.engine.stats.uses_every_round); both sides are judged with the
same estimator. The interval of the ratio new/old comes from a hierarchical bootstrap over
runs (several files of one cell on a side), worker processes and rounds
(harness.judge.significance). Marks:

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
The marks are harness.judge.marks' one rule; what stands in its way first is this module's.

compare_sides judges two sides (harness.results.model.Side: files pooled by cell) cell by cell,
after gathering what the run-wide judgement takes (the between-unit variance pooled over the
cells, the between-run spread, each workload's shared move); its Comparison is what `compare`
prints (harness.report.console.comparison_lines) and writes (to_json). In-run comparisons (two
variants of one run) are harness.judge.duet's."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import stats
from ..engine.stats import estimate
from ..results.model import Pooled, Side
from ..results.schema import ResultsError
from . import significance as sig
from .marks import bounds, mark, pct, shown, too_wide
from .tdist import Z

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


def _interval(so: sig.Side, sn: sig.Side, estimator: str, level: float, seed: int,
              pooled_var: tuple[float, int] | None, run_spread: float | None) -> tuple[float, float, float, float]:
    """(ratio, lo, hi, p) at `level`: the bootstrap's and the units' interval, at least as wide
    as the between-run spread says (sig.between_run_spread)."""
    ratio, lo, hi, p = sig.ratio_interval(so, sn, estimator, seed=seed, pooled_var=pooled_var, level=level)
    if run_spread:
        z = Z[level]
        lo, hi = min(lo, ratio * math.exp(-z * run_spread)), max(hi, ratio * math.exp(z * run_spread))
    return ratio, lo, hi, p


def blockers(old: Pooled, new: Pooled, rounds: tuple[int, int], speeds_differ: str | None,
             normalize: bool) -> list[str]:
    """What keeps a pair of cells from being marked at all: a contended run, a run beside a busy
    process, too few clean rounds, machines of different speed."""
    out: list[str] = []
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
            out.append(f"{name} run shared the machine: other processes kept {busy:.2f} cores "
                       "busy during its workload")
    if len(contended) == 1:
        (name, what), = contended.items()
        out.append(f"{name} run contended: {what}")
    elif contended:
        out.append(f"both runs contended (old {contended['old']}, new {contended['new']})")
    if few:
        out.append("too few clean rounds (" + ", ".join(f"{k} {v}" for k, v in few.items()) + ")")
    if min(rounds) < MIN_ROUNDS:
        out.append(f"too few clean rounds (old {rounds[0]}, new {rounds[1]}; {MIN_ROUNDS} needed)")
    if speeds_differ and not normalize:
        out.append(speeds_differ)
    return out


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
    ratio, lo, hi, p = _interval(so, sn, estimator, 0.95, seed, pooled_var, run_spread)  # a change: excludes 1
    _, eq_lo, eq_hi, _ = _interval(so, sn, estimator, 0.90, seed, pooled_var, run_spread)  # no change: TOST
    v = Verdict("inconclusive", ratio, lo, hi, p, estimate(sig.pooled(so), estimator),
                estimate(sig.pooled(sn), estimator), eq_lo=eq_lo, eq_hi=eq_hi)
    stop = blockers(old, new, (no, nn), speeds_differ, normalize)
    floors = {name: r.floor for name, pl in (("old", old), ("new", new))
              for r in (x.run for x in pl.measured) if r.floor is not None}
    floor = 0.0 if normalize else max(floors.values(), default=0.0)
    # how much faster or slower the machine itself was in this cell's workload, new against old
    # (the probe's best round there); the part of a change in the same direction that it
    # explains is not the code's: only what remains beyond it must pass the threshold
    shift = None if normalize else machine_shift(old, new)
    v.machine_shift, v.workload_shift = shift, workload_shift
    same = [x for x in (shift, workload_shift) if x and (x > 1) == (ratio > 1)]
    explained = (max(same) if ratio > 1 else min(same)) if same else 1.0
    beyond = ratio / explained
    got = None if stop else mark(ratio, (lo, hi), (eq_lo, eq_hi), threshold, floor=floor, beyond=beyond)
    down, up = bounds(threshold)
    if stop:
        v.reason = "; ".join(dict.fromkeys(stop))
    elif got is not None:
        v.mark, v.decided_by = got, _decided(v, got, threshold, floor, beyond)
    elif shown(ratio, (lo, hi), threshold) and (beyond > up or beyond < down):
        which = max(floors, key=floors.get) if floors else "old"
        v.reason = (f"change {ratio - 1:+.0%} is within the noise floor: the {which} run's probe "
                    f"varied {pct(floor)}")
    elif shown(ratio, (lo, hi), threshold) and explained == shift:
        v.reason = (f"change {ratio - 1:+.0%} is mostly the machine's: its probe ran "
                    f"{abs(shift - 1):.0%} {'slower' if shift > 1 else 'faster'} in this workload "
                    f"of the new run, leaving {beyond - 1:+.0%}, within the threshold")
    elif shown(ratio, (lo, hi), threshold):
        v.reason = (f"change {ratio - 1:+.0%} is mostly shared: every backend of this workload moved "
                    f"{explained - 1:+.0%} together, within what this machine drifts between runs of "
                    f"identical code (up to {pct(WORKLOAD_DRIFT)}), leaving {beyond - 1:+.0%}")
    else:
        v.reason = too_wide((eq_lo, eq_hi), threshold)
    v.regression = v.mark == "slower"
    return v


def _decided(v: Verdict, got: str, threshold: float, floor: float, beyond: float) -> str:
    """What gave a faster, slower or unchanged mark, in the words of the module docstring:
    the 95% interval on the side of 1 and the change beyond the threshold, the noise floor and
    what the machine explains; or the 90% interval inside +-threshold."""
    if got == "unchanged":
        return f"90% interval [{v.eq_lo:.3f}, {v.eq_hi:.3f}] within +-{pct(threshold)}"
    side = "above" if got == "slower" else "below"
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


# ---- two sides, cell by cell ---------------------------------------------------------------------

@dataclass
class Outcome:
    """One cell's place in a comparison: its two sides (one only where the other lacks it), its
    verdict, and which of compare's tables shows it: "judged", "not ok" (a side did not
    measure), "incomparable" (the same backend, mode, preset and batch, another cell) or "only"."""
    old: Pooled | None
    new: Pooled | None
    verdict: Verdict
    table: str

    @property
    def pooled(self) -> Pooled:
        return self.old if self.old is not None else self.new  # type: ignore[return-value]


@dataclass
class Comparison:
    """compare OLD NEW's judgement: every cell's Outcome, in the old side's order, then the new
    side's cells the old one lacks; the run-wide figures the judgement took; the regressions
    --fail-on-regression counts; cells holding NaN samples."""
    old: Side
    new: Side
    threshold: float
    normalize: bool
    estimator: str
    speeds: str | None
    run_spread: float | None
    outcomes: list[Outcome] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    nan_cells: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Cells per mark; `incomparable` without the cells on one side only (listed apart)."""
        out = {k: 0 for k in ("slower", "faster", "unchanged", "inconclusive", "incomparable", "failed")}
        for o in self.outcomes:
            if o.table != "only":
                out[o.verdict.mark] += 1
        return out

    def table(self, name: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.table == name]


def common_estimator(a: Side, b: Side) -> str:
    """The estimator both sides are judged with: the new runs' headline estimator where they
    share one, else the median."""
    return b.runs[0].estimator if len({r.estimator for r in b.runs}) == 1 else "median"


def require_probes(a: Side, b: Side, normalize: bool) -> None:
    """--normalize divides by each round's probe time: every run must have its probe."""
    if normalize and not all(r.probe_s for r in a.runs + b.runs):
        raise ResultsError("--normalize needs every run's noise probe; "
                           + ", ".join(Path(r.path).name for r in a.runs + b.runs if not r.probe_s)
                           + " has none (a v1 file, or run without a probe)")


def _run_wide(a: Side, b: Side, estimator: str, normalize: bool
              ) -> tuple[tuple[float, int] | None, dict[str, float], float | None]:
    """(pooled between-unit variance, each workload's shared move, the between-run spread) over
    every cell both sides measured: two processes a side give one cell almost no degrees of
    freedom, all cells together many; the cells' log ratios scatter about their common shift by
    the between-run spread."""
    ss, df = 0.0, 0
    logs = []
    by_workload: dict[str, list[float]] = {}
    for key, po in a.cells.items():
        pn = b.cells.get(key)
        if pn is not None and po.ok and pn.ok:
            so, sn = po.side(normalize), pn.side(normalize)
            s1, d1 = sig.unit_spread(so, sn, estimator)
            ss, df = ss + s1, df + d1
            vo, vn = sig.pooled(so), sig.pooled(sn)
            if vo.size and vn.size:
                logs.append(math.log(estimate(vn, estimator) / estimate(vo, estimator)))
                if pn.workload:
                    by_workload.setdefault(pn.workload, []).append(logs[-1])
    return (ss / df, df) if df else None, workload_shifts(by_workload), sig.between_run_spread(logs)


def compare_sides(a: Side, b: Side, *, threshold: float, normalize: bool = False) -> Comparison:
    """Every cell of the old side against the same cell of the new (module docstring)."""
    require_probes(a, b, normalize)
    # the minimum of time/probe would pick the rounds whose probe was unluckily slow; the
    # median of the per-round quotients is robust to both tails
    estimator = "median" if normalize else common_estimator(a, b)
    speeds = machine_speeds(a, b)
    pooled_var, drift, run_spread = _run_wide(a, b, estimator, normalize)
    cmp = Comparison(a, b, threshold, normalize, estimator, speeds, run_spread)
    for key, po in a.cells.items():
        pn = b.cells.get(key)
        if pn is not None:
            _judge_pair(cmp, po, pn, pooled_var, drift)
    _unpaired(cmp)
    if not any(p.ok for p in b.cells.values()):  # every new cell failed, or the new run has none
        cmp.regressions.insert(0, "no new cell was measured")
    return cmp


def _judge_pair(cmp: Comparison, po: Pooled, pn: Pooled, pooled_var: tuple[float, int] | None,
                drift: dict[str, float]) -> None:
    c = po.cell
    for side, pl in (("old", po), ("new", pn)):
        if any(r.status == "nan" and r.error.startswith("sample") for r in pl.runs):
            cmp.nan_cells.append(f"{side} {c.label()}")
    if po.ok and pn.ok:
        v = judge(po, pn, threshold=cmp.threshold, estimator=cmp.estimator, normalize=cmp.normalize,
                  speeds_differ=cmp.speeds, pooled_var=pooled_var, run_spread=cmp.run_spread,
                  workload_shift=drift.get(pn.workload or ""))
        if pn.noisy and not po.noisy:
            v.regression = True
            cmp.regressions.append(f"{c.label()} noisy (new)")
        if v.mark == "slower":
            cmp.regressions.append(f"{c.label()} slower")
        cmp.outcomes.append(Outcome(po, pn, v, "judged"))
        return
    reg = po.ok and not pn.ok
    if reg:
        cmp.regressions.append(f"{c.label()} failed ({pn.status().split(':')[0]})")
    cmp.outcomes.append(Outcome(po, pn, Verdict("failed", reason=f"old {po.status()}; new {pn.status()}",
                                                regression=reg), "not ok"))


def _loose_id(p: Pooled) -> tuple:
    """What a user would call "the same cell" even when its sizes changed."""
    return (p.name, p.cell.mode, p.cell.preset, p.cell.batch)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: Pooled, new: Pooled) -> str:
    """What makes two cells incomparable, e.g. "model.hidden_size 32 -> 64"."""
    a = {**_flat(old.cell.to_dict()), "threads": old.threads}
    b = {**_flat(new.cell.to_dict()), "threads": new.threads}
    return ", ".join(f"{k} {a.get(k)} -> {b.get(k)}" for k in a
                     if k != "seed" and a.get(k) != b.get(k))


def _unpaired(cmp: Comparison) -> None:
    """The cells on one side only: incomparable where the other side has the same backend, mode,
    preset and batch in another cell (sizes, device or threads changed), else on one side only."""
    a, b = cmp.old, cmp.new
    by_loose: dict[tuple, list[Pooled]] = {}
    for key, v in b.cells.items():
        if key not in a.cells:
            by_loose.setdefault(_loose_id(v), []).append(v)
    for key, po in a.cells.items():
        if key in b.cells:
            continue
        cands = by_loose.get(_loose_id(po), [])
        if cands:
            pn = cands.pop(0)
            why = differences(po, pn)
            cmp.outcomes.append(Outcome(po, pn, Verdict("incomparable", reason=why), "incomparable"))
        else:
            cmp.outcomes.append(Outcome(po, None, Verdict("incomparable", reason="old only"), "only"))
    for rest in by_loose.values():
        for pn in rest:
            cmp.outcomes.append(Outcome(None, pn, Verdict("incomparable", reason="new only"), "only"))


def _fnum(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def entry(o: Outcome) -> dict[str, Any]:
    """One cell of `compare --json`."""
    v, pl = o.verdict, o.pooled
    c = pl.cell
    e = {"backend": c.backend, "variant": pl.variant, "mode": c.mode, "preset": c.preset, "batch": c.batch,
         "seq_len": c.seq_len, "device": c.device, "precision": c.precision, "mark": v.mark,
         "ratio": _fnum(v.ratio), "ci": [_fnum(v.lo), _fnum(v.hi)] if math.isfinite(v.lo) else None,
         "equivalence_ci": [_fnum(v.eq_lo), _fnum(v.eq_hi)] if math.isfinite(v.eq_lo) else None,
         "machine_shift": _fnum(v.machine_shift) if v.machine_shift else None,
         "workload_shift": _fnum(v.workload_shift) if v.workload_shift else None,
         "p": _fnum(v.p), "old_s": _fnum(v.old_s), "new_s": _fnum(v.new_s), "reason": v.reason,
         "decided_by": v.decided_by, "regression": bool(v.regression)}
    if o.table in ("judged", "not ok"):
        e.update(old_status=o.old.status(), new_status=o.new.status())  # type: ignore[union-attr]
    return e


def to_json(cmp: Comparison) -> dict[str, Any]:
    """The document `compare --json` writes (schema lstmbench.compare 1)."""
    return {"schema": "lstmbench.compare", "schema_version": 1, "old": cmp.old.files, "new": cmp.new.files,
            "threshold": cmp.threshold, "estimator": cmp.estimator, "normalize": cmp.normalize,
            "unit": "round time / probe time" if cmp.normalize else "seconds per step",
            "machines_differ": cmp.speeds, "counts": cmp.counts, "regressions": cmp.regressions,
            "cells": [entry(o) for o in cmp.outcomes]}
