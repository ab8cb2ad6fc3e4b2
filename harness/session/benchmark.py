"""The run of a benchmark matrix (`lstmbench run`, `lstmbench ab`), on any executor: one session
per machine kind (harness.session.session; one kind locally, one per kind on a cluster), each
workload kept in its kind's journal the moment it ends, the results files assembled at the end.

The unit of scheduling is a *workload*: one (mode, sizes, device, precision) with all its
backends, each once per variant where the run has variants (harness.envs.variants). The
executor (harness.engine.executor: `local`, this machine; `cluster`, a Ray cluster) measures
them: every participant's worker prepares the cell, then interleaved rounds in a seeded random
order with the noise probe (harness.engine.scheduler). A backend that crashes, hangs, gives NaN
or runs out of memory gets that status for its cell; the others go on.

`run --resume` measures only what the journal lacks (the settings carry the journal, read
once: RunSettings.resume); the results file is assembled from the journal at the end
(harness.engine.assemble). What the run tells as it goes, beyond its own progress lines, and
at its end is a Reporter's (harness.report.console.RunConsole), as in Google Benchmark the
runner is apart from its reporters."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Protocol

from ..engine.assemble import assemble
from ..engine.executor import Executor, Finished, Workload, make_executor
from ..envs.variants import sources
from ..errors import UsageError
from ..results.schema import SCHEMA
from ..results.store import check_writable
from .journal import is_workload_record
from .session import Resume, RunSession, kept_words, running
from .settings import RunSettings

Log = Callable[[str], None]


class Reporter(Protocol):
    """What the run tells beside its own progress lines: each finished workload (`once`: a line
    said once per run, by key) and the finished run's document."""

    def workload(self, doc: dict[str, Any], record: dict[str, Any], log: Log,
                 once: Callable[[str, str], None]) -> None: ...

    def finished(self, doc: dict[str, Any], log: Log) -> None: ...


def read_resume(r: Resume | Path) -> Resume:
    """An interrupted benchmark run's journal (read once), with its workload records; UsageError
    if it is none."""
    r = r if isinstance(r, Resume) else Resume.read(r)
    if not r.header or r.header.get("schema") != SCHEMA:
        raise UsageError(f"--resume {r.journal}: {r.journal} has no results header; it is not a run's journal")
    return r.only(is_workload_record)


class Run:
    """One benchmark run's sessions, by machine kind, and what it tells as workloads finish."""

    def __init__(self, settings: RunSettings, ex: Executor, reporter: Reporter | None) -> None:
        self.s, self.ex, self.reporter = settings, ex, reporter
        self.sessions: dict[str, RunSession] = {}
        self.info: dict[str, Any] | None = None  # the participants, where described up front
        self._said: set[str] = set()

    def open(self) -> None:
        """A session per kind: the journal it continues, or a new document with a name of its own."""
        resumed = self.ex.resumed()
        for kind, fields in self.ex.kinds().items():
            if kind in resumed:
                self.sessions[kind] = RunSession.resume(resumed[kind])
                self.sessions[kind].doc["resumed"] = True
            else:
                doc = self.s.document(**fields)
                self.sessions[kind] = RunSession.new(doc, self.ex.path(self.s.out_dir, doc, kind))
        self.ex.annotate(self.sessions)

    def described(self, info: dict[str, Any] | None) -> None:
        """The participants, where the executor knows them up front: every session's header."""
        self.info = info
        if info is None:
            return
        for sess in self.sessions.values():
            if sess.resumed:
                sess.doc["backends"] = {**info, **sess.doc.get("backends", {})}
            else:
                sess.doc["backends"] = info
                sess.doc["variants"] = self.ex.variants_record(info)
            sess.begin()

    def done(self, f: Finished, log: Log) -> None:
        """A finished workload: into its kind's journal (the header first, where what it says
        was only known where the workload ran), then told."""
        sess = self.sessions[f.kind]
        if sess.doc.get("python") is None:
            sess.doc.update(f.header)
        if not sess.begun:
            sess.doc["backends"] = f.info or {p: {"available": None} for p in self.s.participants}
            sess.doc["variants"] = self.ex.variants_record(f.info or {})
        sess.keep(f.record)
        for line in f.said:
            log(line)
        if f.report and self.reporter is not None:
            self.reporter.workload(sess.doc, f.record, log, self.once(log))

    def once(self, log: Log) -> Callable[[str, str], None]:
        def say(key: str, line: str) -> None:
            if key not in self._said:
                self._said.add(key)
                log(line)
        return say

    def todo(self, workloads: list[Workload]) -> dict[str, set[str]]:
        return {k: {w for w, _ in workloads} - {r["workload"]["id"] for r in s.records}
                for k, s in self.sessions.items()}

    def finish(self, workloads: list[Workload], t_start: float, log: Log) -> list[Path]:
        """Every kind that measured something: its document assembled, told, written."""
        order = {w: i for i, (w, _) in enumerate(workloads)}
        paths = []
        for kind, sess in self.sessions.items():
            if not sess.begun:
                continue  # finished nothing: no file
            doc = sess.doc
            rd = self.ex.conclude(kind, doc)
            noise = doc.setdefault("noise", {})
            noise.setdefault("start", rd.start)
            noise["end"] = rd.end
            doc["_big_peak"] = rd.big_peak
            last = {r["workload"]["id"]: r for r in sess.records}  # a workload kept twice: the last
            recs = sorted(last.values(), key=lambda r: order.get(r["workload"]["id"], len(order)))
            assemble(doc, recs, rd.probe, rd.blas, t_start, self.s.device)
            if self.reporter is not None:
                self.reporter.finished(doc, log)
            paths.append(sess.finish(doc))
        return paths


def run_matrix(settings: RunSettings, *, reporter: Reporter | None = None, log: Log = print) -> list[Path]:
    """Measure every workload of the settings' matrix on their backends (each once per variant),
    on the executor they name; the results files written (one per machine kind). `reporter`
    tells each workload and the finished run (harness.report.console.RunConsole)."""
    s = settings.seeded()
    if s.resume is None:
        check_writable(s.out_dir)
    workloads = s.workloads()
    with sources(list(s.variants), s.pinned) as src:
        ex = make_executor(s, src, log)  # a cluster is joined here, before the run's signal handlers
        run = Run(s, ex, reporter)
        t_start = time.monotonic()
        sessions: list[RunSession] = []
        with running(sessions, lambda ss: kept_words(ss, note=ex.interrupted_note), log):
            try:
                run.open()
                sessions.extend(run.sessions.values())
                for line in ex.intro(workloads, run.sessions):
                    log(line)
                run.described(ex.describe(log))
                ex.start(log)
                ex.measure(workloads, run.todo(workloads), run.done, log, t_start)
                ex.end(log)
            finally:
                ex.close()
        paths = run.finish(workloads, t_start, log)
    tail = ex.summary(run.sessions)
    for line in tail:
        log(line)
    for p in paths:
        log(f"results: {p}" if tail else f"\nresults: {p}")
    return paths
