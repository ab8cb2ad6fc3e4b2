"""`lstmbench compare OLD NEW`: which cells got slower or faster between two runs.

Cells are paired by what they measure (Cell.key(): backend, mode, sizes, optimiser, batch,
sequence length, device, dtype, precision; and the run's thread count), never by seed or
machine. A cell is called slower or
faster only when the change is both significant (Mann-Whitney p < 0.05 and a bootstrap 95%
interval of the ratio of medians that excludes 1) and larger than the threshold; anything else
is "unchanged". Several runs of one cell on a side (folders) have their samples pooled."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from impls.config import ConfigError

from .bench import Cell
from .results import ResultsError, expand_paths, load_results
from .stats import bootstrap_ratio, mann_whitney_p

ALPHA = 0.05  # significance level of both tests

PathLike = str | os.PathLike[str]


@dataclass
class Pooled:
    """Every run of one cell on one side of the comparison."""
    cell: Cell
    threads: Any  # the run's --threads: part of what was measured, though not of the Cell
    samples: list[float] = field(default_factory=list)  # seconds per step, ok runs only
    runs: int = 0  # how many runs measured this cell
    failed: list[str] = field(default_factory=list)  # "status: error" of each run that failed

    @property
    def ok(self) -> bool:
        return bool(self.samples)

    def status(self) -> str:
        if not self.failed:
            return "ok"
        if self.samples:  # some runs ok: compare those, but say the others failed
            return f"ok in {self.runs - len(self.failed)} of {self.runs} runs ({self.failed[0]})"
        return self.failed[0]


@dataclass
class Side:
    files: list[str]
    cells: dict[tuple, Pooled]
    machines: set[str]


def load_side(paths: PathLike | Iterable[PathLike]) -> Side:
    """Load result files or folders and pool the cells that several runs measured."""
    plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = expand_paths(plist)
    cells: dict[tuple, Pooled] = {}
    machines: set[str] = set()
    for f in files:
        doc = load_results(f)
        machine = str(doc.get("machine", {}).get("slug", "?"))
        machines.add(machine)
        for i, entry in enumerate(doc["cells"]):
            try:
                cell = Cell.from_dict(entry["cell"])
            except (KeyError, TypeError, ConfigError) as e:
                raise ResultsError(f"{f}: cell {i} is malformed ({type(e).__name__}: {e})") from None
            res = entry.get("result") or {}
            threads = doc.get("threads")
            p = cells.setdefault((cell.key(), threads), Pooled(cell, threads))
            p.runs += 1
            samples = res.get("samples_s") or []
            if res.get("status") == "ok" and samples:
                p.samples.extend(float(s) for s in samples)
            else:
                err = str(res.get("error") or "").splitlines()[0:1]
                p.failed.append(f"{res.get('status', 'no result')}" + (f": {err[0]}" if err else ""))
    return Side([str(f) for f in files], cells, machines)


def _loose_id(c: Cell) -> tuple:
    """What a user would call "the same cell" even when its sizes changed."""
    return (c.backend, c.mode, c.preset, c.batch)


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


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


@dataclass
class Pair:
    old: Pooled
    new: Pooled
    ratio: float
    lo: float
    hi: float
    p: float
    mark: str  # slower | faster | unchanged


def judge(old: list[float], new: list[float], threshold: float) -> tuple[float, float, float, float, str]:
    """Ratio of medians new/old, its 95% CI, the Mann-Whitney p, and the verdict."""
    ratio, lo, hi = bootstrap_ratio(old, new)
    p = mann_whitney_p(old, new)
    significant = p < ALPHA
    if significant and lo > 1 and ratio > 1 + threshold:
        mark = "slower"
    elif significant and hi < 1 and ratio < 1 / (1 + threshold):
        mark = "faster"
    else:
        mark = "unchanged"
    return ratio, lo, hi, p, mark


def _table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(f"{c:>{w}}" if i in right else f"{c:<{w}}"
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [line(head), line(["-" * w for w in widths]), *map(line, rows)]


def run_compare(old: PathLike | Iterable[PathLike], new: PathLike | Iterable[PathLike], *,
                threshold: float, fail_on_regression: bool,
                log: Callable[[str], None] = print) -> int:
    """Print the comparison; returns 1 when fail_on_regression and any cell is slower, else 0."""
    a, b = load_side(old), load_side(new)
    log(f"old: {len(a.files)} file(s), machine {', '.join(sorted(a.machines))}")
    log(f"new: {len(b.files)} file(s), machine {', '.join(sorted(b.machines))}")
    if a.machines != b.machines:
        log("note: the two sides ran on different machines; cells are paired all the same")
    pooled = sum(p.runs > 1 for s in (a, b) for p in s.cells.values())
    if pooled:
        log(f"note: {pooled} cell(s) were measured in several runs on one side; their samples are pooled")

    pairs: list[Pair] = []
    not_ok: list[list[str]] = []
    for key, po in a.cells.items():
        pn = b.cells.get(key)
        if pn is None:
            continue
        c = po.cell
        if po.ok and pn.ok:
            pairs.append(Pair(po, pn, *judge(po.samples, pn.samples, threshold)))
            continue
        not_ok.append([c.backend, c.mode, c.preset, str(c.batch), po.status(), pn.status()])

    incomparable: list[list[str]] = []
    only: list[list[str]] = []
    unmatched_new = {k: v for k, v in b.cells.items() if k not in a.cells}
    by_loose: dict[tuple, list[Pooled]] = {}
    for v in unmatched_new.values():
        by_loose.setdefault(_loose_id(v.cell), []).append(v)
    for key, po in a.cells.items():
        if key in b.cells:
            continue
        c = po.cell
        cands = by_loose.get(_loose_id(c), [])
        if cands:
            pn = cands.pop(0)
            incomparable.append([c.backend, c.mode, c.preset, str(c.batch), differences(po, pn)])
        else:
            only.append([c.backend, c.mode, c.preset, str(c.batch), "old only"])
    for rest in by_loose.values():
        for pn in rest:
            c = pn.cell
            only.append([c.backend, c.mode, c.preset, str(c.batch), "new only"])

    counts = {"slower": 0, "faster": 0, "unchanged": 0}
    if pairs:
        rows = []
        for pr in pairs:
            c = pr.old.cell
            counts[pr.mark] += 1
            mo, mn = float(np.median(pr.old.samples)), float(np.median(pr.new.samples))
            rows.append([c.backend, c.mode, c.preset, str(c.batch), fmt_time(mo), fmt_time(mn),
                         f"{pr.ratio:.3f} [{pr.lo:.3f}, {pr.hi:.3f}]", f"{pr.p:.3g}",
                         pr.mark.upper() if pr.mark == "slower" else pr.mark])
        log("")
        log(f"per-step time, median of samples (new/old ratio > 1 is slower; threshold "
            f"{threshold:.0%}, p < {ALPHA}, 95% bootstrap CI):")
        for ln in _table(["backend", "mode", "preset", "batch", "old median", "new median",
                          "ratio [95% CI]", "p", "mark"], rows, {3, 4, 5, 6, 7}):
            log(ln)
    if not_ok:
        log("")
        log("not compared (a side has no successful measurement):")
        for ln in _table(["backend", "mode", "preset", "batch", "old", "new"], not_ok, {3}):
            log(ln)
    if incomparable:
        log("")
        log("incomparable (same backend, mode, preset and batch, but a different cell):")
        for ln in _table(["backend", "mode", "preset", "batch", "why"], incomparable, {3}):
            log(ln)
    if only:
        log("")
        log("on one side only:")
        for ln in _table(["backend", "mode", "preset", "batch", "side"], only, {3}):
            log(ln)
    log("")
    log(f"{counts['slower']} slower, {counts['faster']} faster, {counts['unchanged']} unchanged, "
        f"{len(incomparable)} incomparable"
        + (f", {len(not_ok)} not ok" if not_ok else "")
        + (f", {len(only)} on one side only" if only else ""))
    return 1 if fail_on_regression and counts["slower"] else 0
