"""`lstmbench baselines`: is each backend as fast as the plainest code its own framework's users
write? (issue 11, item 6: fair to every framework.)

benchmarks/baselines/ holds, per framework, a hand-written train step, eval step and
generation loop (`make_step`, `make_eval`, `make_generate`). For every (preset, mode) this
command measures one workload whose participants are the selected backends AND the baselines
they need (participants of kind `baseline`, harness.engine.kinds.baseline), interleaved by the
same executor as `lstmbench run` (harness.engine.executor.LocalExecutor: seeded random order per
round, the GEMM noise probe, clean rounds, re-measurement), through one session
(harness.session.session: each finished workload journaled, `run --resume JOURNAL` after an
interruption measures the rest). Each
participant lives in a worker process of its own; a baseline's worker runs in its backend's
interpreter with its backend's environment variables (KERAS_BACKEND) and is set up by its
backend module's configure() (thread pools, library flags), so the ratio measures the step's
code, not process settings.

Per backend: the time ratio backend / baseline, judged exactly as `compare --variants` judges
two variants of one run (harness.judge.duet: paired rounds, per-process centres, the between-process
variance pooled over the run's cells; marks `faster`, `slower`, `unchanged`, `inconclusive`,
`failed` at the 10% threshold). A backend more than 10% slower carries its reason from its registry entry
(BackendSpec.baseline_slower: measured causes only). Results: one JSON document (schema lstmbench.baselines), written
atomically and never over an existing file, and a Markdown table on stdout; progress on stderr.

The mapping backend -> baseline is each backend's registry entry (BackendSpec.baseline and
baseline_note, impls/registry.py): a new backend names its baseline, or why it has none, there;
the baseline's file is benchmarks/baselines/<baseline>_baseline.py."""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from impls import registry
from impls.config import get_preset

from ..engine import explain, stats
from ..engine.assemble import workload_ratios
from ..engine.bench import PEAK_N, Cell
from ..engine.executor import LocalExecutor, Setup
from ..engine.participants import PROBE_N
from ..engine.scheduler import Schedule
from ..engine.workers import Launcher
from ..envs.host import worker_cpus
from ..envs.interpreters import ROOT, _is_lstmbench_checkout, parse_python_overrides, project_root
from ..errors import UsageError
from ..judge import duet
from ..report.console import describe
from ..report.frontier import frontier, summary_line
from ..results.store import check_writable, default_path
from ..results.store import new_document as results_document
from ..session.journal import is_workload_record
from ..session.session import Resume, RunSession, kept_words, running
from .options import add_threads, out_folder, positive_threads

Log = Callable[[str], None]

THRESHOLD = 0.10  # a backend more than 10% slower than its baseline must be fixed or explained
MODES = ("train", "eval", "generate")
DEFAULT_PRESETS = ("char-rnn", "tutorial")
SCHEMA = "lstmbench.baselines"
# 2: rows judged by harness.judge.duet (marks faster|slower|unchanged|inconclusive|failed);
# 3: workloads carry `ratios` (each backend to the fastest backend, paired rounds), the run a
# `peak` GEMM and every result its `efficiency`: `lstmbench report` reads the file as a run
SCHEMA_VERSION = 3


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

def reason_for(backend: str, mode: str) -> str | None:
    """The measured cause of `backend` being slower than its baseline in `mode`, from its registry
    entry (BackendSpec.baseline_slower; docs: benchmarks/baselines/README.md)."""
    why = registry.get_spec(backend).baseline_slower
    return why.get(mode) or why.get("*")


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


# ---- ratios and marks -----------------------------------------------------------------------

Measured = tuple[str, str, str, str, dict[str, Any], dict[str, Any]]  # preset, mode, workload, backend, results


