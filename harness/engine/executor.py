"""Where a run's workloads are measured: the executor seam.

The session (harness.session) owns a run's life: its results files, journals, resumption and
interruption. An Executor owns the machines the measurements happen on: which kinds of machine
there are (one results file each), what each participant is there (availability, versions,
kernel paths), the machine's noise and peak GEMM, and every workload, handed back as it
finishes (Finished: the workload's journal record, {"workload": {...}, "cells": [...]}, schema
v3). harness.session.benchmark runs a benchmark matrix through any of them:

- `local` (LocalExecutor, here): this machine, one workload at a time, with worker processes
  (harness.engine.workers) and the interleaved scheduler (harness.engine.scheduler);
- `cluster` (harness.cluster.executor.ClusterExecutor): a Ray cluster, one workload per node
  at a time, one results file per machine kind.

A new executor is one module with a class that follows Executor, constructed from the run's
settings, and its entry in EXECUTORS. LocalExecutor's parts also serve where one workload is
measured elsewhere (a cluster node's task) or by another run kind (`lstmbench baselines`):
Setup is a plain record, so that it can travel with a workload."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from impls import registry

from ..envs.host import worker_cpus
from ..envs.variants import participant, split
from ..errors import UsageError
from ..results.store import default_path
from . import cpuload, explain, stats
from .assemble import cell_result, workload_record
from .bench import PEAK_N, Cell
from .kinds import KINDS
from .participants import PROBE, PROBE_N, ParticipantFailed
from .progress import RunProgress
from .scheduler import ProbeState, Schedule, WorkloadData, measure_workload
from .workers import Launcher, WorkerFailed, WorkerParticipant, Workers, answer

if TYPE_CHECKING:
    from ..envs.variants import Source, Variant
    from ..session.session import RunSession
    from ..session.settings import RunSettings

Log = Callable[[str], None]
OnRound = Callable[[int, int, bool], None]  # (process set, participants, re-measuring)
Workload = tuple[str, list[Cell]]  # (workload id, its cells: one per backend)
LOCAL = "this machine"  # the local executor's one kind


@dataclass
class Setup:
    """What an executor is given: the run's participants (BACKEND or BACKEND@VARIANT, in order)
    and variant names, how each participant's worker starts, the schedule of a workload's
    rounds, the seed of their order, the device, and the timeouts of a request and a round.
    `kinds`: participants of a kind other than `backend` (harness.engine.kinds), with their own
    request fields in `extra` (a baseline's file and host backend)."""
    participants: list[str]
    variants: list[str]
    launch: Launcher
    sched: Schedule
    seed: int
    device: str = "cpu"
    timeout: float = 600.0
    round_time: float = 0.03
    kinds: dict[str, str] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def kind(self, name: str) -> str:
        return self.kinds.get(name, "backend")


@dataclass
class Burst:
    """The machine now: the probe alone for a few rounds (stats.probe_summary) and a larger
    GEMM's best GFLOP/s (None where none could be measured)."""
    probe: dict[str, Any]
    gemm_gflops: float | None


@dataclass
class Finished:
    """A workload as an executor hands it back: the machine kind whose results file it goes in,
    its journal record, and what only the place it ran knows (where the executor does not
    describe its participants up front: their `info`; `header` fields such as the interpreter's
    version). `said`: the executor's own lines about it, told once it is kept (so that a workload
    said to be done is in its journal); `report`: whether the run's reporter tells it then (a
    workload lost on a cluster is not)."""
    kind: str
    record: dict[str, Any]
    info: dict[str, Any] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)
    report: bool = True


@dataclass
class Readings:
    """What a kind's results document takes of its machine at the end (harness.engine.assemble):
    the noise probe's figures, its BLAS, the probe alone at the start and the end, the larger
    GEMM's best."""
    probe: ProbeState
    blas: str
    start: dict[str, Any] | None
    end: dict[str, Any] | None
    big_peak: float | None


class Executor(Protocol):
    """How a benchmark run has its workloads measured (module docstring), in the order the run
    calls it."""
    interrupted_note: str  # what an interruption does beyond the run's own words

    def kinds(self) -> dict[str, dict[str, Any]]: ...  # kind -> fields of its new document

    def path(self, out_dir: Path, doc: dict[str, Any], kind: str) -> Path: ...  # its results file

    def resumed(self) -> dict[str, Any]: ...  # kind -> the Resume its session continues

    def annotate(self, sessions: dict[str, "RunSession"]) -> None: ...  # fields naming them all

    def intro(self, workloads: list[Workload], sessions: dict[str, "RunSession"]) -> list[str]: ...

    def describe(self, log: Log) -> dict[str, Any] | None: ...  # None: known where each one runs

    def variants_record(self, info: dict[str, Any]) -> dict[str, Any] | None: ...

    def start(self, log: Log) -> None: ...

    def measure(self, workloads: list[Workload], todo: dict[str, set[str]],
                done: Callable[[Finished, Log], None], log: Log, t_start: float) -> None: ...

    def end(self, log: Log) -> None: ...

    def conclude(self, kind: str, doc: dict[str, Any]) -> Readings: ...

    def summary(self, sessions: dict[str, "RunSession"]) -> list[str]: ...

    def close(self) -> None: ...


