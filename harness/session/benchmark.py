"""The run of a benchmark matrix (`lstmbench run`, `lstmbench ab`): its workloads measured one
at a time by an executor, each kept in a journal the moment it ends, the results file
assembled at the end.

The unit of scheduling is a *workload*: one (mode, sizes, device, precision) with all its
backends, each once per variant where the run has variants (harness.envs.variants). An
executor (harness.engine.executor; LocalExecutor: this machine) measures it: every
participant's worker prepares the cell, then interleaved rounds in a seeded random order with
the noise probe (harness.engine.scheduler). A backend that crashes, hangs, gives NaN or runs
out of memory gets that status for its cell; the others go on.

Each finished workload is appended to a journal beside the target file (harness.session.journal),
so an interrupted run keeps it and `run --resume` measures only what is missing; the results
file is assembled from the journal at the end (harness.engine.assemble). What the run tells as
it goes, beyond its own progress lines, and at its end is a Reporter's
(harness.report.console.RunConsole), as in Google Benchmark the runner is apart from its
reporters."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import UsageError
from ..results.schema import SCHEMA
from ..results.store import check_writable, default_path, new_document
from ..engine import explain, stats
from ..engine.assemble import assemble, group_workloads
from ..engine.bench import PEAK_N, Cell
from ..engine.executor import Executor, LocalExecutor, Setup
from ..envs.host import worker_cpus
from .journal import Journal, claim, finalize, resume_journal, target_of, unclaim
from ..engine.matrix import Matrix
from ..engine.participants import PROBE_N
from ..engine.progress import RunProgress
from ..engine.scheduler import Schedule
from ..engine.signals import interruptible
from ..envs.variants import Variant, parse_variants, participant, sources, split
from ..engine.workers import Launcher

Log = Callable[[str], None]


class Reporter(Protocol):
    """What the run tells beside its own progress lines: each finished workload (`once`: a line
    said once per run, by key) and the finished run's document."""

    def workload(self, doc: dict[str, Any], record: dict[str, Any], log: Log,
                 once: Callable[[str, str], None]) -> None: ...

    def finished(self, doc: dict[str, Any], log: Log) -> None: ...


@dataclass
class RunOptions:
    device: str = "cpu"
    precision: str = "float32"
    threads: int | None = None
    processes: int = 1
    omp_wait_policy: str | None = None
    seed: int | None = None  # the interleaving order's seed (default: from the clock, recorded)
    overrides: dict[str, str] = field(default_factory=dict)


def load_resume(path: Path) -> tuple[Path, Path, dict[str, Any], list[dict[str, Any]]]:
    """(journal, target, header, records) of an interrupted run; UsageError if none there."""
    journal_file = resume_journal(path)
    header, records = Journal.read(journal_file)
    if not header or header.get("schema") != SCHEMA:
        raise UsageError(f"--resume {path}: {journal_file} has no results header; it is not a run's journal")
    return journal_file, target_of(journal_file), header, records


def resume_variants(header: dict[str, Any]) -> tuple[list[Variant], dict[str, str]]:
    """The variants of an interrupted run (re-read from their recorded text) and the commit each
    revision variant measured, so that the rest is measured on the same code."""
    recorded = header.get("variants") or {}
    vs = parse_variants([d["text"] for d in recorded.values()]) if recorded else []
    pinned = {n: d["source"]["commit"] for n, d in recorded.items()
              if (d.get("source") or {}).get("kind") == "rev" and d["source"].get("commit")}
    return vs, pinned