def judge_rows(measured: list[Measured]) -> tuple[float | None, list[dict[str, Any]]]:
    """Every backend against its baseline from the rounds both ran, in one in-run comparison
    over the run's cells (harness.judge.duet.judge_pairs, as `compare --variants` judges two
    variants: the baseline as BASE, the backend as NEW); (the between-process SD pooled over
    them, a row per pair, with the reason of a backend more than the threshold slower)."""
    verdicts, pool = duet.judge_pairs([(rq, rb) for *_, rb, rq in measured])
    rows: list[dict[str, Any]] = []
    for (pname, mode, wid, b, rb, rq), j in zip(measured, verdicts):
        slow = j.mark != "failed" and j.ratio > 1 + THRESHOLD
        why = reason_for(b, mode) if slow else None
        if j.mark == "failed":
            why = j.reason
        elif slow and why is None:
            why = ("no measured reason yet: to be investigated or fixed" if j.mark == "slower"
                   else "not shown to be slower: re-measure with more rounds")
        rows.append({"preset": pname, "mode": mode, "workload": wid, "backend": b,
                     "baseline": baseline_label(b), "participant": participant_name(b),
                     "backend_s": rb.get("estimate_s"), "baseline_s": rq.get("estimate_s"),
                     "noisy": bool(rb.get("noisy") or rq.get("noisy")), **j.to_json(), "reason": why})
    return (None if pool.tau2 is None else pool.tau2 ** 0.5), rows


