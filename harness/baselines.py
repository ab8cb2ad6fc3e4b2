"""`lstmbench baselines`: is each backend as fast as the plainest code its own framework's users
write? (issue 11, item 6: fair to every framework.)

benchmarks/baselines/ holds, per framework, a hand-written train step and eval step
(`make_step`, `make_eval`). For every (preset, mode) this command measures one workload whose
participants are the selected backends AND the baselines they need, interleaved by the same
engine as `lstmbench run` (harness.run.measure_workload: seeded random order per round, the
GEMM noise probe, clean rounds, re-measurement). Each participant lives in a worker process
of its own; a baseline's worker runs in its backend's interpreter with its backend's
environment variables (KERAS_BACKEND) and is set up by its backend module's configure()
(thread pools, library flags), so the ratio measures the step's code, not process settings.

Per backend: time ratio backend / baseline from the rounds both ran (paired by round:
harness.stats.paired_ratio, the run's estimator, its bootstrap 95% interval), and a mark:
`ok` when the whole interval is within 10% (hi <= 1.10), `slower` when its lower bound
exceeds 1.10, `inconclusive` otherwise; a backend more than 10% slower carries its reason from
REASONS (measured causes only). Results: one JSON document (schema lstmbench.baselines),
written atomically and never over an existing file, and a Markdown table on stdout;
progress on stderr.

The mapping backend -> baseline is each backend's registry entry (BackendSpec.baseline and
baseline_note, impls/registry.py): a new backend names its baseline, or why it has none, there;
the baseline's file is benchmarks/baselines/<baseline>_baseline.py."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from impls import registry
from impls.config import get_preset

from .envs import ROOT, UsageError, _is_lstmbench_checkout, project_root
from .pool import worker_cpus

THRESHOLD = 1.10  # a backend more than 10% slower than its baseline must be fixed or explained
MODES = ("train", "eval")
DEFAULT_PRESETS = ("char-rnn", "tutorial")
SCHEMA = "lstmbench.baselines"
SCHEMA_VERSION = 1


def baseline_file(name: str) -> str:
    """The file in benchmarks/baselines/ of baseline `name` (a BackendSpec.baseline)."""
    return f"{name}_baseline.py"


@dataclass(frozen=True)
class Entry:
    baseline: str | None  # a BackendSpec.baseline: benchmarks/baselines/<baseline>_baseline.py, or None
    note: str  # why this baseline (or why none)


# backend -> its baseline, read from each backend's registry entry (the one place it is
# written), so that a new backend brings its baseline with it and nothing here changes
BASELINES: dict[str, Entry] = {b: Entry(s.baseline, s.baseline_note)
                               for b, s in registry.BACKENDS.items()}

# (backend, mode) -> why that backend is more than 10% slower than its baseline, from
# measurements (docs: benchmarks/baselines/README.md). Mode "*" covers both modes.
REASONS: dict[tuple[str, str], str] = {
    ("torch-cell", "*"): ("char-rnn's cell by design: a Python loop of i2h + h2h Linear calls "
                          "per time step, where nn.LSTM runs one fused oneDNN kernel per layer"),
    ("tensorflow-xla", "train"): ("jit_compile=True by design: XLA:CPU's compiled while-loop LSTM "
                                  "and its gradient are slower here than TF's oneDNN graph kernels; "
                                  "the same step without XLA (tensorflow) matches the baseline"),
}


def reason_for(backend: str, mode: str) -> str | None:
    return REASONS.get((backend, mode)) or REASONS.get((backend, "*"))


def participant_name(backend: str) -> str:
    """The baseline participant serving `backend`: one per baseline and set of environment
    variables (keras runs once under KERAS_BACKEND=jax and once under =torch)."""
    base = BASELINES[backend].baseline
    if base is None:
        raise UsageError(f"backend {backend} has no baseline: {BASELINES[backend].note}")
    env = sorted(registry.get_spec(backend).env_vars.items())
    return f"baseline:{base}" + (f"[{','.join(f'{k}={v}' for k, v in env)}]" if env else "")


def baseline_label(backend: str) -> str:
    """How the table names `backend`'s baseline, e.g. `keras (KERAS_BACKEND=jax)`."""
    env = registry.get_spec(backend).env_vars
    base = BASELINES[backend].baseline or "-"
    return base + (f" ({' '.join(f'{k}={v}' for k, v in sorted(env.items()))})" if env else "")


