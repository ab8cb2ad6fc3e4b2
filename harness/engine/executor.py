"""Where a run's workloads are measured: the executor seam of `lstmbench run`.

The runner (harness.session.benchmark) owns the run: its results file, journal, progress and
resumption. An Executor owns the machine the measurements happen on: it asks each participant
what it is there (availability, versions, kernel paths), reads the machine's noise and peak
GEMM at the start and the end, and measures one workload at a time, returning the workload's
journal record ({"workload": {...}, "cells": [...]}, schema v3). LocalExecutor does all of that
on this machine with worker processes (harness.engine.workers) and the interleaved scheduler
(harness.engine.scheduler).

An executor that runs workloads elsewhere (a cluster: one workload per node at a time) is one
more module with a class that follows Executor and takes a Setup (a plain record, so that it
can travel with the workload); the run command passes it to run_matrix as `executor`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from impls import registry

from . import cpuload, stats
from .assemble import cell_result, workload_ratios
from .bench import Cell
from ..errors import UsageError
from .kinds import KINDS
from .participants import PROBE, ParticipantFailed
from .scheduler import ProbeState, Schedule, WorkloadData, measure_workload
from ..envs.variants import participant, split
from .workers import Launcher, WorkerFailed, WorkerParticipant, Workers, answer

Log = Callable[[str], None]
OnRound = Callable[[int, int, bool], None]  # (process set, participants, re-measuring)


@dataclass
class Setup:
    """What an executor is given: the run's participants (BACKEND or BACKEND@VARIANT, in order)
    and variant names, how each participant's worker starts, the schedule of a workload's
    rounds, the seed of their order, the device, and the timeouts of a request and a round."""
    participants: list[str]
    variants: list[str]
    launch: Launcher
    sched: Schedule
    seed: int
    device: str = "cpu"
    timeout: float = 600.0
    round_time: float = 0.03


@dataclass
class Burst:
    """The machine now: the probe alone for a few rounds (stats.probe_summary) and a larger
    GEMM's best GFLOP/s (None where none could be measured)."""
    probe: dict[str, Any]
    gemm_gflops: float | None


class Executor(Protocol):
    """How the runner has its workloads measured (module docstring)."""
    probe: ProbeState  # the run's noise probe figures so far (its best round: the clean threshold)
    blas: str  # the probe's BLAS, for the efficiency denominator's provenance

    def describe(self, log: Log) -> dict[str, Any]: ...  # participant -> availability, versions

    def planned(self, cells: list[Cell]) -> int: ...  # participants a workload will time

    def machine(self, when: str, log: Log) -> Burst: ...  # when: "start" | "end"

    def run_workload(self, wid: str, cells: list[Cell], log: Log, on_round: OnRound) -> dict[str, Any]: ...

    def close(self) -> None: ...


def unsupported(cell: Cell) -> str | None:
    """Why the cell's backend cannot run it (its spec lacks the mode, device or precision)."""
    return registry.unsupported(cell.backend, mode=cell.mode, device=cell.device, precision=cell.precision)


def plan_workload(cells: list[Cell], info: dict[str, Any], variants: list[str]
                  ) -> tuple[dict[str, Cell], dict[str, str | None], dict[str, dict[str, Any]]]:
    """A workload's participants (every backend once per variant, BACKEND@VARIANT) -> their
    cell and variant, and the result of those that will not be timed: unsupported by the
    backend's spec, or unavailable where they run (`info`, Executor.describe)."""
    by_p: dict[str, Cell] = {}
    variant_of: dict[str, str | None] = {}
    for c in cells:
        for v in variants or [None]:
            name = participant(c.backend, v)
            by_p[name], variant_of[name] = c, v
    pre: dict[str, dict[str, Any]] = {}
    for name, c in by_p.items():
        why = unsupported(c)
        if why:
            pre[name] = {"status": "unsupported", "error": why}
        elif not info.get(name, {}).get("available"):
            pre[name] = {"status": "unavailable", "error": info.get(name, {}).get("reason")}
    return by_p, variant_of, pre


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


