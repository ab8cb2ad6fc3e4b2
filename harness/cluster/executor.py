"""`lstmbench run --cluster ADDRESS`: a benchmark matrix on a Ray cluster. Each workload runs as
one exclusive task on a node of each chosen machine kind (harness.cluster.tasks: the tasks,
the retries, the cancelling); this module is the driver's run around them: one results file
per kind, each kept in its own journal as its workloads arrive, resumable, and a summary
naming the nodes, the kinds and the wall time.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError
from ..results.store import check_writable, default_path, new_document, safe_name
from ..engine import stats
from . import tasks as cluster
from ..engine.assemble import assemble, group_workloads
from ..engine.bench import Cell
from ..session.journal import Journal, claim, finalize, target_of, unclaim
from ..engine.matrix import Matrix
from ..engine.scheduler import ProbeState, Schedule
from ..engine.signals import interruptible
from ..envs.variants import Variant, participant

Log = Callable[[str], None]


@dataclass
class KindRun:
    """One machine kind's part of the run: its document, files and finished workloads."""
    kind: str
    nodes: list[cluster.Node]
    doc: dict[str, Any]
    target: Path
    journal_file: Path
    journal: Journal | None = None  # once its header is written
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    probe: ProbeState = field(default_factory=lambda: ProbeState(None))
    blas: str = "?"
    first: dict[str, Any] | None = None  # the first and last finished task's machine readings
    last: dict[str, Any] | None = None


def _lost_record(job: cluster.Job, cells: list[Cell], variants: list[str], processes: int) -> dict[str, Any]:
    """A workload whose every try was lost (or failed): its cells, status "lost", with why."""
    why = "; ".join(f"try {i} {t.outcome}" + (f" on {t.node}" if t.node else "")
                    for i, t in enumerate(job.tries, 1)) or "never started"
    c0 = cells[0]
    names = [(c, v) for c in cells for v in (variants or [None])]
    workload = {"id": job.wid, "mode": c0.mode, "preset": c0.preset, "batch": c0.batch,
                "seq_len": c0.seq_len, "device": c0.device, "precision": c0.precision,
                "backends": [participant(c.backend, v) for c, v in names], "rounds": 0,
                "remeasured_rounds": 0, "cut_short": False, "settle_s": 0.0, "foreign_cores": None,
                "processes": processes, "order": [], "probe_s": [], "probe_best_s": None, "ratios": {},
                "node": None, "tries": [t.to_json() for t in job.tries]}
    return {"workload": workload,
            "cells": [{"cell": c.to_dict(), "variant": v, "workload": job.wid,
                       "result": {"status": "lost", "error": why[:500]}} for c, v in names]}


def _kind_path(out_dir: Path, doc: dict[str, Any], kind: str) -> Path:
    """default_path, with the kind in the name where it is not the machine's slug."""
    p = default_path(out_dir, doc)
    return p if kind == doc["machine"].get("slug") else p.with_name(f"{p.stem}-{safe_name(kind, 'kind')}.json")


def _resume_kinds(resume: Path, address: str | None
                  ) -> tuple[str | None, dict[str, Any], dict[str, tuple[Path, dict, list]], list[str]]:
    """(address, header, kind -> (journal, header, records), kinds left to measure) of an
    interrupted cluster run. A kind whose results file is written is done; one whose journal
    never got a header (it finished nothing) starts afresh."""
    header, _ = Journal.read(resume)
    info = header.get("cluster") or {}
    if not info:
        raise UsageError(f"--resume {resume}: this journal's run was not on a cluster; leave --cluster out")
    out: dict[str, tuple[Path, dict, list]] = {}
    todo = []
    for kind, j in (info.get("journals") or {}).items():
        jp = Path(j)
        if jp.is_file():
            h, recs = Journal.read(jp)
            if h:
                out[kind] = (jp, h, recs)
                todo.append(kind)
                continue
        if not target_of(jp).is_file():
            todo.append(kind)
    return address or info.get("address"), header, out, todo