def with_baseline() -> list[str]:
    """Every registered backend that has a baseline, in registry order."""
    return [b for b in registry.BACKENDS if b in BASELINES and BASELINES[b].baseline]


def find_dir(given: str | None) -> Path:
    """The baselines folder: --dir, else benchmarks/baselines in the working directory, the
    checkout holding it, or the checkout the code runs from (an editable install). A
    non-editable install has no baseline files: they live in the checkout."""
    if given:
        d = Path(given).expanduser()
        if not d.is_dir():
            raise UsageError(f"--dir {given}: no such folder; give the benchmarks/baselines folder "
                             "of an lstmbench checkout")
        return d.resolve()
    cands = [Path.cwd() / "benchmarks" / "baselines"]
    root = project_root()
    if root is not None:
        cands.append(root / "benchmarks" / "baselines")
    if _is_lstmbench_checkout(ROOT):
        cands.append(ROOT / "benchmarks" / "baselines")
    for c in cands:
        if c.is_dir():
            return c.resolve()
    raise UsageError("no benchmarks/baselines folder here: run from an lstmbench checkout, or "
                     "pass --dir PATH/TO/benchmarks/baselines")


# ---- participants ------------------------------------------------------------------------

def _workers_class() -> Any:
    from .envs import interpreter_for
    from .run import PROBE, Workers, _new_worker

    class BaselineWorkers(Workers):
        """harness.run.Workers, where a baseline participant's worker gets its host backend's
        interpreter and environment variables."""

        def __init__(self, overrides: dict[str, str], threads: int | None,
                     hosts: dict[str, str], cpus: list[int] | None = None) -> None:
            super().__init__(overrides, threads, cpus=cpus)
            self.hosts = hosts  # participant name -> the backend whose environment it uses

        def get(self, name: str, p: int = 0) -> Any:
            if (name, p) not in self.live:
                host = self.hosts.get(name, name)
                py = sys.executable if name == PROBE else interpreter_for(host, self.overrides)
                self.live[(name, p)] = _new_worker(py, self.threads, self.extra_env, host, self.cpus)
            return self.live[(name, p)]

    return BaselineWorkers


def _participant_class() -> Any:
    from .run import WorkerParticipant, settle

    class BaselineParticipant(WorkerParticipant):
        """A baseline in worker process p: prepared by the worker's `baseline` op; its rounds
        and release are any participant's."""

        def __init__(self, workers: Any, name: str, p: int, cell: Any, timeout: float,
                     file: Path, host: str) -> None:
            super().__init__(workers, name, p, cell, timeout)
            self.file, self.host = file, host

        def prepare(self) -> dict[str, Any]:
            ans = self._request({"op": "baseline", "file": str(self.file), "backend": self.host,
                                 "cell": self.cell.to_dict(), "threads": self.workers.threads,
                                 "round_time": self.round_time}, self.timeout)
            w = self.workers.live.get((self.name, self.p))
            self.settled_s += settle(w.proc.pid if w is not None else None)
            if ans.get("first_step_s") is not None:  # as WorkerParticipant.prepare
                self.round_timeout = min(self.timeout, max(30.0, 20 * ans["first_step_s"]
                                                           + 1000 * self.round_time))
            return ans

    return BaselineParticipant


# ---- ratios and marks -----------------------------------------------------------------------

def _rounds(res: dict[str, Any], clean: bool) -> dict[tuple[int, int], float]:
    return {(s["process"], s["round"]): s["s"] for s in res["samples"] if s["clean"] or not clean}


def ratio_to_baseline(res_b: dict[str, Any], res_q: dict[str, Any], seed: int = 0
                      ) -> dict[str, Any] | None:
    """Backend time / baseline time over the rounds both ran, as harness.run.workload_ratios
    pairs them (clean rounds when both cells are clean and the estimator is not the minimum;
    every round, marked noisy, when either is noisy). None when either failed."""
    from . import stats
    if res_b.get("status") != "ok" or res_q.get("status") != "ok":
        return None
    noisy = bool(res_b.get("noisy") or res_q.get("noisy"))
    clean = not noisy and not stats.uses_every_round(stats.ESTIMATOR)
    pr = stats.paired_ratio(_rounds(res_b, clean), _rounds(res_q, clean), seed=seed)
    if pr is None:
        return None
    return {"ratio": pr[0], "lo": pr[1], "hi": pr[2], "pairs": pr[3], "noisy": noisy}


