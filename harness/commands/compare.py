"""`lstmbench compare OLD NEW`: which cells got slower or faster between two runs, and which
the noise of the machine leaves undecided.

Cells are paired by what they measure (Cell.key(): backend, mode, sizes, optimiser, batch,
sequence length, device, dtype, precision; and the run's thread count), never by seed or
machine. Each side's figure is the run's headline estimator (results schema v2 `estimator`,
e.g. the minimum; v1 files: the median) over its rounds (every round for the minimum, the
clean ones for other estimators: harness.stats.uses_every_round); both sides
are judged with the same estimator. The interval of the ratio new/old comes from a
hierarchical bootstrap over runs (several files of one cell on a side), worker processes and
rounds (harness.significance). Marks:

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

--normalize divides each round's time by the probe time of the same round, so that runs on
machines of different speed (or one machine at different moments) can be compared; the
headline is then the median of those quotients (their minimum would select the rounds whose
probe happened to run slow)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from impls.config import ConfigError
from impls.files import temp_beside

from ..engine import significance as sig
from ..engine import stats
from ..engine.bench import Cell
from ..results.schema import ResultsError, expand_paths, load_results, validate_samples, variant_threads
from ..engine.variants import participant

PathLike = str | os.PathLike[str]

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
FAILED = ("error", "nan", "oom", "timeout", "crash", "killed", "malformed", "invalid")


# ---- reading runs (v1 and v2), validated ------------------------------------------------

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
    floor: float | None  # significance.noise_floor of the probe rounds
    contended: float | None  # share of probe rounds slower than 1.5x the best
    verdict: str | None  # noise verdict the run recorded (quiet | noisy | contended)
    doc: dict[str, Any]
    probe_best: dict[str, float] = field(default_factory=dict)  # workload id -> fastest probe round (s)
    foreign: dict[str, float] = field(default_factory=dict)  # workload id -> cores other processes used


@dataclass
class RunCell:
    """One cell as one run measured it."""
    run: Run
    cell: Cell
    result: dict[str, Any]
    status: str  # ok | noisy | a failure kind; "nan" also for NaN samples
    error: str
    samples: list[dict[str, Any]]  # {"s", "process", "round", "probe_s", "clean"}
    noisy: bool
    workload: str | None = None  # the workload id it was measured in (v2)
    variant: str | None = None  # the variant that measured it (v3, harness.variants), if any
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
        estimator is the minimum (as harness.stats does)."""
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


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _probe_blocks(doc: dict[str, Any]) -> list[list[float | None]] | None:
    """The probe rounds of each workload (v2), the noise floor's blocks; None if absent."""
    ws = doc.get("workloads")
    if not isinstance(ws, list):
        return None
    out = [[float(v) if _num(v) and math.isfinite(v) and v > 0 else None for v in w["probe_s"]]
           for w in ws if isinstance(w, dict) and isinstance(w.get("probe_s"), list)]
    return out or None


def _probe_best(doc: dict[str, Any]) -> dict[str, float]:
    """Each workload's fastest probe round (seconds), by workload id (v2 files)."""
    out: dict[str, float] = {}
    for w in doc.get("workloads") or []:
        if isinstance(w, dict) and isinstance(w.get("id"), str) and isinstance(w.get("probe_s"), list):
            vals = [float(v) for v in w["probe_s"] if _num(v) and math.isfinite(v) and v > 0]
            if vals:
                out[w["id"]] = min(vals)
    return out


def _foreign(doc: dict[str, Any]) -> dict[str, float]:
    """Each workload's cores kept busy by other processes (harness.cpuload), where recorded."""
    return {w["id"]: float(w["foreign_cores"]) for w in doc.get("workloads") or []
            if isinstance(w, dict) and isinstance(w.get("id"), str) and _num(w.get("foreign_cores"))}


def read_run(path: PathLike) -> tuple[Run, list[RunCell]]:
    """Load and validate one results file. Impossible values (null machine, a sample that is
    not a number, zero, negative or infinite) are a ResultsError naming the file, the cell and
    the value; a NaN sample makes that cell failed with status "nan"."""
    p = Path(path)
    doc = load_results(p)
    machine = doc.get("machine")
    if not isinstance(machine, dict):
        raise ResultsError(f"{p}: 'machine' is {machine!r}, not a machine record; the file is "
                           "corrupt or was edited (re-run to get a valid one)")
    version = int(doc.get("schema_version") or 1)
    est = (doc.get("estimator") or {}).get("name") if isinstance(doc.get("estimator"), dict) else None
    probe = doc.get("probe") if isinstance(doc.get("probe"), dict) else {}
    rounds = probe.get("rounds_s") if isinstance(probe.get("rounds_s"), list) else []
    probe_s = [float(v) if _num(v) and math.isfinite(v) and v > 0 else None for v in rounds]
    best = probe.get("best_gflops")
    best = float(best) if _num(best) and math.isfinite(best) and best > 0 else None
    noise = doc.get("noise") if isinstance(doc.get("noise"), dict) else {}
    contended = noise.get("contended_fraction")
    contended = float(contended) if _num(contended) else sig.contended_share(probe_s)
    run = Run(str(p), str(machine.get("slug", "?")), version,
              est if isinstance(est, str) and est in stats.ESTIMATORS else "median",
              doc.get("threads"), probe_s, best, sig.noise_floor(probe_s, _probe_blocks(doc)), contended,
              noise.get("verdict") if isinstance(noise.get("verdict"), str) else None, doc,
              _probe_best(doc), _foreign(doc))
    cells: list[RunCell] = []
    for i, entry in enumerate(doc["cells"]):
        try:
            cell = Cell.from_dict(entry["cell"])
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise ResultsError(f"{p}: cell {i} is malformed ({type(e).__name__}: {e})") from None
        res = entry.get("result") if isinstance(entry.get("result"), dict) else {}
        status = str(res.get("status") or "no result")
        error = str(res.get("error") or "").splitlines()[0] if res.get("error") else ""
        samples = validate_samples(res, f"{p}: cell {i} ({cell.label()})")
        noisy = bool(res.get("noisy")) or status == "noisy"
        nan = [j for j, s in enumerate(samples) if math.isnan(s["s"])]
        if nan and status in ("ok", "noisy"):
            status, error = "nan", f"sample {nan[0]} of {len(samples)} is NaN (an invalid measurement)"
            samples = []
        if status in ("ok", "noisy") and not samples:
            status, error = "error", error or "no timed rounds recorded"
        wid = entry.get("workload")
        variant = entry.get("variant")
        cells.append(RunCell(run, cell, res, status, error, samples, noisy,
                             wid if isinstance(wid, str) else None, variant,
                             variant_threads(doc, variant)))
    return run, cells


