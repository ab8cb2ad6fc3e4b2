"""The one model of a run: a results file read back (harness.results.schema.load_results) as a
Run with its RunCells, every sample checked, each cell's status, variant, workload and threads
made plain; and runs of one cell pooled (Pooled), a side of several files (Side). compare,
report, `compare --variants`/`ab` and load_dataframe all read results through read_run."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from impls.config import ConfigError

from ..engine import stats
from ..engine.bench import Cell
from ..envs.variants import participant
from .schema import ResultsError, is_number, load_results, validate_samples
from .store import expand_paths

PathLike = str | os.PathLike[str]


@dataclass
class Run:
    """One results file: what compare and report need of its top level."""
    path: str
    machine: str
    version: int
    estimator: str  # the headline estimator's name (v1: median)
    threads: Any
    probe_s: list[float | None]  # one per round of the run, in order (v2), else []
    best_gflops: float | None
    floor: float | None  # stats.noise_floor of the probe rounds
    contended: float | None  # share of probe rounds slower than 1.5x the best
    verdict: str | None  # noise verdict the run recorded (quiet | noisy | contended)
    doc: dict[str, Any]
    probe_best: dict[str, float] = field(default_factory=dict)  # workload id -> fastest probe round (s)
    foreign: dict[str, float] = field(default_factory=dict)  # workload id -> cores other processes used


@dataclass
class RunCell:
    """One cell as one run measured it: its Cell, its record and result as stored, and what
    they say (status, samples, noisy, workload, variant, threads)."""
    run: Run
    cell: Cell  # None only from read_run(strict=False), for a record that is not a Cell
    record: dict[str, Any]  # the cell record as stored (sizes, backend, mode, ...)
    result: dict[str, Any]
    status: str  # ok | noisy | a failure kind; "nan" also for NaN samples
    error: str
    samples: list[dict[str, Any]]  # {"s", "process", "round", "probe_s", "clean"}
    noisy: bool
    workload: str | None = None  # the workload id it was measured in (v2)
    variant: str | None = None  # the variant that measured it (v3, harness.envs.variants), if any
    threads: Any = None  # the threads it ran with (its variant's threads=, else the run's)

    @property
    def name(self) -> str:
        """Its participant name: BACKEND, or BACKEND@VARIANT."""
        return participant(self.cell.backend, self.variant)

    @property
    def measured(self) -> bool:
        return self.status in ("ok", "noisy") and bool(self.samples)

    def values(self, normalize: bool = False, clean_only: bool = True) -> list[np.ndarray]:
        """Per-process arrays of seconds per step (or s / probe_s) of the rounds the headline
        uses: the clean ones (`clean_only`), or every round when too few are clean or the
        estimator is the minimum (as harness.engine.stats does)."""
        use = [s for s in self.samples if s["clean"]] if clean_only else list(self.samples)
        if len(use) < stats.MIN_CLEAN:
            use = list(self.samples)
        out: dict[int, list[float]] = {}
        for s in sorted(use, key=lambda s: (s["process"], s["round"])):
            if normalize:
                if not s["probe_s"]:
                    continue
                out.setdefault(s["process"], []).append(s["s"] / s["probe_s"])
            else:
                out.setdefault(s["process"], []).append(s["s"])
        return [np.asarray(out[k]) for k in sorted(out)]

    @property
    def unclean_share(self) -> float:
        return sum(not s["clean"] for s in self.samples) / len(self.samples) if self.samples else 0.0


def _probe_blocks(doc: dict[str, Any]) -> list[list[float | None]] | None:
    """The probe rounds of each workload (v2), the noise floor's blocks; None if absent."""
    ws = doc.get("workloads")
    if not isinstance(ws, list):
        return None
    out = [[float(v) if is_number(v) and math.isfinite(v) and v > 0 else None for v in w["probe_s"]]
           for w in ws if isinstance(w, dict) and isinstance(w.get("probe_s"), list)]
    return out or None


def _probe_best(doc: dict[str, Any]) -> dict[str, float]:
    """Each workload's fastest probe round (seconds), by workload id (v2 files)."""
    out: dict[str, float] = {}
    for w in doc.get("workloads") or []:
        if isinstance(w, dict) and isinstance(w.get("id"), str) and isinstance(w.get("probe_s"), list):
            vals = [float(v) for v in w["probe_s"] if is_number(v) and math.isfinite(v) and v > 0]
            if vals:
                out[w["id"]] = min(vals)
    return out


def _foreign(doc: dict[str, Any]) -> dict[str, float]:
    """Each workload's cores kept busy by other processes (harness.engine.cpuload), where recorded."""
    return {w["id"]: float(w["foreign_cores"]) for w in doc.get("workloads") or []
            if isinstance(w, dict) and isinstance(w.get("id"), str) and is_number(w.get("foreign_cores"))}