def variant_records(variants: list[Variant], src: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """What the results file keeps of each variant: its definition, where its code came from
    (folder, commit), and per backend the interpreter and framework version its workers had."""
    out: dict[str, Any] = {}
    for v in variants:
        backends = {}
        for name, i in info.items():
            b, vn = split(name)
            if vn == v.name:
                backends[b] = {k: i.get(k) for k in ("available", "version", "kernel", "executable",
                                                     "python", "numpy", "reason") if i.get(k) is not None}
        out[v.name] = {**v.definition(), "source": src[v.name].record(), "backends": backends}
    return out


def run_matrix(matrix: Matrix, backends: list[str], *, device: str = "cpu", precision: str = "float32",
               threads: int | None = None, overrides: dict[str, str] | None = None,
               out_dir: Path = Path("results"), command: list[str] | None = None,
               processes: int = 1, omp_wait_policy: str | None = None, seed: int | None = None,
               resume: Path | None = None, variants: list[Variant] | None = None,
               reporter: Reporter | None = None, executor: Callable[[Setup], Executor] = LocalExecutor,
               log: Log = print) -> Path:
    """Measure every workload of `matrix` on `backends` (each backend once per variant, where
    `variants` are given); returns the results file's path. `reporter` tells each workload and
    the finished run (harness.report.console.RunConsole); `executor` measures the workloads
    (default: on this machine)."""
    opts = RunOptions(device, precision, threads, processes, omp_wait_policy, seed, overrides or {})
    done: dict[str, dict[str, Any]] = {}
    pinned: dict[str, str] = {}
    journal_file = target = Path()  # a new run's are set once its document exists
    if resume is not None:
        journal_file, target, header, records = load_resume(resume)
        for rec in records:
            done[rec["workload"]["id"]] = rec
        doc = {k: v for k, v in header.items()}
        variants, pinned = resume_variants(header)
        log(f"resuming {journal_file}: {len(done)} workloads already measured")
    else:
        check_writable(out_dir)
        doc = {}
    variants = list(variants or [])
    if opts.seed is None:
        opts.seed = int(doc.get("seed") or time.time_ns() % 2**31)
    cells = matrix.cells(backends, device, precision)
    workloads = group_workloads(cells)
    with sources(variants, pinned) as src:
        return _measure(matrix, backends, workloads, opts, variants, src, done, doc,
                        (journal_file, target), out_dir, command, reporter, executor, log)


def _measure(matrix: Matrix, backends: list[str], workloads: list[tuple[str, list[Cell]]],
             opts: RunOptions, variants: list[Variant], src: dict[str, Any],
             done: dict[str, dict[str, Any]], doc: dict[str, Any], files: tuple[Path, Path],
             out_dir: Path, command: list[str] | None, reporter: Reporter | None,
             executor: Callable[[Setup], Executor], log: Log) -> Path:
    """run_matrix's measurement, with every variant's source tree in place (`src`)."""
    device, precision, threads, processes = opts.device, opts.precision, opts.threads, opts.processes
    omp_wait_policy = opts.omp_wait_policy
    extra_env = {"OMP_WAIT_POLICY": omp_wait_policy.upper()} if omp_wait_policy else {}
    cpus = worker_cpus(threads) if device == "cpu" else None
    vnames = [v.name for v in variants]
    sched = Schedule(rounds=matrix.rounds, processes=processes, min_clean=matrix.min_clean,
                     extra_rounds=matrix.extra_rounds, extra_time=matrix.extra_time,
                     max_time=matrix.workload_time)
    launch = Launcher(opts.overrides, threads, extra_env, cpus, {v.name: v for v in variants},
                      {n: str(s.root) for n, s in src.items() if s.kind != "this"}, device)
    ex = executor(Setup([participant(b, v) for b in backends for v in (vnames or [None])], vnames,
                        launch, sched, int(opts.seed or 0), device, matrix.timeout, matrix.round_time))
    log(f"matrix {matrix.name}: {len(workloads)} workloads x {len(backends)} backends"
        + (f" x {len(vnames)} variants ({', '.join(vnames)})" if vnames else "")
        + f", device {device}, precision {precision}, threads {threads}"
        + (f" (workers pinned to CPU {','.join(map(str, cpus))})" if cpus else "")
        + f", processes {processes}" + (" per variant" if vnames else "") + ", "
        f"OMP_WAIT_POLICY {omp_wait_policy or 'unset'}, {sched.rounds} rounds per process, seed {opts.seed}")
    for v in variants:
        s = src[v.name]
        log(f"variant {v.name}: {v.text}" + (f" (code {s.kind} {s.root}" + (f", commit {s.commit[:12]}" if s.commit else "")
                                             + ")" if s.kind != "this" else ""))
    t_start = time.monotonic()
    finished: list[dict[str, Any]] = list(done.values())
    interrupted: BaseException | None = None
    journal: Journal | None = None
    progress: RunProgress | None = None
    claimed: Path | None = None  # a journal claim() made whose header is not written yet
    journal_file, target = files  # (journal, results file) of a resumed run
    try:
        with interruptible():
            if not doc:  # the results file's name, ours alone, before anything is measured
                doc = new_document(command=command or [], matrix=matrix.to_dict(), device=device,
                                   precision=precision, threads=threads, omp_wait_policy=omp_wait_policy,
                                   processes=processes, seed=opts.seed, backends={}, cpus=cpus,
                                   python=sys.version.split()[0], interrupted=False,
                                   estimator=stats.estimator_info())
                target, journal_file = claim(default_path(out_dir, doc))
                claimed = journal_file
            log("backends:")
            info = ex.describe(log)
            journal = Journal(journal_file)
            if claimed is not None:
                doc["backends"] = info
                doc["variants"] = variant_records(variants, src, info) if variants else None
                journal.write_header({**doc, "target": str(target)})
                claimed = None
            else:
                doc["backends"] = {**info, **doc.get("backends", {})}
                doc["resumed"] = True
            start = ex.machine("start", log)
            log(explain.start_words("machine at start", start.probe, start.gemm_gflops, ex.blas, PROBE_N,
                                    PEAK_N, device))
            doc.setdefault("noise", {})["start"] = start.probe
            doc["_big_peak"] = max([v for v in (start.gemm_gflops, doc.get("_big_peak")) if v] or [0]) or None
            todo = [(wid, cs) for wid, cs in workloads if wid not in done]
            progress = RunProgress([(wid, ex.planned(cs) + 1) for wid, cs in todo],
                                   processes, sched.rounds, log, started=t_start)
            log = progress.log  # above the progress bar, where there is one (harness.engine.progress)
            for i, (wid, wcells) in enumerate(todo):
                progress.start(i)
                rec = ex.run_workload(wid, wcells, log, progress.round)
                journal.append(rec)
                finished.append(rec)
                progress.finish()
                if reporter is not None:
                    reporter.workload(doc, rec, log, progress.once)
            end = ex.machine("end", log)
            doc["_big_peak"] = max([v for v in (doc["_big_peak"], end.gemm_gflops) if v] or [0]) or None
            doc["noise"]["end"] = end.probe
    except KeyboardInterrupt as e:
        interrupted = e
    finally:
        if progress is not None:
            progress.close()
        ex.close()
        if claimed is not None:  # ended before its header: the name is free again
            unclaim(claimed)
    if interrupted is not None:
        if journal is None or not finished:
            log("\ninterrupted before any workload finished")
            raise interrupted
        log(f"\ninterrupted: {len(finished)} finished workloads kept in {journal.path}; "
            f"continue with: lstmbench run --resume {journal.path}")
        raise interrupted
    doc.pop("target", None)
    assemble(doc, finished, ex.probe, ex.blas, t_start, device)
    if reporter is not None:
        reporter.finished(doc, log)
    path = finalize(journal_file, target, doc)
    log(f"\nresults: {path}")
    return path