class LocalExecutor:
    """Every workload on this machine: the participants' workers (one set per process index,
    kept from workload to workload), the noise probe in a worker of its own (restarted in a
    fresh one before the next workload when it failed or hung), the scheduler's rounds."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.workers = Workers(setup.launch)
        self.rng = np.random.default_rng(setup.seed)
        self.probe = ProbeState(None)
        self.blas = "?"
        self.info: dict[str, Any] = {}
        self._revive = False  # whether a probe lost on the way is started again

    def describe(self, log: Log) -> dict[str, Any]:
        self.info = participant_info(self.workers, self.setup.participants, self.setup.device, log)
        return self.info

    def planned(self, cells: list[Cell]) -> int:
        by_p, _, pre = plan_workload(cells, self.info, self.setup.variants)
        return len(by_p) - len(pre)

    # ---- the noise probe and the machine's readings --------------------------------------

    def _start_probe(self, log: Log, again: bool = False) -> bool:
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
            self._revive = self._start_probe(log, again=True)

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

    def _gemm_peak(self) -> float | None:
        """A larger GEMM's best GFLOP/s now: NumPy's BLAS in the probe's worker on the CPU; the
        device_matmul_peak hook of an available backend's worker on a GPU."""
        device, workers = self.setup.device, self.workers
        if device == "cpu":
            try:
                return answer(workers.healthy(PROBE).request({"op": "peak", "device": "cpu"}, 300)).get("gflops")
            except (WorkerFailed, ParticipantFailed):
                workers.drop(PROBE)
                return None
        for name in self.setup.participants:  # the first whose module has the hook (asked in its own worker)
            if not self.info.get(name, {}).get("available"):
                continue
            b = split(name)[0]
            try:
                g = answer(workers.healthy(name).request({"op": "peak", "device": device, "backend": b}, 300)).get("gflops")
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
            self._revive = self._start_probe(log)
        else:
            self._revive_probe(log)
        burst = self._noise_burst(log)
        return Burst(burst, self._gemm_peak())

    # ---- a workload ---------------------------------------------------------------------------

    def run_workload(self, wid: str, cells: list[Cell], log: Log, on_round: OnRound) -> dict[str, Any]:
        """Measure one workload; its journal record {"workload": {...}, "cells": [...]}. With
        variants, every backend takes part once per variant (BACKEND@VARIANT), each cell entry
        naming its variant."""
        s = self.setup
        self._revive_probe(log)
        by_p, variant_of, pre = plan_workload(cells, self.info, s.variants)
        timed = [n for n in by_p if n not in pre]
        parts: list[WorkerParticipant] = []

        def make(name: str, p: int) -> WorkerParticipant:
            parts.append(WorkerParticipant(self.workers, name, p, by_p[name], s.timeout, s.round_time))
            return parts[-1]

        prober = self.probe.participant  # (it may be lost on the way)
        probe_settled = getattr(prober, "settled_s", 0.0)
        before = cpuload.snapshot()
        wd = (measure_workload(timed, make, self.probe, s.sched, self.rng, log, on_round) if timed
              else WorkloadData({}, [], []))
        foreign = cpuload.foreign_cores(before, cpuload.snapshot())
        settled = sum(x.settled_s for x in parts) + getattr(prober, "settled_s", 0.0) - probe_settled
        results = {n: pre.get(n) or cell_result(by_p[n], wd.backends[n], s.sched) for n in by_p}
        c0 = cells[0]
        workload = {"id": wid, "mode": c0.mode, "preset": c0.preset, "batch": c0.batch,
                    "seq_len": c0.seq_len, "device": c0.device, "precision": c0.precision,
                    "backends": list(by_p), "rounds": wd.rounds, "remeasured_rounds": wd.remeasured,
                    "cut_short": wd.short, "settle_s": round(settled, 3),
                    "foreign_cores": None if foreign is None else round(foreign, 3),
                    "processes": s.sched.processes, "order": wd.order, "probe_s": wd.probe_s,
                    "probe_best_s": self.probe.best_s, "ratios": workload_ratios(results)}
        return {"workload": workload,
                "cells": [{"cell": by_p[n].to_dict(), "variant": variant_of[n], "workload": wid,
                           "result": results[n]} for n in by_p]}

    def close(self) -> None:
        self.workers.close()