def read_run(path: PathLike, *, strict: bool = True) -> tuple[Run, list[RunCell]]:
    """Load and validate one results file. Impossible values (null machine, a sample that is
    not a number, zero, negative or infinite) are a ResultsError naming the file, the cell and
    the value; a NaN sample makes that cell failed with status "nan". A cell record that is no
    Cell (a field missing or unknown) is a ResultsError too; not with strict=False, for readers
    that need the record alone (load_dataframe), where that cell's `cell` is None."""
    p = Path(path)
    doc = load_results(p)
    machine = doc["machine"]  # a machine record: load_results checked it
    version = int(doc.get("schema_version") or 1)
    est = (doc.get("estimator") or {}).get("name") if isinstance(doc.get("estimator"), dict) else None
    probe = doc.get("probe") if isinstance(doc.get("probe"), dict) else {}
    rounds = probe.get("rounds_s") if isinstance(probe.get("rounds_s"), list) else []
    probe_s = [float(v) if is_number(v) and math.isfinite(v) and v > 0 else None for v in rounds]
    best = probe.get("best_gflops")
    best = float(best) if is_number(best) and math.isfinite(best) and best > 0 else None
    noise = doc.get("noise") if isinstance(doc.get("noise"), dict) else {}
    contended = noise.get("contended_fraction")
    contended = float(contended) if is_number(contended) else stats.contended_share(probe_s)
    kind = machine.get("kind")  # a cluster run's machine kind names it; else the machine's slug
    run = Run(str(p), kind if isinstance(kind, str) and kind else str(machine.get("slug", "?")), version,
              est if isinstance(est, str) and est in stats.ESTIMATORS else "median",
              doc.get("threads"), probe_s, best, stats.noise_floor(probe_s, _probe_blocks(doc)), contended,
              noise.get("verdict") if isinstance(noise.get("verdict"), str) else None, doc,
              _probe_best(doc), _foreign(doc))
    cells: list[RunCell] = []
    for i, entry in enumerate(doc["cells"]):
        record = entry["cell"]
        try:
            cell = Cell.from_dict(record)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            if strict:
                raise ResultsError(f"{p}: cell {i} is malformed ({type(e).__name__}: {e})") from None
            cell = None
        res = entry.get("result") if isinstance(entry.get("result"), dict) else {}
        status = str(res.get("status") or "no result")
        error = str(res.get("error") or "").splitlines()[0] if res.get("error") else ""
        samples = validate_samples(res, f"{p}: cell {i} ({record.get('backend', '?')} {record.get('mode', '?')})")
        noisy = bool(res.get("noisy")) or status == "noisy"
        nan = [j for j, s in enumerate(samples) if math.isnan(s["s"])]
        if nan and status in ("ok", "noisy"):
            status, error = "nan", f"sample {nan[0]} of {len(samples)} is NaN (an invalid measurement)"
            samples = []
        if status in ("ok", "noisy") and not samples:
            status, error = "error", error or "no timed rounds recorded"
        wid = entry.get("workload")
        variant = entry.get("variant")
        cells.append(RunCell(run, cell, record, res, status, error, samples, noisy,
                             wid if isinstance(wid, str) else None, variant,
                             variant_threads(doc, variant)))
    return run, cells


def read_runs(paths: PathLike | Iterable[PathLike], *, strict: bool = True) -> list[tuple[Run, list[RunCell]]]:
    """Every results file of `paths` (files, or folders searched: store.expand_paths) read and
    checked (read_run): a bad one fails here, before anything is written."""
    return [read_run(p, strict=strict) for p in expand_paths(paths)]


def variant_threads(doc: dict[str, Any], variant: str | None) -> Any:
    """The threads a cell ran with: its variant's threads= where it set one, else the run's."""
    v = (doc.get("variants") or {}).get(variant or "") if variant else None
    return (v or {}).get("threads") or doc.get("threads")


@dataclass
class Pooled:
    """Every run of one cell on one side of the comparison."""
    cell: Cell
    threads: Any  # the run's --threads: part of what was measured, though not of the Cell
    runs: list[RunCell] = field(default_factory=list)
    variant: str | None = None  # the variant that measured it (v3), part of what was measured

    @property
    def name(self) -> str:
        """BACKEND, or BACKEND@VARIANT."""
        return participant(self.cell.backend, self.variant)

    @property
    def measured(self) -> list[RunCell]:
        return [r for r in self.runs if r.measured]

    @property
    def ok(self) -> bool:
        return bool(self.measured)

    @property
    def noisy(self) -> bool:
        return any(r.noisy for r in self.measured)

    @property
    def failed(self) -> list[str]:
        return [f"{r.status}" + (f": {r.error}" if r.error else "") for r in self.runs if not r.measured]

    def status(self) -> str:
        f = self.failed
        if not f:
            return "noisy" if self.noisy else "ok"
        if self.ok:
            return f"ok in {len(self.measured)} of {len(self.runs)} runs ({f[0]})"
        return f[0]

    def side(self, normalize: bool) -> list[list[np.ndarray]]:
        # normalised values are judged by their median, which keeps to the clean rounds
        return [r.values(normalize, clean_only=normalize or not stats.uses_every_round(r.run.estimator))
                for r in self.measured]

    @property
    def workload(self) -> str | None:
        """The workload id its runs measured it in (v2 files), else None."""
        return next((r.workload for r in self.measured if r.workload), None)

    def n_used(self, normalize: bool) -> int:
        return sum(a.size for run in self.side(normalize) for a in run)

    @property
    def unclean_share(self) -> float:
        m = self.measured
        n = sum(len(r.samples) for r in m)
        return sum(r.unclean_share * len(r.samples) for r in m) / n if n else 0.0


@dataclass
class Side:
    files: list[str]
    cells: dict[tuple, Pooled]
    runs: list[Run]

    @property
    def machines(self) -> set[str]:
        return {r.machine for r in self.runs}


def load_side(paths: PathLike | Iterable[PathLike]) -> Side:
    """Load result files or folders and pool the cells that several runs measured."""
    plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = expand_paths(plist)
    cells: dict[tuple, Pooled] = {}
    runs: list[Run] = []
    for f in files:
        run, rcs = read_run(f)
        runs.append(run)
        for rc in rcs:  # a variant is part of what was measured: torch@a pairs with torch@a
            p = cells.setdefault((rc.cell.key(), rc.threads, rc.variant),
                                 Pooled(rc.cell, rc.threads, variant=rc.variant))
            p.runs.append(rc)
    return Side([str(f) for f in files], cells, runs)