def rejudge(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A baselines file's rows judged again from the rounds its workloads keep."""
    measured: list[Measured] = []
    for w in doc["workloads"]:
        parts = w["participants"]
        for b in parts:
            if b in registry.BACKENDS:
                measured.append((w["preset"], w["mode"], w["id"], b, parts[b]["result"],
                                 parts[participant_name(b)]["result"]))
    return judge_rows(measured)[1]


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


@dataclass(frozen=True)
class Plan:
    """What a baselines run measures and how: presets x modes, the backends (None: every one
    with a baseline that is available here), and the schedule of each workload's rounds."""
    presets: tuple[str, ...]
    modes: tuple[str, ...]
    backends: tuple[str, ...] | None
    threads: int | None
    base_dir: Path
    seed: int
    rounds: int = 30
    processes: int = 1
    workload_time: float = 120.0

    def schedule(self) -> Schedule:
        return Schedule(rounds=self.rounds, processes=self.processes, max_time=self.workload_time,
                        min_clean=min(stats.MIN_CLEAN, self.rounds * self.processes),
                        extra_rounds=max(10, self.rounds), extra_time=20.0)

    @property
    def candidates(self) -> list[str]:
        return list(self.backends) if self.backends is not None else with_baseline()

    def intro(self, cpus: list[int] | None) -> str:
        return (f"baselines: presets {','.join(self.presets)}, modes {','.join(self.modes)}, threads "
                f"{self.threads}, {self.rounds} rounds, {self.processes} process(es), seed {self.seed}, "
                f"files in {self.base_dir}" + (f", workers pinned to CPU {','.join(map(str, cpus))}" if cpus else ""))


def _executor(plan: Plan, overrides: dict[str, str]) -> LocalExecutor:
    """This machine's executor for the backends and the baselines they need: a baseline's worker
    is its host backend's (same interpreter, env_vars, threads and CPUs, set up by its module's
    configure()), pinned as `run` pins (harness.envs.host.worker_cpus)."""
    names = plan.candidates
    quals = list(dict.fromkeys(participant_name(b) for b in names))
    launch = Launcher(overrides, plan.threads, cpus=worker_cpus(plan.threads))
    return LocalExecutor(Setup([*names, *quals], [], launch, plan.schedule(), plan.seed, "cpu", 600.0,
                               kinds={q: "baseline" for q in quals}))


def _hosts(ex: LocalExecutor, plan: Plan, info: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(the backends available here, each baseline participant -> the first available backend it
    serves); the participants set up to run there. A named backend that is unavailable, or none
    available, is a one-line error."""
    names = plan.candidates
    avail = [b for b in names if info[b].get("available")]
    if plan.backends is not None and len(avail) < len(names):
        bad = next(b for b in names if b not in avail)
        raise registry.BackendError(f"backend {bad} is unavailable here: "
                                    f"{str(info[bad].get('reason')).splitlines()[0]}")
    if not avail:
        raise UsageError("no backend with a baseline is available here")
    hosts: dict[str, str] = {}
    for b in avail:
        hosts.setdefault(participant_name(b), b)
    for q, host in hosts.items():
        ex.serve(q, host)
        ex.setup.extra[q] = {"file": str(plan.base_dir / baseline_file(BASELINES[host].baseline)), "backend": host}
    return avail, hosts


def new_document(plan: Plan, cpus: list[int] | None, command: list[str] | None) -> dict[str, Any]:
    """A baselines run's document as its header starts it: what is only known later (the
    backends, the baselines, the noise, the wall time, the workloads, the rows) in its place."""
    doc = results_document(command=command or [], matrix="baselines", device="cpu", threads=plan.threads,
                           seed=plan.seed, presets=list(plan.presets), modes=list(plan.modes), threshold=THRESHOLD,
                           judged_by="harness.judge.duet (the in-run comparison of compare --variants)",
                           schedule=dataclasses.asdict(plan.schedule()), estimator=stats.estimator_info(),
                           backends=None, baselines_dir=str(plan.base_dir), cpus=cpus, baselines=None,
                           mapping={b: dataclasses.asdict(e) for b, e in BASELINES.items()}, noise=None,
                           peak=None, wall_s=None)
    doc["schema"], doc["schema_version"] = SCHEMA, SCHEMA_VERSION
    return doc


def _workload(plan: Plan, i: int, n: int, pname: str, mode: str, avail: list[str], log: Log
              ) -> tuple[str, list[Cell]] | None:
    """Workload i of n: its id and cells (the backends that have the mode, then their baselines)."""
    bes = [b for b in avail if mode in registry.get_spec(b).modes]
    if not bes:
        log(f"[{i}/{n}] {pname}/{mode}: no selected backend has a {mode} mode; skipped")
        return None
    preset = get_preset(pname)
    parts = bes + list(dict.fromkeys(participant_name(b) for b in bes))
    cells = [Cell.from_preset(preset, p, mode) for p in parts]
    return f"{pname}/{mode}/B{cells[0].batch}xT{cells[0].seq_len}", cells


def _entry(rec: dict[str, Any]) -> dict[str, Any]:
    """A workload's journal record as the baselines document keeps it, with each backend's time
    ratio to the fastest backend (baselines are no backend)."""
    w = rec["workload"]
    parts = {c["cell"]["backend"]: {"cell": c["cell"], "result": c["result"]} for c in rec["cells"]}
    return {**{k: w[k] for k in ("id", "preset", "mode", "batch", "seq_len", "rounds", "remeasured_rounds",
                                  "cut_short", "order", "probe_s", "probe_best_s")},
            "ratios": workload_ratios({n: p["result"] for n, p in parts.items() if n in registry.BACKENDS}),
            "participants": parts}


def _peak(workloads: list[dict[str, Any]], flop: int, gemms: list[float | None], threads: int | None
          ) -> dict[str, Any]:
    """The run's peak GEMM (as `run` takes it: the faster of the probe's best round and the larger
    GEMM at the start and the end), and every result's efficiency against it."""
    probes = [s for w in workloads for s in w["probe_s"] if s]
    probe_best = flop / min(probes) / 1e9 if probes else None
    gemm = max([g for g in gemms if g], default=None)
    peak = explain.peak_of("cpu", probe_best, gemm)
    for w in workloads:
        for part in w["participants"].values():
            r = part["result"]
            if r.get("status") == "ok" and r.get("gflops"):
                r["efficiency"] = r["gflops"] / peak if peak else None
    return {"gflops": peak, "via": "numpy BLAS (the noise probe's worker)", "dtype": "float32",
            "probe_gflops": probe_best, "probe_n": PROBE_N, "gemm_gflops": gemm, "gemm_n": PEAK_N,
            "threads": threads}


