"""The `cluster` executor (`run --cluster ADDRESS`): a benchmark matrix on a Ray cluster. Each
workload runs as one exclusive task on a node of each chosen machine kind (harness.cluster.tasks:
the tasks, the retries, the cancelling); the run around them is harness.session.benchmark's,
with one session, and so one results file and one journal, per kind.

A kind's results file is a normal one (compare and report read it): its `machine` is that
kind's (from its first node, with "kind" added), every workload names the node that ran it
(`node`) and its tries (`tries`: node, outcome, seconds; more than one where a node was lost),
and `cluster` says where it ran ({address, kind, nodes, journals: every kind's journal of the
run}). A workload whose every try was lost has its cells recorded with status "lost".

Resuming: `run --resume JOURNAL` (any kind's journal) continues every kind of the run on the
cluster its header names (or --cluster): kinds whose results file is already written are
left alone, the others measure only the workloads their journals lack."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..engine.assemble import workload_record
from ..engine.bench import Cell
from ..engine.executor import Finished, Readings, Workload
from ..engine.scheduler import ProbeState
from ..envs.variants import participant
from ..errors import UsageError
from ..results.store import default_path, safe_name
from ..session.journal import target_of
from ..session.session import Resume
from . import tasks as cluster

if TYPE_CHECKING:
    from ..envs.variants import Source
    from ..session.session import RunSession
    from ..session.settings import RunSettings

Log = Callable[[str], None]


@dataclass
class KindState:
    """One machine kind's part of the run as the driver follows it: its nodes, the probe's
    figures its workloads brought back, and the first and last finished task's readings."""
    nodes: list[cluster.Node]
    probe: ProbeState
    blas: str = "?"
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None


def _resume_kinds(r: Resume) -> tuple[dict[str, Resume], list[str]]:
    """(kind -> its journal, kinds left to measure) of an interrupted cluster run, from the
    journal `r` (read already) and its header's list of every kind's journal. A kind whose
    results file is written is done; one whose journal never got a header (it finished
    nothing) starts afresh."""
    info = r.header.get("cluster") or {}
    if not info:
        raise UsageError(f"--resume {r.journal}: this journal's run was not on a cluster; leave --cluster out")
    out: dict[str, Resume] = {}
    todo = []
    for kind, j in (info.get("journals") or {}).items():
        jp = Path(j)
        if jp.is_file():
            other = r if jp.resolve() == r.journal.resolve() else Resume.read(jp)
            if other.header:
                out[kind] = other
                todo.append(kind)
                continue
        if not target_of(jp).is_file():
            todo.append(kind)
    return out, todo


