"""`lstmbench compare RESULTS --variants BASE,NEW` and `lstmbench ab BASE NEW`: is NEW faster
than BASE, judged inside one run whose participants were both (harness.envs.variants), from
their paired rounds (harness.judge.duet). Cross-run `compare OLD NEW` (harness.commands.compare)
cannot decide what this machine's between-run drift hides; in one run the drift falls on both
sides alike.

    lstmbench ab HEAD~1 HEAD --backends numpy-f32,torch --fail-on-regression

runs the matrix (default `smoke`) with the two as variants `base` and `new`, then prints the
comparison: ratios first, then the run's noise."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable

from ..judge import duet
from ..session.benchmark import run_matrix
from ..envs.variants import Variant, check_src, parse_variant
from ..errors import UsageError
from ..report.console import RunConsole, fmt_time, text_table
from ..results.model import RunCell, read_run
from ..results.store import expand_paths
from .options import add_json, json_target, percent, positive_threads, text_log, write_json
from .run import add_run_options, run_settings


def _entries(cells: list[RunCell], variant: str) -> dict[tuple[str, str], RunCell]:
    """(workload id, backend) -> the cell `variant` measured there."""
    return {(rc.workload or "", rc.cell.backend): rc for rc in cells if rc.variant == variant}


def choose_variants(doc: dict[str, Any], text: str | None, path: str) -> tuple[str, str]:
    """BASE,NEW from --variants, checked against the variants the run defines."""
    defined = list((doc.get("variants") or {}))
    if not defined:
        raise UsageError(f"{path} has no variants (run it with --variant NAME ... twice, or use "
                         "`lstmbench ab`); two runs are compared with `compare OLD NEW`")
    if text is None:
        if len(defined) != 2:
            raise UsageError(f"{path} has {len(defined)} variants ({', '.join(defined)}); say which "
                             "two with --variants BASE,NEW")
        return defined[0], defined[1]
    names = [n.strip() for n in text.split(",")]
    if len(names) != 2 or not all(names):
        raise UsageError(f"--variants {text!r}: give two variant names, BASE,NEW")
    if names[0] == names[1]:
        raise UsageError(f"--variants {text!r}: a variant compared with itself; name two different ones")
    for n in names:
        if n not in defined:
            raise UsageError(f"--variants: {path} has no variant {n!r}; it has {', '.join(defined)}")
    return names[0], names[1]


def compare_cells(cells: list[RunCell], base: str, new: str, threshold: float,
                  seed: int = 0, centre: str = duet.CENTRE) -> list[dict[str, Any]]:
    """One entry per (workload, backend) both variants took part in: the cell's sizes, both
    headline estimates, and the in-run comparison's verdict (duet.judge_pairs, as JSON)."""
    b_cells, n_cells = _entries(cells, base), _entries(cells, new)
    keys = [k for k in b_cells if k in n_cells
            # neither can: nothing to compare (the registry says why)
            and not (b_cells[k].result.get("status") == n_cells[k].result.get("status") == "unsupported")]
    verdicts, _ = duet.judge_pairs([(b_cells[k].result, n_cells[k].result) for k in keys], threshold, centre, seed)
    out = []
    for k, j in zip(keys, verdicts):
        rb, rn, c = b_cells[k].result, n_cells[k].result, b_cells[k].cell
        out.append({"backend": c.backend, "mode": c.mode, "preset": c.preset,
                    "batch": c.batch, "seq_len": c.seq_len, "device": c.device,
                    "precision": c.precision, "workload": k[0],
                    "base": rb.get("estimate_s"), "new": rn.get("estimate_s"), **j.to_json()})
    return out


