"""`lstmbench compare OLD NEW`: which cells got slower or faster between two runs, and which
the noise of the machine leaves undecided; `compare RESULTS --variants BASE,NEW` is
harness.commands.ab's.

Cells are paired by what they measure (Cell.key(): backend, mode, sizes, optimiser, batch,
sequence length, device, dtype, precision; the run's thread count; the variant), never by seed
or machine; several files of one cell on a side are pooled (harness.results.model.Side). Each
pair is judged by harness.engine.crossrun, whose docstring says how each side's figure and the
interval of their ratio are made and what the marks (`slower`, `faster`, `unchanged`,
`inconclusive`) require; `incomparable`: the cell's sizes, device or threads changed, or it is
on one side only; `failed`: a side did not measure. The run-wide quantities the judgement
takes (the between-run spread, each workload's shared move) are gathered here first.

--normalize divides each round's time by the probe time of the same round, so that runs on
machines of different speed (or one machine at different moments) can be compared; the
headline is then the median of those quotients (their minimum would select the rounds whose
probe happened to run slow)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from ..engine import significance as sig
from ..engine import stats
from ..engine.crossrun import Verdict, judge, machine_speeds, pct, workload_shifts
from ..errors import UsageError
from ..report.console import fmt_time, text_table
from ..results.model import PathLike, Pooled, load_side
from ..results.schema import ResultsError
from .ab import run_compare_variants
from .options import add_json, json_target, percent, text_log, write_json


def _loose_id(p: "Pooled") -> tuple:
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


def _fnum(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def run_compare(old: PathLike | Iterable[PathLike], new: PathLike | Iterable[PathLike], *,
                threshold: float, fail_on_regression: bool, normalize: bool = False,
                json_path: PathLike | None = None, log: Callable[[str], None] = print) -> int:
    """Print the comparison (and write --json). Returns 1 under fail_on_regression when a cell
    is slower, a new cell failed or is noisy where the old one was ok, or no new cell was
    measured; 2 when NaN samples made cells invalid (and no regression decided it); else 0."""
    a, b = load_side(old), load_side(new)
    log(f"old: {len(a.files)} file(s), machine {', '.join(sorted(a.machines))}")
    log(f"new: {len(b.files)} file(s), machine {', '.join(sorted(b.machines))}")
    if a.machines != b.machines:
        log("note: the two sides ran on different machines; cells are paired all the same")
    ests = {r.estimator for r in a.runs + b.runs}
    estimator = b.runs[0].estimator if len({r.estimator for r in b.runs}) == 1 else "median"
    if len(ests) > 1:
        log(f"note: the runs' headline estimators differ ({', '.join(sorted(ests))}); both sides "
            f"are judged with the {estimator} ({stats.ESTIMATORS.get(estimator, ('', estimator))[1]})")
    for name, s in (("old", a), ("new", b)):
        for r in s.runs:
            if not r.probe_s:
                log(f"note: {name} {Path(r.path).name} has no noise probe (a v1 file, or run without "
                    "one): its noise floor is unknown")
            else:
                log(f"{name} {Path(r.path).name}: noise {r.verdict or '?'}, probe best "
                    f"{r.best_gflops or 0:.0f} GFLOP/s, floor {pct(r.floor or 0)}, "
                    f"contended {pct(r.contended or 0)} of rounds")
    if normalize and not all(r.probe_s for r in a.runs + b.runs):
        raise ResultsError("--normalize needs every run's noise probe; "
                           + ", ".join(Path(r.path).name for r in a.runs + b.runs if not r.probe_s)
                           + " has none (a v1 file, or run without a probe)")
    if normalize:  # the minimum of time/probe would pick the rounds whose probe was unluckily
        estimator = "median"  # slow; the median of the per-round quotients is robust to both tails
    speeds = machine_speeds(a, b)
    if speeds:
        log(f"note: {speeds}" + ("; normalised by each round's probe time" if normalize else ""))
    pooled = sum(len(p.runs) > 1 for s in (a, b) for p in s.cells.values())
    if pooled:
        log(f"note: {pooled} cell(s) were measured in several runs on one side; runs are resampled "
            "in the interval")

    entries: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    not_ok: list[list[str]] = []
    counts = {k: 0 for k in ("slower", "faster", "unchanged", "inconclusive", "incomparable", "failed")}
    regress: list[str] = []
    nan_cells: list[str] = []

    def entry(pl: Pooled, mark: str, v: Verdict | None = None, **extra: Any) -> None:
        counts[mark] += 1
        c = pl.cell
        e = {"backend": c.backend, "variant": pl.variant, "mode": c.mode, "preset": c.preset, "batch": c.batch,
             "seq_len": c.seq_len, "device": c.device, "precision": c.precision, "mark": mark,
             "ratio": _fnum(v.ratio) if v else None,
             "ci": [_fnum(v.lo), _fnum(v.hi)] if v and math.isfinite(v.lo) else None,
             "equivalence_ci": [_fnum(v.eq_lo), _fnum(v.eq_hi)] if v and math.isfinite(v.eq_lo) else None,
             "machine_shift": _fnum(v.machine_shift) if v and v.machine_shift else None,
             "workload_shift": _fnum(v.workload_shift) if v and v.workload_shift else None,
             "p": _fnum(v.p) if v else None, "old_s": _fnum(v.old_s) if v else None,
             "new_s": _fnum(v.new_s) if v else None, "reason": v.reason if v else "",
             "decided_by": v.decided_by if v else "",
             "regression": bool(v.regression) if v else False, **extra}
        entries.append(e)

    # between-unit (process, run) variance pooled over every cell measured on both sides:
    # two processes a side give one cell almost no degrees of freedom, all cells together many;
    # and the cells' log ratios, whose scatter about their common shift is the between-run spread
    ss, df = 0.0, 0
    logs = []
    by_workload: dict[str, list[float]] = {}  # the same log ratios, per workload: its shared move
    for key, po in a.cells.items():
        pn = b.cells.get(key)
        if pn is not None and po.ok and pn.ok:
            so, sn = po.side(normalize), pn.side(normalize)
            s1, d1 = sig.unit_spread(so, sn, estimator)
            ss, df = ss + s1, df + d1
            vo, vn = sig.pooled(so), sig.pooled(sn)
            if vo.size and vn.size:
                logs.append(math.log(sig.estimate(vn, estimator) / sig.estimate(vo, estimator)))
                if pn.workload:
                    by_workload.setdefault(pn.workload, []).append(logs[-1])
    pooled_var = (ss / df, df) if df else None
    drift = workload_shifts(by_workload)
    run_spread = sig.between_run_spread(logs)
    if run_spread is not None:
        log(f"between-run spread: cells' ratios scatter {pct(math.expm1(run_spread))} (robust SD) "
            "about their common shift; every interval is at least +-1.96 of that wide")

    for key, po in a.cells.items():
        pn = b.cells.get(key)
        if pn is None:
            continue
        c = po.cell
        for side, pl in (("old", po), ("new", pn)):
            if any(r.status == "nan" and r.error.startswith("sample") for r in pl.runs):
                nan_cells.append(f"{side} {c.label()}")
        if po.ok and pn.ok:
            v = judge(po, pn, threshold=threshold, estimator=estimator, normalize=normalize,
                      speeds_differ=speeds, pooled_var=pooled_var, run_spread=run_spread,
                      workload_shift=drift.get(pn.workload or ""))
            if pn.noisy and not po.noisy:
                v.regression = True
                regress.append(f"{c.label()} noisy (new)")
            if v.mark == "slower":
                regress.append(f"{c.label()} slower")
            entry(po, v.mark, v, old_status=po.status(), new_status=pn.status())
            fmt = (lambda x: f"{x:.4g}" if math.isfinite(x) else "-") if normalize else fmt_time
            rows.append([po.name, c.mode, c.preset, str(c.batch), fmt(v.old_s), fmt(v.new_s),
                         f"{v.ratio:.3f} [{v.lo:.3f}, {v.hi:.3f}]", f"[{v.eq_lo:.3f}, {v.eq_hi:.3f}]",
                         v.mark.upper() if v.mark == "slower" else v.mark, v.reason or v.decided_by])
            continue
        reg = po.ok and not pn.ok
        if reg:
            regress.append(f"{c.label()} failed ({pn.status().split(':')[0]})")
        entry(po, "failed", Verdict("failed", reason=f"old {po.status()}; new {pn.status()}", regression=reg),
              old_status=po.status(), new_status=pn.status())
        not_ok.append([po.name, c.mode, c.preset, str(c.batch), po.status(), pn.status()])

    incomparable: list[list[str]] = []
    only: list[list[str]] = []
    unmatched_new = {k: v for k, v in b.cells.items() if k not in a.cells}
    by_loose: dict[tuple, list[Pooled]] = {}
    for v in unmatched_new.values():
        by_loose.setdefault(_loose_id(v), []).append(v)
    for key, po in a.cells.items():
        if key in b.cells:
            continue
        c = po.cell
        cands = by_loose.get(_loose_id(po), [])
        if cands:
            pn = cands.pop(0)
            why = differences(po, pn)
            incomparable.append([po.name, c.mode, c.preset, str(c.batch), why])
            entry(po, "incomparable", Verdict("incomparable", reason=why))
        else:
            only.append([po.name, c.mode, c.preset, str(c.batch), "old only"])
            entry(po, "incomparable", Verdict("incomparable", reason="old only"))
            counts["incomparable"] -= 1  # listed apart from changed cells in the summary line
    for rest in by_loose.values():
        for pn in rest:
            c = pn.cell
            only.append([pn.name, c.mode, c.preset, str(c.batch), "new only"])
            entry(pn, "incomparable", Verdict("incomparable", reason="new only"))
            counts["incomparable"] -= 1
    new_cells = list(b.cells.values())
    if not any(p.ok for p in new_cells):  # every new cell failed, or the new run has none
        regress.insert(0, "no new cell was measured")

    if rows:
        log("")
        log((f"per-step time / the same round's probe time, {estimator} over the clean rounds" if normalize
             else f"per-step time, {estimator} of the "
             + ("rounds" if stats.uses_every_round(estimator) else "clean rounds"))
            + f" (new/old ratio > 1 is slower; threshold {threshold:.0%}, hierarchical bootstrap intervals):")
        log(f"  slower / faster: the 95% interval lies above / below 1 and the change is beyond "
            f"+-{threshold:.0%}, both runs' noise floors and what the machine's own move explains; "
            f"unchanged: the 90% interval lies within +-{threshold:.0%} (two one-sided 5% tests); "
            "else inconclusive, with the reason. `why` says which held.")
        for ln in text_table(["backend", "mode", "preset", "batch", "old", "new", "ratio [95% CI]", "90% CI",
                          "mark", "why"], rows, {3, 4, 5, 6, 7}):
            log(ln)
    if not_ok:
        log("")
        log("not compared (a side has no successful measurement):")
        for ln in text_table(["backend", "mode", "preset", "batch", "old", "new"], not_ok, {3}):
            log(ln)
    if incomparable:
        log("")
        log("incomparable (same backend, mode, preset and batch, but a different cell):")
        for ln in text_table(["backend", "mode", "preset", "batch", "why"], incomparable, {3}):
            log(ln)
    if only:
        log("")
        log("on one side only:")
        for ln in text_table(["backend", "mode", "preset", "batch", "side"], only, {3}):
            log(ln)
    log("")
    log(f"{counts['slower']} slower, {counts['faster']} faster, {counts['unchanged']} unchanged, "
        f"{counts['inconclusive']} inconclusive, {counts['incomparable']} incomparable"
        + (f", {counts['failed']} not ok" if counts["failed"] else "")
        + (f", {len(only)} on one side only" if only else ""))
    if counts["inconclusive"]:
        log(f"note: {counts['inconclusive']} inconclusive cell(s) are neither passed nor failed; to decide "
            "them, re-run on a quieter machine, with more --processes, or give several runs a side")
    judged = sum(counts[k] for k in ("slower", "faster", "unchanged", "inconclusive"))
    if judged and counts["inconclusive"] > judged / 2:
        log("note: most cells are inconclusive: between two runs this machine's drift hides changes of "
            "this size. Measure both versions in ONE run and compare them there: `lstmbench ab OLD NEW` "
            "(git revisions, folders or python:PATH), or `run --variant old:... --variant new:...` then "
            "`compare RESULTS --variants old,new` (docs/measurement.md, \"Duet measurement\")")
    write_json(json_path, {
        "schema": "lstmbench.compare", "schema_version": 1, "old": a.files, "new": b.files,
        "threshold": threshold, "estimator": estimator, "normalize": normalize,
        "unit": "round time / probe time" if normalize else "seconds per step",
        "machines_differ": speeds, "counts": counts,
        "regressions": regress, "cells": entries}, log)
    if fail_on_regression and regress:
        log(f"regression: {'; '.join(regress[:5])}" + (f" and {len(regress) - 5} more" if len(regress) > 5 else ""))
        return 1
    if nan_cells:
        raise ResultsError(f"{len(nan_cells)} cell(s) hold NaN samples ({nan_cells[0]}): invalid "
                           "measurements; re-run them")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    target = json_target(a.json)  # before anything is read
    log = text_log(target)
    if a.variants is not None or a.new is None:  # one run, two of its variants
        if a.new is not None:
            raise UsageError("--variants compares two variants of ONE run: give one results file "
                             "(compare OLD NEW compares two runs)")
        if a.normalize:
            raise UsageError("--normalize is for two runs on different machines; an in-run "
                             "comparison pairs rounds of one run")
        return run_compare_variants(a.old, a.variants, threshold=percent(a.threshold),
                                    fail_on_regression=a.fail_on_regression, json_path=target, log=log)
    return run_compare(a.old, a.new, threshold=percent(a.threshold),
                       fail_on_regression=a.fail_on_regression, normalize=a.normalize,
                       json_path=target, log=log)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare two runs (files or folders), or two variants of one run")
    p.add_argument("old", metavar="OLD|RESULTS", help="the old run (files or folders), or with "
                   "--variants the one run whose variants are compared")
    p.add_argument("new", nargs="?", metavar="NEW", help="the new run (files or folders)")
    p.add_argument("--variants", metavar="BASE,NEW",
                   help="judge variant NEW against BASE from their paired rounds in RESULTS "
                        "(a run with --variant; default: its two variants)")
    p.add_argument("--threshold", default="10%", help="smallest change that counts (default 10%%, asv's default factor 1.1)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 on a significant slowdown beyond the threshold, a new cell "
                        "that failed or is noisy where the old one was ok, or no new cell measured")
    p.add_argument("--normalize", action="store_true",
                   help="divide each round's time by the same round's noise-probe time "
                        "(runs on machines of different speed)")
    add_json(p, "one entry per cell")
    p.set_defaults(fn=cmd_compare)