class ClusterExecutor:
    """Workloads as exclusive Ray tasks, every chosen kind measuring each (module docstring)."""
    interrupted_note = "; the cluster's tasks were cancelled"

    def __init__(self, s: "RunSettings", log: Log, max_tries: int = cluster.MAX_TRIES,
                 no_news_s: float | None = None) -> None:
        if any(v.src is not None for v in s.variants):
            raise UsageError("--cluster: a variant's src= is a source tree on this machine; on a cluster give "
                             "each variant its own python= (an environment with that code on every node)")
        self.s, self.log, self.max_tries = s, log, max_tries
        self._resumed: dict[str, Resume] = {}
        on = s.on
        if s.resume is not None:
            self._resumed, todo_kinds = _resume_kinds(s.resume)
            if not todo_kinds:
                raise UsageError(f"--resume {s.resume.journal}: every kind of this run has its results file already")
            on = ",".join(todo_kinds)
        self.address = s.cluster
        self.t0 = time.monotonic()
        self.ray = cluster.connect(self.address)  # before the run's handlers: ray.init installs its own
        self.nodes = cluster.inventory(self.ray)
        self.state = {k: KindState(ns, ProbeState(None)) for k, ns in
                      cluster.choose_kinds(self.nodes, on, s.device).items()}
        m = s.matrix
        self.no_news_s = no_news_s if no_news_s is not None else max(
            cluster.NO_NEWS_S, 3 * (m.workload_time * s.processes + m.extra_time + m.timeout))
        self.busy: dict[str, list[float]] = {}  # node -> seconds of each workload it finished
        self.jobs = 0

    @staticmethod
    def from_settings(s: "RunSettings", src: dict[str, "Source"], log: Log) -> "ClusterExecutor":
        return ClusterExecutor(s, log)

    # ---- the run's files: one per kind -------------------------------------------------------------

    def kinds(self) -> dict[str, dict[str, Any]]:
        return {k: {"python": None, "cpus": None, "machine": {**st.nodes[0].machine, "kind": k}}
                for k, st in self.state.items()}

    def path(self, out_dir: Path, doc: dict[str, Any], kind: str) -> Path:
        """default_path, with the kind in the name where it is not the machine's slug."""
        p = default_path(out_dir, doc)
        return p if kind == doc["machine"].get("slug") else p.with_name(f"{p.stem}-{safe_name(kind, 'kind')}.json")

    def resumed(self) -> dict[str, Resume]:
        return {k: r for k, r in self._resumed.items() if k in self.state}

    def annotate(self, sessions: dict[str, "RunSession"]) -> None:
        journals = {k: str(x.journal_file) for k, x in sessions.items()}
        for kind, x in sessions.items():
            old = x.doc.get("cluster") or {}
            x.doc["cluster"] = {**old, "address": self.address, "kind": kind,
                                "journals": {**(old.get("journals") or {}), **journals}}

    def intro(self, workloads: list[Workload], sessions: dict[str, "RunSession"]) -> list[str]:
        s, vnames = self.s, self.s.variant_names
        return [f"cluster {self.address}: {len(self.nodes)} lstmbench nodes; kinds "
                + "; ".join(f"{k}: {', '.join(n.name for n in st.nodes)}" for k, st in self.state.items()),
                f"matrix {s.matrix.name}: {len(workloads)} workloads x {len(s.backends)} backends"
                + (f" x {len(vnames)} variants ({', '.join(vnames)})" if vnames else "")
                + f" on each of {len(self.state)} kinds, device {s.device}, precision {s.precision}, threads "
                f"{s.threads}, processes {s.processes}, {s.matrix.rounds} rounds per process, seed {s.seed}; "
                "each workload holds a node alone"]

    def describe(self, log: Log) -> None:
        return None  # each node describes its participants with its workload

    def variants_record(self, info: dict[str, Any]) -> dict[str, Any] | None:
        return ({v.name: {**v.definition(), "source": {"kind": "this"}} for v in self.s.variants}
                if self.s.variants else None)

    def start(self, log: Log) -> None:
        pass  # each task reads its node at its start and end

    def end(self, log: Log) -> None:
        pass

    # ---- workloads --------------------------------------------------------------------------------

    def _spec(self, i: int, wid: str, cells: list[Cell]) -> dict[str, Any]:
        s = self.s
        return {"wid": wid, "cells": [c.to_dict() for c in cells], "participants": s.participants,
                "variants": [v.text for v in s.variants], "threads": s.threads, "device": s.device,
                "overrides": dict(s.overrides), "extra_env": s.extra_env, "sched": asdict(s.schedule()),
                "seed": (int(s.seed or 0) + i) % 2**31, "timeout": s.matrix.timeout,
                "round_time": s.matrix.round_time}

    def measure(self, workloads: list[Workload], todo: dict[str, set[str]],
                done: Callable[[Finished, Log], None], log: Log, t_start: float) -> None:
        """Every kind's workloads as tasks, each handed to `done` as it comes back."""
        jobs = [cluster.Job(k, wid, self._spec(i, wid, cs)) for i, (wid, cs) in enumerate(workloads)
                for k in self.state if wid in todo.get(k, set())]
        cells_of = dict(workloads)
        self.jobs, count = len(jobs), {"done": 0}

        def started(job: cluster.Job, where: dict[str, Any]) -> None:
            log(f"[{count['done']}/{self.jobs}] {job.kind} {job.wid}: started on node {where['node']}"
                + (f" (try {len(job.tries) + 1})" if job.tries else ""))

        def finished(job: cluster.Job, item: dict[str, Any]) -> None:
            count["done"] += 1
            f = self._finished(job, item)
            f.said.append(f"[{count['done']}/{self.jobs}] {job.kind} {job.wid}: done on node {item['node']} "
                          f"in {job.tries[-1].seconds:.0f} s" + (f" after {len(job.tries) - 1} lost tries"
                                                                 if len(job.tries) > 1 else ""))
            done(f, log)

        def failed(job: cluster.Job) -> None:
            count["done"] += 1
            done(Finished(job.kind, lost_record(job, cells_of[job.wid], self.s), report=False,
                          said=[f"[{count['done']}/{self.jobs}] {job.kind} {job.wid}: lost after "
                                f"{len(job.tries)} tries; its cells are recorded as lost and the run goes on"]), log)

        cluster.run_workloads(self.ray, jobs, self.nodes, started=started, done=finished, failed=failed,
                              log=log, max_tries=self.max_tries, no_news_s=self.no_news_s)

    def _finished(self, job: cluster.Job, item: dict[str, Any]) -> Finished:
        """A task's answer: its record with its tries, and its node's readings for its kind."""
        st = self.state[job.kind]
        rec = item["record"]
        rec["workload"]["tries"] = [t.to_json() for t in job.tries]
        st.probe.see(item.get("best_s"))
        st.probe.flop = int(item.get("flop") or st.probe.flop)
        st.blas = str(item.get("blas") or st.blas)
        st.first = st.first or item
        st.last = item
        self.busy.setdefault(item["node"], []).append(job.tries[-1].seconds)
        return Finished(job.kind, rec, item.get("info"), {"python": item.get("python"), "cpus": item.get("cpus")})

    def conclude(self, kind: str, doc: dict[str, Any]) -> Readings:
        st = self.state[kind]
        doc["cluster"]["nodes"] = sorted({n.name for n in st.nodes})
        gemms = [x for it in (st.first, st.last) if it for x in (it.get("start_gemm"), it.get("end_gemm")) if x]
        return Readings(st.probe, st.blas, st.first["start"] if st.first else None,
                        st.last["end"] if st.last else None, max(gemms) if gemms else None)

    def summary(self, sessions: dict[str, "RunSession"]) -> list[str]:
        """Nodes, kinds, workloads and busy seconds per node, wall time; the workloads that lost
        a node on the way."""
        out = [f"\ncluster run: {self.jobs} workloads in {time.monotonic() - self.t0:.0f} s on {len(self.busy)} nodes"]
        for kind, st in self.state.items():
            for n in st.nodes:
                if n.name in self.busy:
                    out.append(f"  {kind:12} {n.name:16} {len(self.busy[n.name])} workloads, "
                               f"{sum(self.busy[n.name]):.0f} s busy ({n.machine.get('cpu') or n.machine.get('slug')})")
        lost = [r["workload"]["id"] for x in sessions.values() for r in x.records
                if len(r["workload"].get("tries") or []) > 1 or r["workload"].get("node") is None]
        if lost:
            out.append(f"  workloads that lost a node on the way: {', '.join(sorted(set(lost)))}")
        return out

    def close(self) -> None:
        pass  # run_workloads cancels what is left on the way out


def lost_record(job: cluster.Job, cells: list[Cell], s: "RunSettings") -> dict[str, Any]:
    """A workload whose every try was lost (or failed): its cells, status "lost", with why."""
    why = "; ".join(f"try {i} {t.outcome}" + (f" on {t.node}" if t.node else "")
                    for i, t in enumerate(job.tries, 1)) or "never started"
    parts = {participant(c.backend, v): (c, v) for c in cells for v in s.variant_names or [None]}
    results = {n: {"status": "lost", "error": why[:500]} for n in parts}
    return workload_record(job.wid, parts, results, None, s.processes, None, node=None,
                           tries=[t.to_json() for t in job.tries])