def _r(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def format_table(entries: list[dict[str, Any]], base: str, new: str, threshold: float) -> list[str]:
    """Ratios first: one row per cell, the mark and what decided it."""
    rows = []
    for e in entries:
        lo, hi = e["ci"]
        elo, ehi = e["ci90"]
        rows.append([e["backend"], e["mode"], e["preset"], str(e["batch"]),
                     fmt_time(e["base"]) if e["base"] else "-", fmt_time(e["new"]) if e["new"] else "-",
                     f"{_r(e['ratio'])} [{_r(lo)}, {_r(hi)}]" if e["ratio"] is not None else "-",
                     f"[{_r(elo)}, {_r(ehi)}]" if elo is not None else "-",
                     str(e["processes"]), e["mark"].upper() if e["mark"] in ("slower", "failed") else e["mark"],
                     e["reason"]])
    head = ["backend", "mode", "preset", "batch", base, new, f"{new}/{base} [95% CI]",
            f"90% CI vs +-{threshold:.0%}", "procs", "mark", "why"]
    return text_table(head, rows, {3, 4, 5, 6, 7, 8})


def noise_lines(doc: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """Noise after the ratios: the run's verdict and spreads, and the between-process spread
    the intervals carry."""
    n = doc.get("noise") or {}
    out = [f"machine noise during the run: {str(n.get('verdict') or 'unknown').upper()}"
           + (f", {100 * n['contended_fraction']:.0f}% of probe rounds contended"
              if isinstance(n.get("contended_fraction"), (int, float)) else "")]
    rs = n.get("round_spread") or {}
    if rs.get("median"):
        out.append(f"cells' own rounds: median round {rs['median']:.2f}x the fastest (90% of cells "
                   f"within {rs['q90']:.2f}x): the host's swings, which the paired ratio cancels")
    if isinstance(n.get("foreign_cores_max"), (int, float)):
        out.append(f"other processes on this machine: up to {n['foreign_cores_max']:.2f} cores busy "
                   "during a workload (both variants shared that, round by round)")
    taus = [e for e in entries if e.get("tau") is not None]
    if taus:
        t = taus[0]
        out.append(f"between worker processes: {100 * t['tau']:.1f}% SD of a process's log ratio"
                   + (" (assumed: one process per variant shows none; measured on this project's "
                      "machine, docs/measurement.md)" if t["tau_assumed"] else
                      f" (pooled over the cells, {max(e['processes'] for e in taus)} processes per variant)"))
    return out


def run_compare_variants(path: str, variants: str | None, *, threshold: float,
                         fail_on_regression: bool, json_path: str | Path | None = None,
                         log: Callable[[str], None] = print) -> int:
    """Print the in-run comparison of one results file (and write --json); 1 under
    fail_on_regression on a slower or newly failing cell or when nothing was compared."""
    files = expand_paths([path])
    if len(files) != 1:
        raise UsageError(f"--variants compares the variants of one run; {path} holds {len(files)} "
                         "results files: give one")
    run, cells = read_run(files[0])
    doc = run.doc
    base, new = choose_variants(doc, variants, str(files[0]))
    entries = compare_cells(cells, base, new, threshold)
    log(f"{files[0]}: variant {new} against {base}, paired rounds within one run "
        f"(threshold {threshold:.0%}; time ratio > 1 is slower)")
    log(f"  columns {base} and {new}: each side's fastest round (the run's headline); the ratio: the "
        "median of the paired rounds' ratios per worker process, averaged over processes")
    for name in (base, new):
        v = (doc.get("variants") or {}).get(name) or {}
        src = v.get("source") or {}
        log(f"  {name}: {v.get('text', name)}"
            + (f" (commit {str(src['commit'])[:12]})" if src.get("commit") else ""))
    log("")
    for ln in format_table(entries, base, new, threshold):
        log(ln)
    counts = {m: sum(e["mark"] == m for e in entries)
              for m in ("slower", "faster", "unchanged", "inconclusive", "failed")}
    log("")
    log(", ".join(f"{v} {k}" for k, v in counts.items()))
    log("")
    for ln in noise_lines(doc, entries):
        log(ln)
    regress = [f"{e['backend']} {e['mode']} {e['preset']} B{e['batch']} {e['mark']}"
               for e in entries if e["regression"]]
    if not any(e["mark"] not in ("failed",) for e in entries):
        regress.insert(0, "no cell was measured by both variants")
    write_json(json_path, {"schema": "lstmbench.compare", "schema_version": 1, "kind": "variants",
                           "results": str(files[0]), "base": base, "new": new, "threshold": threshold,
                           "centre": duet.CENTRE, "counts": counts, "regressions": regress,
                           "cells": entries}, log)
    if fail_on_regression and regress:
        log(f"regression: {'; '.join(regress[:5])}" + (f" and {len(regress) - 5} more" if len(regress) > 5 else ""))
        return 1
    return 0


# ---- lstmbench ab --------------------------------------------------------------------------

def side(name: str, text: str) -> Variant:
    """A side of `ab`: `python:PATH`, a source folder, or a git revision of this checkout."""
    if text.startswith("python:"):
        return parse_variant(f"{name}:python={text[len('python:'):]}")
    if not text:
        raise UsageError(f"ab: the {name} side is empty; give a revision, a folder or python:PATH")
    check_src(text, f"ab {name.upper()}")
    return parse_variant(f"{name}:src={text}")


def cmd_ab(a: argparse.Namespace) -> int:
    base, new = side("base", a.base), side("new", a.new)
    threshold = percent(a.threshold)
    positive_threads(a.threads)
    target = json_target(a.json)  # before anything is measured
    log = text_log(target)
    paths = run_matrix(run_settings(a, default_matrix="smoke", variants=[base, new]),
                       reporter=RunConsole(summary=False), log=log)
    path = paths[0]
    log("")
    return run_compare_variants(str(path), "base,new", threshold=threshold,
                                fail_on_regression=a.fail_on_regression, json_path=target, log=log)


def add_parser(sub: Any) -> None:
    """`lstmbench ab`: called by harness.cli.build_parser."""
    p = sub.add_parser("ab", help="is NEW faster than BASE? both measured in one interleaved run")
    p.add_argument("base", help="a git revision of this checkout, a source folder, or python:PATH")
    p.add_argument("new", help="the same kinds as BASE")
    add_run_options(p, default_matrix="smoke")
    p.add_argument("--threshold", default="10%", help="smallest change that counts (default 10%%)")
    add_json(p, "one entry per cell")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 on a slower cell, a cell NEW fails where BASE measured, or nothing compared")
    p.set_defaults(fn=cmd_ab)
