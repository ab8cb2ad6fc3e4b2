"""The interleaved scheduler: one workload's participants timed in rounds.

For each of `processes` worker sets, every participant is prepared (first step timed apart,
warm-up, a round sized to the matrix's round_time); then short timed rounds follow in a
seeded random order, each round a fresh permutation of the participants plus the noise probe
(harness.engine.participants). So every participant sees the same machine states, and each
round carries the probe's time: a round whose probe ran slower than CLEAN_FACTOR x the run's
best is not clean, nor is a participant's own collapsed round. A cell with too few clean
rounds gets more interleaved rounds within a time budget (and is marked noisy by
harness.engine.stats if that does not help). The participants are anything that follows the
Participant protocol: the worker processes of harness.engine.workers in a run, fakes in the
tests."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import stats
from .participants import PROBE, PROBE_N, Participant, ParticipantFailed
from .progress import RoundLines


@dataclass
class Schedule:
    rounds: int = 30  # interleaved rounds per process set
    processes: int = 1  # fresh worker sets per workload
    min_clean: int = stats.MIN_CLEAN  # clean rounds a cell needs (over all processes)
    extra_rounds: int = 60  # at most this many more rounds when a cell lacks clean ones
    extra_time: float = 20.0  # ... and at most this many seconds
    clean_factor: float = stats.CLEAN_FACTOR
    max_time: float | None = None  # seconds of base rounds per workload (shared by the process
    # sets); under heavy contention a round can take 100x longer, and the run must still end
    min_rounds: int = 3  # base rounds per process set even when max_time has run out


@dataclass
class BackendData:
    status: str = "ok"
    error: str | None = None
    first_step_s: list[float] = field(default_factory=list)
    inner: list[int] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    released: dict[str, Any] = field(default_factory=dict)
    kernel: str | None = None


@dataclass
class WorkloadData:
    backends: dict[str, BackendData]
    order: list[list[Any]]  # [round, slot, participant]
    probe_s: list[float | None]  # one per round, in order
    rounds: int = 0
    remeasured: int = 0  # rounds added because cells lacked clean rounds
    short: bool = False  # the time budget cut the base rounds short


class ProbeState:
    """The run's noise probe: its best time so far (the clean threshold's base)."""

    def __init__(self, participant: Participant | None, flop: int = 2 * PROBE_N ** 3) -> None:
        self.participant, self.flop = participant, flop
        self.best_s: float | None = None
        self.rounds_s: list[float | None] = []

    def see(self, s: float | None) -> None:
        if s is not None and s > 0 and (self.best_s is None or s < self.best_s):
            self.best_s = s


def measure_workload(backends: list[str], make: Callable[[str, int], Participant],
                     probe: ProbeState, sched: Schedule, rng: np.random.Generator,
                     log: Callable[[str], None] = lambda s: None,
                     on_round: Callable[[int, int, bool], None] | None = None) -> WorkloadData:
    """Time `backends` interleaved: for each process set p, prepare each backend's participant
    (make(backend, p)), then rounds in a fresh random permutation of backends + probe; after
    the last set's rounds, add rounds while a cell lacks `min_clean` clean rounds and the
    budget lasts. Clean: the round's probe within clean_factor x the best probe so far.
    on_round(p, participants, re-measuring) hears of every round (default: harness.engine.progress
    RoundLines, a line at most every 30 s)."""
    on_round = on_round or RoundLines(log, sched.processes, sched.rounds)
    data = {b: BackendData() for b in backends}
    wd = WorkloadData(data, [], [])
    for p in range(sched.processes):
        live = _prepare_set(backends, make, data, p)
        _rounds(live, p, p == sched.processes - 1, wd, probe, sched, rng, log, on_round)
        _release(live, data)
    _mark(data, probe, sched)
    return wd


def _prepare_set(backends: list[str], make: Callable[[str, int], Participant], data: dict[str, BackendData],
                 p: int) -> dict[str, Participant]:
    """Process set p: every backend still ok prepared in its worker (first step timed apart)."""
    live: dict[str, Participant] = {}
    for b in backends:
        if data[b].status != "ok":
            continue  # failed in an earlier process set: do not retry it
        part = make(b, p)
        try:
            info = part.prepare()
        except ParticipantFailed as e:
            data[b].status, data[b].error = e.kind, str(e)
            continue
        if info.get("first_step_s") is not None:
            data[b].first_step_s.append(float(info["first_step_s"]))
        data[b].kernel = info.get("kernel") or data[b].kernel
        if info.get("status", "ok") != "ok":
            data[b].status, data[b].error = info["status"], info.get("error")
            continue
        data[b].inner.append(int(info.get("inner", 1)))
        live[b] = part
    return live


def _rounds(live: dict[str, Participant], p: int, last: bool, wd: WorkloadData, probe: ProbeState,
            sched: Schedule, rng: np.random.Generator, log: Callable[[str], None],
            on_round: Callable[[int, int, bool], None]) -> None:
    """Process set p's rounds: the planned ones within the time budget, then (the last set)
    re-measuring while a cell lacks clean rounds and the re-measuring budget lasts."""
    data = wd.backends
    r, extra_start = 0, None
    t_block = time.monotonic()
    while live:
        if (sched.max_time is not None and r < sched.rounds and r >= sched.min_rounds
                and time.monotonic() - t_block > sched.max_time / sched.processes):
            log(f"      time budget spent: process set {p + 1} of {sched.processes} stops after "
                f"{r} of {sched.rounds} planned rounds")
            wd.short = True
            r = sched.rounds  # on to re-measurement (if any) or the next process set
        if r >= sched.rounds:
            if not last or not _needs_more(data, live, probe, sched):
                break
            if extra_start is None:
                extra_start = (time.monotonic(), r)
                log(f"      re-measuring: cells short of {sched.min_clean} clean rounds (clean so far: "
                    f"{_clean_counts(data, live, probe, sched)}); at most {sched.extra_rounds} more "
                    f"rounds or {sched.extra_time:g} s")
            if (time.monotonic() - extra_start[0] > sched.extra_time
                    or r - extra_start[1] >= sched.extra_rounds):
                break
            wd.remeasured += 1
        n = _one_round(live, p, wd, probe, rng, log)
        r += 1
        on_round(p, n, extra_start is not None)


def _one_round(live: dict[str, Participant], p: int, wd: WorkloadData, probe: ProbeState,
               rng: np.random.Generator, log: Callable[[str], None]) -> int:
    """One round: every live participant and the probe in a fresh random order, each timed
    once; a participant that fails leaves the rotation. The participants that took part."""
    data, rnd = wd.backends, wd.rounds
    names = list(live) + ([PROBE] if probe.participant is not None else [])
    perm = [names[i] for i in rng.permutation(len(names))]
    got: dict[str, tuple[float, int]] = {}
    for slot, name in enumerate(perm):
        wd.order.append([rnd, slot, name])
        if name == PROBE:
            try:
                got[name] = (probe.participant.round(), slot)  # type: ignore[union-attr]
            except ParticipantFailed as e:
                log(f"      noise probe failed ({e}); going on without it")
                probe.participant = None
            continue
        try:
            got[name] = (live[name].round(), slot)
        except ParticipantFailed as e:
            data[name].status, data[name].error = e.kind, str(e)
            live.pop(name)
    probe_s = got.pop(PROBE, (None, 0))[0]
    probe.see(probe_s)
    probe.rounds_s.append(probe_s)
    wd.probe_s.append(probe_s)
    for name, (s, slot) in got.items():
        data[name].samples.append({"s": s, "process": p, "round": rnd, "slot": slot,
                                   "probe_s": probe_s, "clean": True})
    wd.rounds = rnd + 1
    return len(names)


def _release(live: dict[str, Participant], data: dict[str, BackendData]) -> None:
    """The set's participants released; a non-finite loss during timing makes the cell nan."""
    for b, part in live.items():
        try:
            rel = part.release()
        except ParticipantFailed as e:
            data[b].status, data[b].error = e.kind, str(e)
            continue
        data[b].released = rel
        if not rel.get("finite", True):
            data[b].status, data[b].error = "nan", "non-finite loss during timing"


def _clean_counts(data: dict[str, BackendData], live: dict[str, Any], probe: ProbeState,
                  sched: Schedule) -> str:
    return ", ".join(f"{b} {sum(stats.mark_clean(s['probe_s'], probe.best_s, sched.clean_factor) for s in data[b].samples)}"
                     for b in live)


def _needs_more(data: dict[str, BackendData], live: dict[str, Any], probe: ProbeState,
                sched: Schedule) -> bool:
    return any(sum(stats.mark_clean(s["probe_s"], probe.best_s, sched.clean_factor)
                   for s in data[b].samples) < sched.min_clean for b in live)


def _mark(data: dict[str, BackendData], probe: ProbeState, sched: Schedule) -> None:
    """Final clean flags: probe within clean_factor x the best so far, and the backend's own
    round not a collapse (> COLLAPSE_FACTOR x its median)."""
    for d in data.values():
        col = stats.collapses([s["s"] for s in d.samples])
        for s, c in zip(d.samples, col):
            s["clean"] = stats.mark_clean(s["probe_s"], probe.best_s, sched.clean_factor) and not c
            if c:
                s["collapse"] = True