def finish_document(doc: dict[str, Any], records: list[dict[str, Any]], wall: float, flop: int,
                    gemms: list[float | None]) -> dict[str, Any]:
    """The rows (every backend against its baseline), the run's noise and peak, the workloads."""
    workloads = [_entry(r) for r in records]
    peak = _peak(workloads, flop, gemms, doc.get("threads"))
    between_sd, rows = judge_rows([(w["preset"], w["mode"], w["id"], b, w["participants"][b]["result"],
                                    w["participants"][participant_name(b)]["result"])
                                   for w in workloads for b in w["participants"] if b in registry.BACKENDS])
    probes = [s for w in workloads for s in w["probe_s"] if s]
    frac, verdict = stats.noise_verdict(probes, min(probes) if probes else None, sum(stats.collapses(probes)))
    doc["noise"] = {"contended_fraction": frac, "verdict": verdict, "between_process_sd": between_sd}
    doc["peak"] = peak
    doc["wall_s"] = round(wall + float(doc.get("wall_s") or 0), 1)
    doc["workloads"], doc["rows"] = workloads, rows
    return doc


def frontier_lines(doc: dict[str, Any]) -> list[str]:
    """Per workload, each framework at its fastest (harness.report.frontier), as `run` says it."""
    out = []
    for w in doc.get("workloads") or []:
        cells = [(n, p["result"]) for n, p in w["participants"].items()]
        rows = frontier(cells, w.get("ratios"), (doc.get("peak") or {}).get("gflops"))
        if rows:
            out.append(f"{w['id']}: each framework at its fastest: {summary_line(rows)}")
    return out


def run_baselines(plan: Plan, *, out: Path = Path("results"), overrides: dict[str, str] | None = None,
                  command: list[str] | None = None, resume: Resume | None = None,
                  log: Log | None = None) -> tuple[Path, dict[str, Any]]:
    """Measure every (preset, mode) workload (with `resume`, those its journal lacks) through one
    session (harness.session) on this machine's executor; write the document; (path, document)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    for f in {BASELINES[b].baseline for b in plan.candidates}:
        if not (plan.base_dir / baseline_file(f)).is_file():
            raise UsageError(f"{plan.base_dir} has no {baseline_file(f)}; pass --dir with the checkout's "
                             "benchmarks/baselines folder")
    if resume is None:
        check_writable(out)  # before any measurement
    ex = _executor(plan, overrides or {})
    cpus = ex.setup.launch.cpus
    t_start = time.monotonic()
    sessions: list[RunSession] = []
    with running(sessions, kept_words, log):
        try:
            log(plan.intro(cpus))
            if resume is not None:
                sessions.append(RunSession.resume(resume))
            else:
                doc = new_document(plan, cpus, command)
                sessions.append(RunSession.new(doc, default_path(out, doc)))
            session = sessions[0]
            info = ex.describe(log)
            avail, hosts = _hosts(ex, plan, info)
            if not session.begun:
                session.doc["backends"] = info
                session.doc["baselines"] = {q: {"file": baseline_file(BASELINES[h].baseline), "host": h,
                                                "serves": [b for b in avail if participant_name(b) == q]}
                                            for q, h in hosts.items()}
                session.begin()
            ex.start_probe(log)
            gemms = [ex.gemm_peak()]  # the larger GEMM at the start and the end, as run times it
            done = {r["workload"]["id"] for r in session.records}
            plan_ = [(p, m) for p in plan.presets for m in plan.modes]
            for i, (pname, mode) in enumerate(plan_, 1):
                got = _workload(plan, i, len(plan_), pname, mode, avail, log)
                if got is None or got[0] in done:
                    continue
                wid, cells = got
                log(f"[{i}/{len(plan_)}] {wid}: {', '.join(c.backend for c in cells)}  "
                    f"(elapsed {time.monotonic() - t_start:.0f} s)")
                rec = ex.run_workload(wid, cells, log)
                for c in rec["cells"]:
                    log(f"      {c['cell']['backend']:34} " + describe(c["result"]))
                session.keep(rec)
            gemms.append(ex.gemm_peak())
        finally:
            ex.close()
    doc = finish_document(session.doc, session.records, time.monotonic() - t_start, ex.probe.flop, gemms)
    return session.finish(doc), doc


def _ms(s: Any) -> str:
    return f"{s * 1e3:.3f}" if isinstance(s, (int, float)) and math.isfinite(s) else "-"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README's table: one line per (preset, mode, backend)."""
    out = ["| preset | mode | backend | baseline | backend ms/step | baseline ms/step | "
           "ratio [95% CI] | mark | reason |", "|---|---|---|---|---:|---:|---|---|---|"]
    for r in rows:
        lo, hi = r["ci"]
        rt = (f"{r['ratio']:.2f} [{lo:.2f}, {hi:.2f}]" + (" noisy" if r["noisy"] else "")
              if r["ratio"] is not None else "-")
        out.append(f"| {r['preset']} | {r['mode']} | {r['backend']} | {r['baseline']} | "
                   f"{_ms(r['backend_s'])} | {_ms(r['baseline_s'])} | {rt} | {r['mark']} | "
                   f"{r['reason'] or ''} |")
    return "\n".join(out)