def mark(r: dict[str, Any] | None, threshold: float = THRESHOLD) -> str:
    """ok: the whole interval within threshold; slower: its lower bound beyond; else
    inconclusive. No ratio (a participant failed): failed."""
    if r is None:
        return "failed"
    if r["hi"] <= threshold:
        return "ok"
    if r["lo"] > threshold:
        return "slower"
    return "inconclusive"


# ---- the command ----------------------------------------------------------------------------

def _split(text: str | None, default: tuple[str, ...] | list[str]) -> list[str]:
    if not text:
        return list(default)
    return [x.strip() for x in text.split(",") if x.strip()]


def select_backends(text: str | None) -> list[str] | None:
    """The named backends, checked (unknown or without a baseline: UsageError / BackendError);
    None when none were named (then: every available one with a baseline)."""
    if not text:
        return None
    names = _split(text, [])
    if not names:
        raise UsageError(f"--backends {text!r} names no backend; give a comma list, e.g. torch,jax")
    for n in names:
        registry.get_spec(n)  # unknown -> BackendError, exit 2
        if BASELINES[n].baseline is None:
            raise UsageError(f"backend {n} has no baseline ({BASELINES[n].note}); "
                             f"choose from: {', '.join(with_baseline())}")
    return list(dict.fromkeys(names))