# ---- one side: every run of every cell --------------------------------------------------

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


def fmt_time(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


# ---- the verdict ----------------------------------------------------------------------

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


def _pct(x: float) -> str:
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
            contended[name] = f"{_pct(share)} of rounds"
        elif any(r.verdict == "contended" for r in runs):
            contended[name] = f"{_pct(worst)} of probe rounds"
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
                    f"varied {_pct(floor)}")
    elif ((lo > 1 and ratio > up) or (hi < 1 and ratio < down)) and explained == shift:
        v.reason = (f"change {ratio - 1:+.0%} is mostly the machine's: its probe ran "
                    f"{abs(shift - 1):.0%} {'slower' if shift > 1 else 'faster'} in this workload "
                    f"of the new run, leaving {beyond - 1:+.0%}, within the threshold")
    elif (lo > 1 and ratio > up) or (hi < 1 and ratio < down):
        v.reason = (f"change {ratio - 1:+.0%} is mostly shared: every backend of this workload moved "
                    f"{explained - 1:+.0%} together, within what this machine drifts between runs of "
                    f"identical code (up to {_pct(WORKLOAD_DRIFT)}), leaving {beyond - 1:+.0%}")
    else:
        v.reason = (f"90% interval [{eq_lo:.3f}, {eq_hi:.3f}] reaches beyond the threshold "
                    f"+-{_pct(threshold)}")
    v.regression = v.mark == "slower"
    return v


def _decided(v: Verdict, threshold: float, floor: float, beyond: float) -> str:
    """What gave a faster, slower or unchanged mark, in the words of the module docstring:
    the 95% interval on the side of 1 and the change beyond the threshold, the noise floor and
    what the machine explains; or the 90% interval inside +-threshold."""
    if v.mark == "unchanged":
        return f"90% interval [{v.eq_lo:.3f}, {v.eq_hi:.3f}] within +-{_pct(threshold)}"
    side = "above" if v.mark == "slower" else "below"
    out = (f"95% interval [{v.lo:.3f}, {v.hi:.3f}] {side} 1; change {v.ratio - 1:+.0%} beyond "
           f"+-{_pct(threshold)}")
    if floor > threshold:
        out += f" and the noise floor {_pct(floor)}"
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


def _table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(f"{c:>{w}}" if i in right else f"{c:<{w}}"
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [line(head), line(["-" * w for w in widths]), *map(line, rows)]


def _fnum(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def write_json(path: PathLike, doc: dict[str, Any]) -> Path:
    """Atomic: a temporary file beside the target, fsynced, renamed over it."""
    path = Path(path)
    if path.is_dir():
        raise ResultsError(f"--json {path}: is a folder; give a file name")
    data = json.dumps(doc, indent=1).encode()
    try:
        fd, tmp = temp_beside(path)
    except OSError as e:
        raise ResultsError(f"--json {path}: cannot write there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ResultsError(f"--json {path}: cannot write ({e.strerror or e})") from None
    return path


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
                    f"{r.best_gflops or 0:.0f} GFLOP/s, floor {_pct(r.floor or 0)}, "
                    f"contended {_pct(r.contended or 0)} of rounds")
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
        log(f"between-run spread: cells' ratios scatter {_pct(math.expm1(run_spread))} (robust SD) "
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
        for ln in _table(["backend", "mode", "preset", "batch", "old", "new", "ratio [95% CI]", "90% CI",
                          "mark", "why"], rows, {3, 4, 5, 6, 7}):
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
    if json_path is not None:
        out = write_json(json_path, {
            "schema": "lstmbench.compare", "schema_version": 1, "old": a.files, "new": b.files,
            "threshold": threshold, "estimator": estimator, "normalize": normalize,
            "unit": "round time / probe time" if normalize else "seconds per step",
            "machines_differ": speeds, "counts": counts,
            "regressions": regress, "cells": entries})
        log(f"wrote {out}")
    if fail_on_regression and regress:
        log(f"regression: {'; '.join(regress[:5])}" + (f" and {len(regress) - 5} more" if len(regress) > 5 else ""))
        return 1
    if nan_cells:
        raise ResultsError(f"{len(nan_cells)} cell(s) hold NaN samples ({nan_cells[0]}): invalid "
                           "measurements; re-run them")
    return 0