def cmd_baselines(a: argparse.Namespace) -> int:
    presets = _split(a.presets, DEFAULT_PRESETS)
    for p in presets:
        get_preset(p)  # ConfigError names the presets
    modes = _split(a.modes, MODES)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UsageError(f"--modes {a.modes!r}: choose from {', '.join(MODES)}")
    if not presets:
        raise UsageError(f"--presets {a.presets!r} names no preset; e.g. char-rnn,tutorial")
    positive_threads(a.threads)
    if a.rounds < 2:
        raise UsageError(f"--rounds must be an integer >= 2, got {a.rounds}")
    if a.processes < 1:
        raise UsageError(f"--processes must be an integer >= 1, got {a.processes}")
    if not a.workload_time > 0:
        raise UsageError(f"--workload-time must be a positive number of seconds, got {a.workload_time}")
    backends = select_backends(a.backends)
    plan = Plan(tuple(presets), tuple(modes), None if backends is None else tuple(backends), a.threads,
                find_dir(a.dir), int(time.time_ns() % 2**31) if a.seed is None else a.seed, a.rounds,
                a.processes, a.workload_time)
    out = out_folder(a.out)  # before any measurement
    path, doc = run_baselines(plan, out=out, overrides=parse_python_overrides(a.python),
                              command=["lstmbench", *sys.argv[1:]])
    print(markdown_table(doc["rows"]))
    print("")
    print("\n".join(frontier_lines(doc)))
    print(f"\nmachine noise: {doc['noise']['verdict']}; results: {path}", file=sys.stderr)
    return 0


def resume_baselines(a: argparse.Namespace, resume: Resume) -> int:
    """`run --resume` of a baselines run's journal (harness.session.kinds): the workloads it lacks,
    with the settings its header records."""
    h = resume.header
    if a.backends:
        raise UsageError(f"--resume: the journal's backends are {','.join(h.get('backends') or {})}; "
                         "leave --backends out to continue it")
    sched = h.get("schedule") or {}
    plan = Plan(tuple(h["presets"]), tuple(h["modes"]), tuple(h.get("backends") or {}), h.get("threads"),
                Path(h["baselines_dir"]), int(h["seed"]), int(sched.get("rounds", 30)),
                int(sched.get("processes", 1)), float(sched.get("max_time") or 120.0))
    path, doc = run_baselines(plan, overrides=parse_python_overrides(a.python),
                              resume=resume.only(is_workload_record))
    print(markdown_table(doc["rows"]))
    print("")
    print("\n".join(frontier_lines(doc)))
    print(f"\nmachine noise: {doc['noise']['verdict']}; results: {path}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    """`lstmbench baselines`: called by harness.cli.build_parser."""
    p = sub.add_parser("baselines", help="each backend against the plainest code in its own "
                                         "framework (benchmarks/baselines/), interleaved")
    p.add_argument("--presets", help=f"comma list (default {','.join(DEFAULT_PRESETS)})")
    p.add_argument("--backends", help="comma list (default: every available backend with a baseline)")
    p.add_argument("--modes", help="comma list of train, eval, generate (default all three)")
    add_threads(p)
    p.add_argument("--out", default="results", metavar="FOLDER",
                   help="results folder: the file is FOLDER/<machine>/<time>-baselines-cpu.json "
                        "(default results/)")
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