# Executors by name: "module:class", imported only when chosen (Ray only with --cluster).
EXECUTORS: dict[str, str] = {
    "local": "harness.engine.executor:LocalExecutor",
    "cluster": "harness.cluster.executor:ClusterExecutor",
}


def make_executor(settings: "RunSettings", src: dict[str, "Source"], log: Log) -> Executor:
    """The executor the settings name (RunSettings.executor), built from them."""
    mod, _, cls = EXECUTORS[settings.executor].partition(":")
    return getattr(importlib.import_module(mod), cls).from_settings(settings, src, log)


# ---- a workload's participants ------------------------------------------------------------------

def unsupported(cell: Cell) -> str | None:
    """Why the cell's backend cannot run it (its spec lacks the mode, device or precision)."""
    return registry.unsupported(cell.backend, mode=cell.mode, device=cell.device, precision=cell.precision)


def plan_workload(cells: list[Cell], info: dict[str, Any], setup: Setup
                  ) -> tuple[dict[str, tuple[Cell, str | None]], dict[str, dict[str, Any]]]:
    """A workload's participants (every cell once per variant, BACKEND@VARIANT) -> their cell
    and variant, and the result of those that will not be timed: unsupported by the backend's
    spec, or unavailable where they run (`info`, Executor.describe)."""
    parts = {participant(c.backend, v): (c, v) for c in cells for v in setup.variants or [None]}
    pre: dict[str, dict[str, Any]] = {}
    for name, (c, _) in parts.items():
        why = unsupported(c) if setup.kind(name) == "backend" else None
        if why:
            pre[name] = {"status": "unsupported", "error": why}
        elif not info.get(name, {}).get("available"):
            pre[name] = {"status": "unavailable", "error": info.get(name, {}).get("reason")}
    return parts, pre


def participant_info(workers: Workers, names: list[str], device: str, log: Log) -> dict[str, Any]:
    """Availability, versions and kernel paths, asked of each participant's own worker (a
    backend, a backend in a variant), keyed by participant; a participant unavailable here
    gives its worker back."""
    info: dict[str, Any] = {}
    for name in names:
        b = split(name)[0]
        try:
            w = workers.get(name, 0)
            ans = w.request({"op": "info", "backends": [b], "threads": workers.threads(name),
                             "device": device}, timeout=300)
            entry = ans["backends"][b] if ans.get("ok") else {"available": False, "reason": ans.get("error")}
            entry.update(python=ans.get("python"), executable=ans.get("executable"),
                         numpy=ans.get("numpy"))
        except (registry.BackendError, UsageError, WorkerFailed, OSError) as e:
            entry = {"available": False, "reason": str(e)}
        if not entry.get("available"):
            workers.drop(name, 0)
            log(f"  {name}: unavailable: {entry.get('reason')}")
        else:
            log(f"  {name}: {entry.get('version', '?')} ({entry.get('kernel', '?')})")
        info[name] = entry
    return info


def variant_records(variants: list["Variant"], src: dict[str, "Source"], info: dict[str, Any]) -> dict[str, Any]:
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


# ---- this machine ---------------------------------------------------------------------------------