def run_baselines(presets: list[str], modes: list[str], backends: list[str] | None, *,
                  threads: int | None, base_dir: Path, out: Path | None, seed: int | None,
                  rounds: int = 30, processes: int = 1, workload_time: float = 120.0,
                  overrides: dict[str, str] | None = None, command: list[str] | None = None,
                  log: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """Measure every (preset, mode) workload; write the document; returns (path, document)."""
    import numpy as np

    from . import stats
    from .bench import Cell
    from .results import check_writable, default_path, new_document, write_results
    from .run import (PROBE, ProbeState, Schedule, WorkerParticipant, _describe, _probe_info,
                      cell_result, measure_workload)

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    named = backends is not None
    candidates = backends if named else with_baseline()
    for f in {BASELINES[b].baseline for b in candidates}:
        if not (base_dir / baseline_file(f)).is_file():
            raise UsageError(f"{base_dir} has no {baseline_file(f)}; pass --dir with the checkout's "
                             "benchmarks/baselines folder")
    seed = int(time.time_ns() % 2**31) if seed is None else seed
    if out is None:
        check_writable(Path("results"))  # before any measurement
    hosts: dict[str, str] = {}  # baseline participant -> the first available backend it serves
    # pinned as `run` pins (harness.pool.worker_cpus): fewer threads than CPUs, the last ones
    cpus = worker_cpus(threads)
    workers = _workers_class()(overrides or {}, threads, hosts, cpus)
    Participant = _participant_class()
    sched = Schedule(rounds=rounds, processes=processes, max_time=workload_time,
                     min_clean=min(stats.MIN_CLEAN, rounds * processes),
                     extra_rounds=max(10, rounds), extra_time=20.0)
    rng = np.random.default_rng(seed)
    workloads: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        log(f"baselines: presets {','.join(presets)}, modes {','.join(modes)}, threads {threads}, "
            f"{rounds} rounds, seed {seed}, files in {base_dir}"
            + (f", workers pinned to CPU {','.join(map(str, cpus))}" if cpus else ""))
        log("backends:")
        info = _probe_info(workers, candidates, "cpu", threads, log)
        avail = [b for b in candidates if info[b].get("available")]
        if named and len(avail) < len(candidates):
            bad = next(b for b in candidates if b not in avail)
            raise registry.BackendError(f"backend {bad} is unavailable here: "
                                        f"{str(info[bad].get('reason')).splitlines()[0]}")
        if not avail:
            raise UsageError("no backend with a baseline is available here")
        for b in avail:
            hosts.setdefault(participant_name(b), b)
        probe = ProbeState(WorkerParticipant(workers, PROBE, 0, None, 300))
        try:
            probe.flop = int(probe.participant.prepare().get("flop", probe.flop))  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - go on without the probe, as run does
            log(f"noise probe unavailable ({e}); rounds cannot be checked against it")
            probe.participant = None
        plan = [(p, m) for p in presets for m in modes]
        for i, (pname, mode) in enumerate(plan, 1):
            preset = get_preset(pname)
            bes = [b for b in avail if mode in registry.get_spec(b).modes]
            if not bes:
                log(f"[{i}/{len(plan)}] {pname}/{mode}: no selected backend has a {mode} mode; skipped")
                continue
            parts = bes + list(dict.fromkeys(participant_name(b) for b in bes))
            cells = {n: Cell.from_preset(preset, n, mode) for n in parts}
            c0 = cells[parts[0]]
            wid = f"{pname}/{mode}/B{c0.batch}xT{c0.seq_len}"
            log(f"[{i}/{len(plan)}] {wid}: {', '.join(parts)}  (elapsed {time.monotonic() - t_start:.0f} s)")

            def make(n: str, p: int) -> Any:
                if n in hosts and n not in registry.BACKENDS:
                    host = hosts[n]
                    return Participant(workers, n, p, cells[n], 600.0,
                                       base_dir / baseline_file(BASELINES[host].baseline), host)
                return WorkerParticipant(workers, n, p, cells[n], 600.0)

            wd = measure_workload(parts, make, probe, sched, rng, log)
            res = {n: cell_result(cells[n], wd.backends[n], sched, seed=0) for n in parts}
            for n in parts:
                log(f"      {n:34} " + _describe(res[n]))
            for b in bes:
                q = participant_name(b)
                r = ratio_to_baseline(res[b], res[q])
                mk = mark(r)
                slow = r is not None and r["ratio"] > THRESHOLD
                why = reason_for(b, mode) if slow else None
                if mk == "failed":
                    bad = res[b] if res[b].get("status") != "ok" else res[q]
                    why = f"{bad.get('status')}: {str(bad.get('error'))[:120]}"
                elif slow and why is None:
                    why = ("no measured reason yet: to be investigated or fixed" if mk == "slower"
                           else "not shown to be slower: re-measure with more rounds")
                rows.append({"preset": pname, "mode": mode, "workload": wid, "backend": b,
                             "baseline": baseline_label(b), "participant": q,
                             "backend_s": res[b].get("estimate_s"), "baseline_s": res[q].get("estimate_s"),
                             "ratio": r, "mark": mk, "reason": why})
            workloads.append({"id": wid, "preset": pname, "mode": mode, "batch": c0.batch,
                              "seq_len": c0.seq_len, "rounds": wd.rounds,
                              "remeasured_rounds": wd.remeasured, "cut_short": wd.short,
                              "order": wd.order, "probe_s": wd.probe_s, "probe_best_s": probe.best_s,
                              "participants": {n: {"cell": cells[n].to_dict(), "result": res[n]}
                                               for n in parts}})
    finally:
        workers.close()
    probes = [s for s in probe.rounds_s if s]
    frac, verdict = stats.noise_verdict(probes, probe.best_s, sum(stats.collapses(probes)))
    doc = new_document(command=command or [], matrix="baselines", device="cpu", threads=threads,
                       seed=seed, presets=presets, modes=modes, threshold=THRESHOLD,
                       schedule=dataclasses.asdict(sched), estimator=stats.estimator_info(),
                       backends=info, baselines_dir=str(base_dir), cpus=cpus,
                       baselines={q: {"file": baseline_file(BASELINES[h].baseline), "host": h,
                                      "serves": [b for b in avail if participant_name(b) == q]}
                                  for q, h in hosts.items()},
                       mapping={b: dataclasses.asdict(e) for b, e in BASELINES.items()},
                       noise={"contended_fraction": frac, "verdict": verdict},
                       wall_s=round(time.monotonic() - t_start, 1))
    doc["schema"], doc["schema_version"] = SCHEMA, SCHEMA_VERSION
    doc["workloads"], doc["rows"] = workloads, rows
    target = out if out is not None else default_path(Path("results"), doc)
    return write_results(doc, target), doc


def _ms(s: Any) -> str:
    return f"{s * 1e3:.3f}" if isinstance(s, (int, float)) and math.isfinite(s) else "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README's table: one line per (preset, mode, backend)."""
    out = ["| preset | mode | backend | baseline | backend ms/step | baseline ms/step | "
           "ratio [95% CI] | mark | reason |", "|---|---|---|---|---:|---:|---|---|---|"]
    for r in rows:
        q = r["ratio"]
        rt = f"{q['ratio']:.2f} [{q['lo']:.2f}, {q['hi']:.2f}]" + (" noisy" if q["noisy"] else "") \
            if q else "-"
        out.append(f"| {r['preset']} | {r['mode']} | {r['backend']} | {r['baseline']} | "
                   f"{_ms(r['backend_s'])} | {_ms(r['baseline_s'])} | {rt} | {r['mark']} | "
                   f"{r['reason'] or ''} |")
    return "\n".join(out)


def cmd_baselines(a: argparse.Namespace) -> int:
    from impls.case import check_new_path

    from .cli import _positive_threads
    from .envs import parse_python_overrides
    presets = _split(a.presets, DEFAULT_PRESETS)
    for p in presets:
        get_preset(p)  # ConfigError names the presets
    modes = _split(a.modes, MODES)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UsageError(f"--modes {a.modes!r}: choose from {', '.join(MODES)}")
    if not presets:
        raise UsageError(f"--presets {a.presets!r} names no preset; e.g. char-rnn,tutorial")
    _positive_threads(a.threads)
    if a.rounds < 2:
        raise UsageError(f"--rounds must be an integer >= 2, got {a.rounds}")
    if a.processes < 1:
        raise UsageError(f"--processes must be an integer >= 1, got {a.processes}")
    if not a.workload_time > 0:
        raise UsageError(f"--workload-time must be a positive number of seconds, got {a.workload_time}")
    backends = select_backends(a.backends)
    base_dir = find_dir(a.dir)
    out = Path(a.out) if a.out else None
    if out is not None:
        check_new_path(out, "--out")  # before any measurement
    path, doc = run_baselines(presets, modes, backends, threads=a.threads, base_dir=base_dir,
                              out=out, seed=a.seed, rounds=a.rounds, processes=a.processes,
                              workload_time=a.workload_time,
                              overrides=parse_python_overrides(a.python),
                              command=["lstmbench", *sys.argv[1:]])
    print(markdown_table(doc["rows"]))
    print(f"\nmachine noise: {doc['noise']['verdict']}; results: {path}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    """`lstmbench baselines`: called by harness.cli.build_parser."""
    threads = os.cpu_count() or 1
    p = sub.add_parser("baselines", help="each backend against the plainest code in its own "
                                         "framework (benchmarks/baselines/), interleaved")
    p.add_argument("--presets", help=f"comma list (default {','.join(DEFAULT_PRESETS)})")
    p.add_argument("--backends", help="comma list (default: every available backend with a baseline)")
    p.add_argument("--modes", help="comma list of train, eval (default both)")
    p.add_argument("--threads", type=int, default=threads,
                   help=f"threads for every framework alike (default {threads}: the cores)")
    p.add_argument("--out", help="results FILE to write (must not exist; default "
                                 "results/<machine>/<time>-baselines-cpu.json)")
    p.add_argument("--dir", help="the baseline files' folder (default: benchmarks/baselines of "
                                 "the working directory or its checkout)")
    p.add_argument("--seed", type=int, help="seed of the interleaving order (default: from the clock; recorded)")
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds per workload (default 30)")
    p.add_argument("--processes", type=int, default=1,
                   help="fresh worker sets per workload (default 1)")
    p.add_argument("--workload-time", type=float, default=120.0, metavar="SECONDS",
                   help="seconds of base rounds per workload, at most (default 120)")
    p.add_argument("--python", action="append", metavar="BACKEND=INTERPRETER",
                   help="run BACKEND (and its baseline) with this interpreter (repeatable)")
    p.set_defaults(fn=cmd_baselines)