def run_cluster(matrix: Matrix, backends: list[str], *, address: str | None, on: str | None = None,
                device: str = "cpu", precision: str = "float32", threads: int | None = None,
                overrides: dict[str, str] | None = None, out_dir: Path = Path("results"),
                command: list[str] | None = None, processes: int = 1, omp_wait_policy: str | None = None,
                seed: int | None = None, resume: Path | None = None, variants: list[Variant] | None = None,
                reporter: Any = None, log: Log = print, max_tries: int = cluster.MAX_TRIES,
                no_news_s: float | None = None) -> list[Path]:
    """Measure the matrix's workloads on the cluster at `address`, once per chosen kind; the
    results files written (one per kind). A try silent for `no_news_s` is taken for lost
    (default: an hour, or three times what the matrix lets a workload take, if longer)."""
    variants = list(variants or [])
    if any(v.src is not None for v in variants):
        raise UsageError("--cluster: a variant's src= is a source tree on this machine; on a cluster give "
                         "each variant its own python= (an environment with that code on every node)")
    resumed: dict[str, tuple[Path, dict, list]] = {}
    if resume is not None:
        address, header, resumed, todo_kinds = _resume_kinds(resume, address)
        seed = header.get("seed")
        if not todo_kinds:
            raise UsageError(f"--resume {resume}: every kind of this run has its results file already")
        on = ",".join(todo_kinds)
    else:
        check_writable(out_dir)
    assert address is not None
    t_start = time.monotonic()
    ray = cluster.connect(address)  # before interruptible(): ray.init installs its own SIGTERM handler
    nodes = cluster.inventory(ray)
    kinds = cluster.choose_kinds(nodes, on, device)
    seed = int(seed if seed is not None else time.time_ns() % 2**31)
    extra_env = {"OMP_WAIT_POLICY": omp_wait_policy.upper()} if omp_wait_policy else {}
    sched = Schedule(rounds=matrix.rounds, processes=processes, min_clean=matrix.min_clean,
                     extra_rounds=matrix.extra_rounds, extra_time=matrix.extra_time,
                     max_time=matrix.workload_time)
    if no_news_s is None:
        no_news_s = max(cluster.NO_NEWS_S, 3 * (matrix.workload_time * processes + matrix.extra_time
                                                + matrix.timeout))
    vnames = [v.name for v in variants]
    parts = [participant(b, v) for b in backends for v in (vnames or [None])]
    workloads = group_workloads(matrix.cells(backends, device, precision))
    cells_of = dict(workloads)

    runs: dict[str, KindRun] = {}
    claimed: list[Path] = []
    for kind, ns in kinds.items():
        if kind in resumed:
            jp, h, recs = resumed[kind]
            kr = KindRun(kind, ns, {k: v for k, v in h.items() if k != "target"}, target_of(jp), jp,
                         journal=Journal(jp), records={r["workload"]["id"]: r for r in recs})
            kr.doc["resumed"] = True
        else:
            doc = new_document(command=command or [], matrix=matrix.to_dict(), device=device,
                               precision=precision, threads=threads, omp_wait_policy=omp_wait_policy,
                               processes=processes, seed=seed, backends={}, cpus=None, python=None,
                               interrupted=False, estimator=stats.estimator_info())
            doc["machine"] = {**ns[0].machine, "kind": kind}
            target, jf = claim(_kind_path(out_dir, doc, kind))
            claimed.append(jf)
            kr = KindRun(kind, ns, doc, target, jf)
        runs[kind] = kr
    journals = {k: str(r.journal_file) for k, r in runs.items()}
    for kr in runs.values():
        kr.doc["cluster"] = {**(kr.doc.get("cluster") or {}), "address": address, "kind": kr.kind,
                             "journals": {**((kr.doc.get("cluster") or {}).get("journals") or {}), **journals}}

    log(f"cluster {address}: {len(nodes)} lstmbench nodes; kinds "
        + "; ".join(f"{k}: {', '.join(n.name for n in ns)}" for k, ns in kinds.items()))
    log(f"matrix {matrix.name}: {len(workloads)} workloads x {len(backends)} backends"
        + (f" x {len(vnames)} variants ({', '.join(vnames)})" if vnames else "")
        + f" on each of {len(runs)} kinds, device {device}, precision {precision}, threads {threads}, "
        f"processes {processes}, {sched.rounds} rounds per process, seed {seed}; each workload holds a node alone")

    jobs: list[cluster.Job] = []
    for i, (wid, cs) in enumerate(workloads):
        spec = {"wid": wid, "cells": [c.to_dict() for c in cs], "participants": parts,
                "variants": [v.text for v in variants], "threads": threads, "device": device,
                "overrides": dict(overrides or {}), "extra_env": extra_env, "sched": asdict(sched),
                "seed": (seed + i) % 2**31, "timeout": matrix.timeout, "round_time": matrix.round_time}
        jobs += [cluster.Job(k, wid, spec) for k, kr in runs.items() if wid not in kr.records]
    total = len(jobs)
    count = {"done": 0}
    busy: dict[str, list[float]] = {}  # node -> seconds of each workload it finished
    once_said: set[str] = set()

    def once(key: str, line: str) -> None:
        if key not in once_said:
            once_said.add(key)
            log(line)

    def keep(kr: KindRun, rec: dict[str, Any], info: dict[str, Any] | None) -> None:
        if kr.journal is None:  # the header, at the kind's first finished workload (as a local run)
            kr.doc["backends"] = info or {p: {"available": None} for p in parts}
            kr.doc["variants"] = ({v.name: {**v.definition(), "source": {"kind": "this"}} for v in variants}
                                  if variants else None)
            kr.journal = Journal(kr.journal_file)
            kr.journal.write_header({**kr.doc, "target": str(kr.target)})
            claimed.remove(kr.journal_file)
        kr.journal.append(rec)
        kr.records[rec["workload"]["id"]] = rec
        count["done"] += 1

    def started(job: cluster.Job, where: dict[str, Any]) -> None:
        log(f"[{count['done']}/{total}] {job.kind} {job.wid}: started on node {where['node']}"
            + (f" (try {len(job.tries) + 1})" if job.tries else ""))

    def done(job: cluster.Job, item: dict[str, Any]) -> None:
        kr = runs[job.kind]
        rec = item["record"]
        rec["workload"]["tries"] = [t.to_json() for t in job.tries]
        kr.probe.see(item.get("best_s"))
        kr.probe.flop = int(item.get("flop") or kr.probe.flop)
        kr.blas = str(item.get("blas") or kr.blas)
        if kr.doc.get("python") is None:
            kr.doc.update(python=item.get("python"), cpus=item.get("cpus"))
        kr.first = kr.first or item
        kr.last = item
        keep(kr, rec, item.get("info"))
        busy.setdefault(item["node"], []).append(job.tries[-1].seconds)
        log(f"[{count['done']}/{total}] {job.kind} {job.wid}: done on node {item['node']} "
            f"in {job.tries[-1].seconds:.0f} s" + (f" after {len(job.tries) - 1} lost tries" if len(job.tries) > 1 else ""))
        if reporter is not None:
            reporter.workload(kr.doc, rec, log, once)

    def failed(job: cluster.Job) -> None:
        keep(runs[job.kind], _lost_record(job, cells_of[job.wid], vnames, processes), None)
        log(f"[{count['done']}/{total}] {job.kind} {job.wid}: lost after {len(job.tries)} tries; "
            "its cells are recorded as lost and the run goes on")

    interrupted: BaseException | None = None
    try:
        with interruptible():
            cluster.run_workloads(ray, jobs, nodes, started=started, done=done, failed=failed, log=log,
                                  max_tries=max_tries, no_news_s=no_news_s)
    except KeyboardInterrupt as e:
        interrupted = e
    finally:
        for jf in list(claimed):  # kinds that finished nothing: their names are free again
            unclaim(jf)
    if interrupted is not None:
        kept = [kr for kr in runs.values() if kr.journal is not None]
        if not kept:
            log("\ninterrupted before any workload finished; the cluster's tasks were cancelled")
            raise interrupted
        log(f"\ninterrupted: {sum(len(kr.records) for kr in kept)} finished workloads kept in "
            + ", ".join(str(kr.journal_file) for kr in kept)
            + f"; the cluster's tasks were cancelled; continue with: lstmbench run --resume {kept[0].journal_file}")
        raise interrupted

    paths = []
    for kr in runs.values():
        if kr.journal is None:
            continue
        doc = kr.doc
        doc.pop("target", None)
        noise = doc.setdefault("noise", {})
        if kr.first is not None:
            noise.setdefault("start", kr.first["start"])
            noise["end"] = kr.last["end"] if kr.last else None
        gemms = [x for it in (kr.first, kr.last) if it for x in (it.get("start_gemm"), it.get("end_gemm")) if x]
        doc["_big_peak"] = max(gemms) if gemms else None
        recs = [kr.records[w] for w, _ in workloads if w in kr.records]
        doc["cluster"]["nodes"] = sorted({n.name for n in kr.nodes})
        assemble(doc, recs, kr.probe, kr.blas, t_start, device)
        if reporter is not None:
            reporter.finished(doc, log)
        paths.append(finalize(kr.journal_file, kr.target, doc))
    wall = time.monotonic() - t_start
    log(f"\ncluster run: {total} workloads in {wall:.0f} s on {len(busy)} nodes")
    for kind, kr in runs.items():
        for n in kr.nodes:
            if n.name in busy:
                log(f"  {kind:12} {n.name:16} {len(busy[n.name])} workloads, {sum(busy[n.name]):.0f} s busy "
                    f"({n.machine.get('cpu') or n.machine.get('slug')})")
    lost = [w for kr in runs.values() for w, r in kr.records.items() if len(r["workload"].get("tries") or []) > 1
            or r["workload"].get("node") is None]
    if lost:
        log(f"  workloads that lost a node on the way: {', '.join(sorted(set(lost)))}")
    for p in paths:
        log(f"results: {p}")
    return paths