class LocalExecutor:
    """Every workload on this machine: the participants' workers (one set per process index,
    kept from workload to workload), the noise probe in a worker of its own (restarted in a
    fresh one before the next workload when it failed or hung), the scheduler's rounds."""
    interrupted_note = ""

    def __init__(self, setup: Setup, settings: "RunSettings | None" = None,
                 src: dict[str, "Source"] | None = None) -> None:
        self.setup = setup
        self.settings, self.src = settings, src or {}
        self.workers = Workers(setup.launch)
        self.rng = np.random.default_rng(setup.seed)
        self.probe = ProbeState(None)
        self.blas = "?"
        self.info: dict[str, Any] = {}
        self._revive = False  # whether a probe lost on the way is started again
        self._start: Burst | None = None
        self._end: Burst | None = None

    @staticmethod
    def from_settings(s: "RunSettings", src: dict[str, "Source"], log: Log) -> "LocalExecutor":
        """A benchmark run's: its workers pinned where --threads is fewer than the CPUs, each
        variant's interpreter, source tree and environment."""
        cpus = worker_cpus(s.threads) if s.device == "cpu" else None
        launch = Launcher(dict(s.overrides), s.threads, s.extra_env, cpus, {v.name: v for v in s.variants},
                          {n: str(x.root) for n, x in src.items() if x.kind != "this"}, s.device)
        setup = Setup(s.participants, s.variant_names, launch, s.schedule(), int(s.seed or 0), s.device,
                      s.matrix.timeout, s.matrix.round_time)
        return LocalExecutor(setup, s, src)

    # ---- the run's files: one, this machine's --------------------------------------------------

    def kinds(self) -> dict[str, dict[str, Any]]:
        return {LOCAL: {"cpus": self.setup.launch.cpus, "python": sys.version.split()[0]}}

    def path(self, out_dir: Path, doc: dict[str, Any], kind: str) -> Path:
        return default_path(out_dir, doc)

    def resumed(self) -> dict[str, Any]:
        r = self.settings.resume if self.settings else None
        return {LOCAL: r} if r is not None else {}

    def annotate(self, sessions: dict[str, "RunSession"]) -> None:
        pass

    def intro(self, workloads: list[Workload], sessions: dict[str, "RunSession"]) -> list[str]:
        """The run's plan: the resumed journal, the matrix and its settings, the variants."""
        s, cpus = self.settings, self.setup.launch.cpus
        assert s is not None
        out = [f"resuming {x.journal_file}: {len(x.records)} workloads already measured"
               for x in sessions.values() if x.resumed]
        vnames = s.variant_names
        out.append(f"matrix {s.matrix.name}: {len(workloads)} workloads x {len(s.backends)} backends"
                   + (f" x {len(vnames)} variants ({', '.join(vnames)})" if vnames else "")
                   + f", device {s.device}, precision {s.precision}, threads {s.threads}"
                   + (f" (workers pinned to CPU {','.join(map(str, cpus))})" if cpus else "")
                   + f", processes {s.processes}" + (" per variant" if vnames else "") + ", "
                   f"OMP_WAIT_POLICY {s.omp_wait_policy or 'unset'}, {self.setup.sched.rounds} rounds per "
                   f"process, seed {s.seed}")
        for v in s.variants:
            x = self.src[v.name]
            out.append(f"variant {v.name}: {v.text}" + (f" (code {x.kind} {x.root}" + (
                f", commit {x.commit[:12]}" if x.commit else "") + ")" if x.kind != "this" else ""))
        return out

    def describe(self, log: Log) -> dict[str, Any]:
        """Every participant of kind backend asked in its own worker; one of another kind is
        available as the backend whose worker it shares (Launcher.aliases) is."""
        log("backends:")
        names = [n for n in self.setup.participants if self.setup.kind(n) == "backend"]
        self.info = participant_info(self.workers, names, self.setup.device, log)
        return dict(self.info)  # the participants described (serve adds others to self.info)

    def serve(self, name: str, host: str) -> None:
        """Participant `name` (of a kind other than backend) runs in `host`'s kind of worker and
        is available where `host` is."""
        self.setup.launch.aliases[name] = host
        self.info[name] = self.info.get(host, {"available": False, "reason": f"{host} was not described"})

    def variants_record(self, info: dict[str, Any]) -> dict[str, Any] | None:
        vs = list(self.settings.variants) if self.settings else []
        return variant_records(vs, self.src, info) if vs else None

    def planned(self, cells: list[Cell]) -> int:
        parts, pre = plan_workload(cells, self.info, self.setup)
        return len(parts) - len(pre)

    # ---- the noise probe and the machine's readings --------------------------------------

    def start_probe(self, log: Log, again: bool = False) -> bool:
        """Prepare the noise probe in its worker (a fresh one when the last died or hung), with
        the run's timeout like any participant; False when it cannot be prepared (the run goes
        on without it)."""
        part = WorkerParticipant(self.workers, PROBE, 0, None, self.setup.timeout, self.setup.round_time,
                                 kind=KINDS["probe"])
        try:
            pinfo = part.prepare()
        except ParticipantFailed as e:
            log(("      noise probe could not be restarted" if again else "noise probe unavailable")
                + f" ({e}); rounds cannot be checked against it")
            return False
        if again:
            log("      noise probe restarted in a fresh worker")
        self.probe.participant = part
        self.probe.flop = int(pinfo.get("flop", self.probe.flop))
        if not again:
            self.blas = str(pinfo.get("blas", "?"))
        return True

    def _revive_probe(self, log: Log) -> None:
        if self.probe.participant is None and self._revive:  # failed or hung in an earlier workload
            self._revive = self.start_probe(log, again=True)

    def _noise_burst(self, log: Log, rounds: int = 15) -> dict[str, Any]:
        """The probe alone for a few rounds: how fast and how steady the machine is right now."""
        got: list[float] = []
        if self.probe.participant is not None:
            for _ in range(rounds):
                try:
                    got.append(self.probe.participant.round())
                except ParticipantFailed as e:
                    log(f"noise probe failed ({e}); going on without it")
                    self.probe.participant = None
                    break
        for s in got:
            self.probe.see(s)
        return stats.probe_summary(got, self.probe.flop)

    def gemm_peak(self) -> float | None:
        """A larger GEMM's best GFLOP/s now: NumPy's BLAS in the probe's worker on the CPU; the
        device_matmul_peak hook of an available backend's worker on a GPU."""
        device, workers = self.setup.device, self.workers
        if device == "cpu":
            try:
                return answer(workers.healthy(PROBE).request({"op": "peak", "device": "cpu"}, 300)).get("gflops")
            except (WorkerFailed, ParticipantFailed, OSError):
                workers.drop(PROBE)
                return None
        for name in self.setup.participants:  # the first whose module has the hook (asked in its own worker)
            if not self.info.get(name, {}).get("available") or self.setup.kind(name) != "backend":
                continue
            try:
                g = answer(workers.healthy(name).request({"op": "peak", "device": device,
                                                          "backend": split(name)[0]}, 300)).get("gflops")
            except WorkerFailed:
                workers.drop(name)
                continue
            except ParticipantFailed:  # no device_matmul_peak hook in this backend's module
                continue
            if g:
                return float(g)
        return None

    def machine(self, when: str, log: Log) -> Burst:
        """The probe alone and the larger GEMM, at the run's start (where the probe is first
        prepared) or its end (where a lost probe is started once more first)."""
        if when == "start":
            self._revive = self.start_probe(log)
        else:
            self._revive_probe(log)
        return Burst(self._noise_burst(log), self.gemm_peak())

    def start(self, log: Log) -> None:
        self._start = self.machine("start", log)
        log(explain.start_words("machine at start", self._start.probe, self._start.gemm_gflops, self.blas,
                                PROBE_N, PEAK_N, self.setup.device))

    def end(self, log: Log) -> None:
        self._end = self.machine("end", log)

    def conclude(self, kind: str, doc: dict[str, Any]) -> Readings:
        gemms = [b.gemm_gflops for b in (self._start, self._end) if b is not None and b.gemm_gflops]
        return Readings(self.probe, self.blas, self._start.probe if self._start else None,
                        self._end.probe if self._end else None, max(gemms) if gemms else None)

    def summary(self, sessions: dict[str, "RunSession"]) -> list[str]:
        return []

    # ---- workloads ------------------------------------------------------------------------------

    def measure(self, workloads: list[Workload], todo: dict[str, set[str]],
                done: Callable[[Finished, Log], None], log: Log, t_start: float) -> None:
        """The workloads `todo` names, one after the other, each handed to `done` as it ends,
        with a progress bar on a terminal (plain lines in a log) and the time left."""
        mine = [(wid, cs) for wid, cs in workloads if wid in todo.get(LOCAL, set())]
        progress = RunProgress([(wid, self.planned(cs) + 1) for wid, cs in mine], self.setup.sched.processes,
                               self.setup.sched.rounds, log, started=t_start)
        try:
            for i, (wid, cells) in enumerate(mine):
                progress.start(i)
                rec = self.run_workload(wid, cells, progress.log, progress.round)
                progress.finish()
                done(Finished(LOCAL, rec), progress.log)
        finally:
            progress.close()

    def run_workload(self, wid: str, cells: list[Cell], log: Log, on_round: OnRound | None = None
                     ) -> dict[str, Any]:
        """Measure one workload; its journal record {"workload": {...}, "cells": [...]}. With
        variants, every backend takes part once per variant (BACKEND@VARIANT), each cell entry
        naming its variant."""
        s = self.setup
        self._revive_probe(log)
        parts, pre = plan_workload(cells, self.info, s)
        timed = [n for n in parts if n not in pre]
        made: list[WorkerParticipant] = []

        def make(name: str, p: int) -> WorkerParticipant:
            made.append(WorkerParticipant(self.workers, name, p, parts[name][0], s.timeout, s.round_time,
                                          kind=KINDS[s.kind(name)], extra=s.extra.get(name)))
            return made[-1]

        prober = self.probe.participant  # (it may be lost on the way)
        probe_settled = getattr(prober, "settled_s", 0.0)
        before = cpuload.snapshot()
        wd = (measure_workload(timed, make, self.probe, s.sched, self.rng, log, on_round) if timed
              else WorkloadData({}, [], []))
        foreign = cpuload.foreign_cores(before, cpuload.snapshot())
        settled = sum(x.settled_s for x in made) + getattr(prober, "settled_s", 0.0) - probe_settled
        results = {n: pre.get(n) or cell_result(parts[n][0], wd.backends[n], s.sched) for n in parts}
        return workload_record(wid, parts, results, wd, s.sched.processes, self.probe.best_s,
                               settle_s=settled, foreign=foreign)

    def close(self) -> None:
        self.workers.close()
