"""`lstmbench run`: the throughput matrix, measured by interleaving.

The unit of scheduling is a *workload*: one (mode, sizes, device, precision) with all its
backends. For each workload and each of `--processes` worker sets, every backend's worker
prepares the cell (first step timed apart, warm-up, a round sized to the matrix's round_time); then short timed
rounds follow in a seeded random order, each round a fresh permutation of the backends plus a
noise probe (a fixed float32 GEMM in a worker of its own with the same thread settings). So
every backend sees the same machine states, and each round carries the probe's time: a round
whose probe ran slower than CLEAN_FACTOR x the run's best is not clean. A cell with too few
clean rounds gets more interleaved rounds within a time budget, and is marked `noisy` if that
does not help. Cross-backend ratios come from rounds paired by index (harness.stats).

Each finished workload is appended to a journal beside the target file (harness.journal), so
an interrupted run keeps it and `run --resume` measures only what is missing; the results file
is assembled from the journal at the end. A backend that crashes, hangs, gives NaN or runs out
of memory gets that status for its cell; the others go on."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from impls import registry
from impls.config import flops_per_char

from . import cpuload, explain, stats
from .bench import PEAK_N, Cell
from .envs import UsageError, interpreter_for
from .matrix import Matrix
from .journal import claim, unclaim
from .workers import Launch, Worker, WorkerFailed, mem_available, memory_reserve, worker_cpus
from .progress import RoundLines, RunProgress
from ..results.schema import check_writable, default_path, new_document, write_results
from .stats import summarize
from .variants import Variant, participant as participant_name, sources as variant_sources
from .variants import split as split_participant

PROBE = "probe"  # the noise probe's participant name in `order`
PROBE_N = 256  # the probe GEMM's size: ~1 ms per multiply on a laptop core, many per round
ROUND_TIME = 0.03  # target seconds per timed round (20-50 ms)
# Settling between participants: a library's idle threads keep spinning after a round
# (OpenBLAS ~0.1 s, ONNX Runtime, OpenMP), and on 2 cores they slowed whoever ran next by a
# median 20-40% in the first smoke runs (docs/measurement.md). So the scheduler waits until
# the worker that just ran has gone quiet before the next round starts.
SETTLE_POLL = 0.001  # seconds between looks at the finished worker's threads
SETTLE_QUIET = 2  # consecutive looks with none of its threads running make it quiet
SETTLE_CAP = 0.3  # never wait longer than this for one worker


class ParticipantFailed(Exception):
    """A participant could not prepare or time a round; `kind` is a results status."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Participant(Protocol):
    """One thing timed in the rotation: a backend's prepared cell, or the noise probe."""
    name: str

    def prepare(self) -> dict[str, Any]: ...  # {"status": "ok"|"nan", "first_step_s", "inner", ...}

    def round(self) -> float: ...  # seconds per step of one timed round

    def release(self) -> dict[str, Any]: ...  # {"finite": bool, "peak_rss_bytes", ...}


def running_threads(pid: int) -> int | None:
    """How many threads of process `pid` are running or runnable (state R in Linux's
    /proc/PID/task/TID/stat); None where /proc is not there (then nobody waits). Thread state
    and not CPU time: a spinning thread's CPU time is only brought up to date at scheduler
    ticks, so a few milliseconds of it can look idle."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    n = 0
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat", "rb") as f:
                n += f.read().rsplit(b")", 1)[1].split()[0] == b"R"
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
    return n


def settle(pid: int | None, *, poll: float = SETTLE_POLL, quiet: int = SETTLE_QUIET,
           cap: float = SETTLE_CAP) -> float:
    """Wait until no thread of process `pid` has been running for `quiet` consecutive looks
    `poll` seconds apart, at most `cap` seconds. Returns the seconds waited."""
    t0 = time.perf_counter()
    if not pid or running_threads(pid) is None:
        return 0.0
    calm = 0
    while calm < quiet and time.perf_counter() - t0 < cap:
        n = running_threads(pid)
        calm = calm + 1 if not n else 0
        if calm < quiet:
            time.sleep(poll)
    return time.perf_counter() - t0


# ---- worker processes ---------------------------------------------------------------------

Launcher = Callable[[str], Launch]  # participant name -> how its worker starts


def launcher(overrides: dict[str, str], threads: int | None, extra_env: dict[str, str] | None = None,
             cpus: list[int] | None = None, variants: dict[str, Variant] | None = None,
             roots: dict[str, str] | None = None, device: str = "cpu") -> Launcher:
    """How the run starts each participant's worker: the probe in this interpreter; a backend
    in its environment's interpreter (harness.envs.interpreter_for, --python overrides); a
    backend in a variant (BACKEND@VARIANT, harness.variants) with the variant's interpreter,
    source tree (`roots`: variant -> folder), environment variables and threads. Workers with
    fewer threads than CPUs are pinned to the last CPUs (harness.pool.worker_cpus) on the CPU."""
    extra = tuple(sorted((extra_env or {}).items()))
    base_cpus = tuple(cpus) if cpus else None

    def launch(name: str) -> Launch:
        if name == PROBE:
            return Launch(sys.executable, None, threads, base_cpus, extra)
        backend, vname = split_participant(name)
        v = (variants or {}).get(vname or "")
        if v is None:
            return Launch(interpreter_for(backend, overrides), backend, threads, base_cpus, extra)
        t = v.threads or threads
        pin = (worker_cpus(t) if device == "cpu" else None) if v.threads else cpus
        return Launch(v.interpreter(backend, overrides), backend, t, tuple(pin) if pin else None,
                      tuple(sorted({**dict(extra), **dict(v.env)}.items())), (roots or {}).get(v.name))

    return launch


class Workers:
    """Live workers keyed by (participant, process index): process p of every workload uses set
    p, each workload preparing its cell anew in it; a failed worker is replaced on next use.
    `launch` says how each participant's worker starts (launcher).

    Workers stay alive from workload to workload (starting one costs up to a minute: imports,
    compiles), unless memory runs short: before a worker starts while less than `reserve`
    bytes are available, idle workers of other process sets go first, least recently used
    first (a full set of smoke's 13 backends holds about 5 GB; two variants of three sets
    would not fit this project's 24 GiB machine)."""

    def __init__(self, launch: Launcher, reserve: int | None = None) -> None:
        self.launch = launch
        self.live: dict[tuple[str, int], Worker] = {}
        self.used: dict[tuple[str, int], float] = {}  # when each was last asked for
        self.reserve = reserve if reserve is not None else memory_reserve()

    def get(self, name: str, p: int = 0) -> Worker:
        key = (name, p)
        if key not in self.live:
            self._make_room(p)
            self.live[key] = self.launch(name).start()
        self.used[key] = time.monotonic()
        return self.live[key]

    def _make_room(self, p: int) -> None:
        """Close idle workers of other process sets (never the probe) while memory is short."""
        idle = sorted((k for k in self.live if k[1] != p and k[0] != PROBE), key=lambda k: self.used.get(k, 0))
        while idle:
            avail = mem_available()
            if avail is None or avail >= self.reserve:
                return
            self.drop(*idle.pop(0))

    def threads(self, name: str) -> int | None:
        return self.launch(name).threads

    def pid(self, name: str, p: int = 0) -> int | None:
        w = self.live.get((name, p))
        return w.proc.pid if w is not None else None

    def healthy(self, name: str, p: int = 0) -> Worker:
        """get(), but a worker that died or was stopped since its last answer is replaced
        first (pool.Worker.usable): a participant starting in it (a workload's cell, the
        probe) must not inherit what befell it while idle."""
        w = self.live.get((name, p))
        if w is not None and not w.usable():
            self.drop(name, p)
        return self.get(name, p)

    def drop(self, name: str, p: int = 0) -> None:
        w = self.live.pop((name, p), None)
        self.used.pop((name, p), None)
        if w:
            w.kill()
            w.close()

    def close(self) -> None:
        for k in list(self.live):
            self.live.pop(k).close()
        self.used.clear()


def _answer(ans: dict[str, Any]) -> dict[str, Any]:
    if not ans.get("ok"):
        err = str(ans.get("error", ""))
        kind = ans.get("kind") or ("oom" if ("MemoryError" in err or "out of memory" in err.lower()
                                             or "OOM" in err) else "error")
        raise ParticipantFailed(kind, err)
    return ans


class WorkerParticipant:
    """A participant's cell in worker process p: a backend (in a variant), the probe (cell None,
    `prepare_op` "probe"), or a hand-written baseline (`prepare_op` "baseline" with its file
    and host backend in `extra`, harness.baselines). Every kind's rounds and release are the
    same requests; only the request that prepares it differs."""

    def __init__(self, workers: Workers, name: str, p: int, cell: Cell | None, timeout: float,
                 round_time: float = ROUND_TIME, prepare_op: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.workers, self.name, self.p, self.cell = workers, name, p, cell
        self.timeout, self.round_time = timeout, round_time
        self.round_timeout = timeout
        self.prepare_op = prepare_op or ("probe" if cell is None else "prepare")
        self.extra = extra or {}
        self.settled_s = 0.0  # seconds the scheduler waited for this worker to go quiet

    def _request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:  # a participant starts (prepare, probe) in a worker fit to take it: Workers.healthy
            get = self.workers.healthy if req["op"] in ("prepare", "probe", "baseline") else self.workers.get
            return _answer(get(self.name, self.p).request(req, timeout))
        except WorkerFailed as e:
            self.workers.drop(self.name, self.p)
            raise ParticipantFailed(e.kind, str(e)) from None
        except registry.BackendError as e:
            raise ParticipantFailed("unavailable", str(e)) from None

    def prepare(self) -> dict[str, Any]:
        req: dict[str, Any] = {"op": self.prepare_op, "round_time": self.round_time, **self.extra}
        if self.cell is None:
            req["n"] = PROBE_N
        else:
            req.update(cell=self.cell.to_dict(), threads=self.workers.threads(self.name))
        ans = self._request(req, self.timeout)
        self._settle()  # warm-up threads too
        # a round is ~round_time; allow for a collapse (1000x was seen) but not forever (the
        # probe, which has no first step, too: a hung probe must not outlast the timeout)
        self.round_timeout = min(self.timeout, max(30.0, 20 * float(ans.get("first_step_s") or 0.0)
                                                   + 1000 * self.round_time))
        return ans

    def round(self) -> float:
        s = float(self._request({"op": "round"}, self.round_timeout)["s"])
        self._settle()
        return s

    def _settle(self) -> None:
        """Wait until this participant's worker has gone quiet (settle), counting the wait."""
        self.settled_s += settle(self.workers.pid(self.name, self.p))

    def release(self) -> dict[str, Any]:
        return self._request({"op": "release"}, self.timeout)


# ---- the scheduler ------------------------------------------------------------------------

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
    on_round(p, participants, re-measuring) hears of every round (default: harness.progress
    RoundLines, a line at most every 30 s)."""
    on_round = on_round or RoundLines(log, sched.processes, sched.rounds)
    data = {b: BackendData() for b in backends}
    wd = WorkloadData(data, [], [])
    rnd = 0
    for p in range(sched.processes):
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
        last = p == sched.processes - 1
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
            rnd += 1
            r += 1
            on_round(p, len(names), extra_start is not None)
        for b, part in live.items():
            try:
                rel = part.release()
            except ParticipantFailed as e:
                data[b].status, data[b].error = e.kind, str(e)
                continue
            data[b].released = rel
            if not rel.get("finite", True):
                data[b].status, data[b].error = "nan", "non-finite loss during timing"
    wd.rounds = rnd
    _mark(data, probe, sched)
    return wd


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


# ---- results -------------------------------------------------------------------------------

def workload_id(cell: Cell) -> str:
    return f"{cell.preset}/{cell.mode}/B{cell.batch}xT{cell.seq_len}/{cell.device}/{cell.precision}"


def group_workloads(cells: list[Cell]) -> list[tuple[str, list[Cell]]]:
    """Cells grouped by workload (everything but the backend), in matrix order."""
    out: dict[str, list[Cell]] = {}
    for c in cells:
        out.setdefault(workload_id(c), []).append(c)
    return list(out.items())


def cell_result(cell: Cell, d: BackendData, sched: Schedule, seed: int = 0) -> dict[str, Any]:
    """The v2 result of one cell from its measured data."""
    res: dict[str, Any] = {"status": d.status, "error": d.error,
                           "first_step_s": d.first_step_s[0] if d.first_step_s else None,
                           "first_step_s_all": d.first_step_s,
                           "inner": d.inner[0] if d.inner else None, "kernel": d.kernel,
                           "samples": d.samples, "samples_s": [s["s"] for s in d.samples]}
    for k in ("peak_rss_bytes", "peak_device_bytes"):
        if k in d.released:
            res[k] = d.released[k]
    if d.released.get("kernel"):
        res["kernel"] = d.released["kernel"]
    if d.status != "ok":
        return res
    if not d.samples:
        res.update(status="error", error="no timed rounds")
        return res
    res.update(stats.cell_estimate(d.samples, min_clean=sched.min_clean, seed=seed))
    res["stats"] = summarize(res["samples_s"])
    res["collapse_rounds"] = sum(bool(s.get("collapse")) for s in d.samples)
    est = res["estimate_s"]
    cps = cell.chars_per_call() / est
    res["chars_per_s"] = cps
    res["gflops"] = flops_per_char(cell.model, cell.mode) * cps / 1e9
    if cell.mode == "generate":
        res["us_per_char"] = 1e6 * est / cell.seq_len
    return res


def workload_ratios(cells: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each ok backend's time ratio to the fastest (by estimate), by the same estimator over
    the rounds both ran (paired by (process, round)): clean rounds when both cells are clean,
    every round (and the ratio marked noisy) when either is noisy, as their estimates are."""
    ok = {b: r for b, r in cells.items() if r.get("status") == "ok" and r.get("estimate_s")}
    if not ok:
        return {}
    fastest = min(ok, key=lambda b: ok[b]["estimate_s"])

    def rounds(r: dict[str, Any], clean: bool) -> dict[tuple[int, int], float]:
        return {(s["process"], s["round"]): s["s"] for s in r["samples"] if s["clean"] or not clean}

    out: dict[str, dict[str, Any]] = {}
    for b, r in ok.items():
        noisy = bool(r["noisy"] or ok[fastest]["noisy"])
        if b == fastest:
            out[b] = {"to": fastest, "ratio": 1.0, "lo": 1.0, "hi": 1.0,
                      "pairs": len(r["samples"]), "noisy": noisy}
            continue
        clean = not noisy and not stats.uses_every_round(stats.ESTIMATOR)
        pr = stats.paired_ratio(rounds(r, clean), rounds(ok[fastest], clean), seed=seed)
        if pr is None:
            continue
        out[b] = {"to": fastest, "ratio": pr[0], "lo": pr[1], "hi": pr[2], "pairs": pr[3], "noisy": noisy}
    return out


def apply_peak(doc: dict[str, Any]) -> None:
    """Efficiency of every ok cell against the run's peak; above 100% is flagged."""
    peak = (doc.get("peak") or {}).get("gflops")
    for c in doc.get("cells", []):
        res = c["result"]
        if res.get("status") != "ok" or not res.get("gflops"):
            continue
        res["efficiency"] = res["gflops"] / peak if peak else None
        res["efficiency_flag"] = ("above 100%: measurement error"
                                  if res["efficiency"] is not None and res["efficiency"] > 1 else None)


# ---- the run -------------------------------------------------------------------------------

def _probe_info(workers: Workers, names: list[str], device: str,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Availability, versions and kernel paths, asked of each participant's own worker (a
    backend, or a backend in a variant: BACKEND@VARIANT), keyed by participant."""
    info: dict[str, Any] = {}
    for name in names:
        b = split_participant(name)[0]
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


def _start_probe(workers: Workers, probe: ProbeState, matrix: Matrix, log: Callable[[str], None],
                 again: bool = False) -> str | None:
    """Prepare the noise probe in its worker (a fresh one when the last died or hung), with
    the matrix's timeout like any participant: its BLAS's name; None when it cannot be
    prepared (the run goes on without it)."""
    part = WorkerParticipant(workers, PROBE, 0, None, matrix.timeout, matrix.round_time)
    try:
        pinfo = part.prepare()
    except ParticipantFailed as e:
        log(("      noise probe could not be restarted" if again else "noise probe unavailable")
            + f" ({e}); rounds cannot be checked against it")
        return None
    if again:
        log("      noise probe restarted in a fresh worker")
    probe.participant = part
    probe.flop = int(pinfo.get("flop", probe.flop))
    return str(pinfo.get("blas", "?"))


def _noise_burst(workers: Workers, probe: ProbeState, rounds: int = 15,
                 log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The probe alone for a few rounds: how fast and how steady the machine is right now."""
    got: list[float] = []
    if probe.participant is not None:
        for _ in range(rounds):
            try:
                got.append(probe.participant.round())
            except ParticipantFailed as e:
                log(f"noise probe failed ({e}); going on without it")
                probe.participant = None
                break
    for s in got:
        probe.see(s)
    return stats.probe_summary(got, probe.flop)


def _gemm_peak(workers: Workers, device: str, names: list[str], info: dict[str, Any]) -> float | None:
    """A larger GEMM's best GFLOP/s now: NumPy's BLAS in the probe's worker on the CPU; the
    device_matmul_peak hook of an available backend's worker on a GPU."""
    if device == "cpu":
        try:
            return _answer(workers.healthy(PROBE).request({"op": "peak", "device": "cpu"}, 300)).get("gflops")
        except (WorkerFailed, ParticipantFailed):
            workers.drop(PROBE)
            return None
    for name in names:  # the first whose module has the hook (asked in its own worker)
        if not info.get(name, {}).get("available"):
            continue
        b = split_participant(name)[0]
        try:
            g = _answer(workers.healthy(name).request({"op": "peak", "device": device, "backend": b}, 300)).get("gflops")
        except WorkerFailed:
            workers.drop(name)
            continue
        except ParticipantFailed:  # no device_matmul_peak hook in this backend's module
            continue
        if g:
            return float(g)
    return None


def _unsupported(cell: Cell) -> str | None:
    fn = getattr(registry, "unsupported", None)
    if fn is None:
        return None
    return fn(cell.backend, mode=cell.mode, device=cell.device, precision=cell.precision)


def journal_path_for(target: Path) -> Path:
    try:
        from . import journal as jmod
        fn = getattr(jmod, "journal_path", None) or getattr(jmod, "journal_path_for", None)
        if fn is not None:
            return Path(fn(target))
    except ImportError:
        pass
    return target.with_name(target.name + ".journal.jsonl")


def target_for_journal(path: Path) -> Path:
    s = str(path)
    return Path(s[: -len(".journal.jsonl")]) if s.endswith(".journal.jsonl") else path


class _NullJournal:
    """Stands in when harness.journal is not there: nothing kept until the end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_header(self, header: dict[str, Any]) -> None:
        pass

    def append(self, record: dict[str, Any]) -> None:
        pass


def _journal(path: Path) -> Any:
    try:
        from .journal import Journal
    except ImportError:
        return _NullJournal(path)
    return Journal(path)


def _finalize(journal_file: Path, target: Path, doc: dict[str, Any]) -> Path:
    try:
        from .journal import finalize
    except ImportError:
        return write_results(doc, target)
    return finalize(journal_file, target, doc)


def _interruptible() -> Any:
    try:
        from .signals import interruptible
        return interruptible()
    except ImportError:
        import contextlib
        return contextlib.nullcontext()


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
    journal_file = path if str(path).endswith(".journal.jsonl") else journal_path_for(path)
    if not journal_file.is_file():
        raise UsageError(f"--resume {path}: no journal at {journal_file}; give the journal "
                         "(*.journal.jsonl) an interrupted run left, or its target file")
    try:
        from .journal import Journal
    except ImportError:
        raise UsageError("--resume needs harness.journal, which this installation lacks") from None
    header, records = Journal.read(journal_file)
    if not header or header.get("schema") != "lstmbench.results":
        raise UsageError(f"--resume {path}: {journal_file} has no results header; it is not a run's journal")
    return journal_file, target_for_journal(journal_file), header, records


def resume_variants(header: dict[str, Any]) -> tuple[list[Variant], dict[str, str]]:
    """The variants of an interrupted run (re-read from their recorded text) and the commit each
    revision variant measured, so that the rest is measured on the same code."""
    from .variants import parse_variants
    recorded = header.get("variants") or {}
    vs = parse_variants([d["text"] for d in recorded.values()]) if recorded else []
    pinned = {n: d["source"]["commit"] for n, d in recorded.items()
              if (d.get("source") or {}).get("kind") == "rev" and d["source"].get("commit")}
    return vs, pinned


def run_matrix(matrix: Matrix, backends: list[str], *, device: str = "cpu", precision: str = "float32",
               threads: int | None = None, overrides: dict[str, str] | None = None,
               out_dir: Path = Path("results"), command: list[str] | None = None,
               processes: int = 1, omp_wait_policy: str | None = None, seed: int | None = None,
               resume: Path | None = None, variants: list[Variant] | None = None,
               report: bool = True, log: Callable[[str], None] = print) -> Path:
    """Measure every workload of `matrix` on `backends` (each backend once per variant, where
    `variants` are given: harness.variants); returns the results file's path. `report`: print
    the summary table and the noise report at the end (`lstmbench ab` prints its own)."""
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
    with variant_sources(variants, pinned) as src:
        return _measure(matrix, backends, workloads, opts, variants, src, done, doc,
                        (journal_file, target), out_dir, command, report, log)


def _measure(matrix: Matrix, backends: list[str], workloads: list[tuple[str, list[Cell]]],
             opts: RunOptions, variants: list[Variant], src: dict[str, Any],
             done: dict[str, dict[str, Any]], doc: dict[str, Any], files: tuple[Path, Path],
             out_dir: Path, command: list[str] | None, report: bool,
             log: Callable[[str], None]) -> Path:
    """run_matrix's measurement, with every variant's source tree in place (`src`)."""
    device, precision, threads, processes = opts.device, opts.precision, opts.threads, opts.processes
    omp_wait_policy = opts.omp_wait_policy
    extra_env = {"OMP_WAIT_POLICY": omp_wait_policy.upper()} if omp_wait_policy else {}
    cpus = worker_cpus(threads) if device == "cpu" else None
    vnames = [v.name for v in variants]
    parts = [participant_name(b, v) for b in backends for v in (vnames or [None])]
    workers = Workers(launcher(opts.overrides, threads, extra_env, cpus, {v.name: v for v in variants},
                               {n: str(s.root) for n, s in src.items() if s.kind != "this"}, device))
    sched = Schedule(rounds=matrix.rounds, processes=processes, min_clean=matrix.min_clean,
                     extra_rounds=matrix.extra_rounds, extra_time=matrix.extra_time,
                     max_time=matrix.workload_time)
    rng = np.random.default_rng(opts.seed)
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
    probe = ProbeState(None)
    finished: list[dict[str, Any]] = list(done.values())
    interrupted: BaseException | None = None
    journal: Any = None
    progress: RunProgress | None = None
    claimed: Path | None = None  # a journal claim() made whose header is not written yet
    blas = "?"
    journal_file, target = files  # (journal, results file) of a resumed run
    try:
        with _interruptible():
            if not doc:  # the results file's name, ours alone, before anything is measured
                doc = new_document(command=command or [], matrix=matrix.to_dict(), device=device,
                                   precision=precision, threads=threads, omp_wait_policy=omp_wait_policy,
                                   processes=processes, seed=opts.seed, backends={}, cpus=cpus,
                                   python=sys.version.split()[0], interrupted=False,
                                   estimator=stats.estimator_info())
                target, journal_file = claim(default_path(out_dir, doc))
                claimed = journal_file
            log("backends:")
            info = _probe_info(workers, parts, device, log)
            journal = _journal(journal_file)
            if claimed is not None:
                doc["backends"] = info
                doc["variants"] = variant_records(variants, src, info) if variants else None
                journal.write_header({**doc, "target": str(target)})
                claimed = None
            else:
                doc["backends"] = {**info, **doc.get("backends", {})}
                doc["resumed"] = True
            blas = _start_probe(workers, probe, matrix, log) or "?"
            revive = probe.participant is not None  # a probe lost later comes back, in a fresh worker
            start = _noise_burst(workers, probe, log=log)
            big = _gemm_peak(workers, device, parts, info)
            log(_noise_line("machine at start", start, big, blas, device))
            doc.setdefault("noise", {})["start"] = start
            doc["_big_peak"] = max([v for v in (big, doc.get("_big_peak")) if v] or [0]) or None
            todo = [(wid, cs) for wid, cs in workloads if wid not in done]
            progress = RunProgress([(wid, _timed_count(cs, info, vnames) + 1) for wid, cs in todo],
                                   processes, sched.rounds, log, started=t_start)
            log = progress.log  # above the progress bar, where there is one (harness.progress)
            for i, (wid, wcells) in enumerate(todo):
                if probe.participant is None and revive:  # failed or hung in an earlier workload
                    revive = _start_probe(workers, probe, matrix, log, again=True) is not None
                progress.start(i)
                rec = _run_workload(wid, wcells, info, workers, probe, sched, rng, matrix, log, vnames,
                                    progress.round)
                journal.append(rec)
                finished.append(rec)
                progress.finish()
                for c in rec["cells"]:
                    log(f"      {entry_name(c):15} " + _describe(c["result"]))
                if any(c["result"].get("noisy") for c in rec["cells"]):  # the rule, where NOISY first shows
                    progress.once("noisy", "      " + explain.noisy_rule(sched.min_clean))
                busy = rec["workload"].get("foreign_cores")
                if busy is not None and busy >= stats.FOREIGN_LIMIT:
                    log(f"      other processes kept {busy:.2f} cores busy during this workload: "
                        "its figures are not judged by compare")
            if probe.participant is None and revive:
                _start_probe(workers, probe, matrix, log, again=True)
            end = _noise_burst(workers, probe, log=log)
            big_end = _gemm_peak(workers, device, parts, info)
            doc["_big_peak"] = max([v for v in (doc["_big_peak"], big_end) if v] or [0]) or None
            doc["noise"]["end"] = end
    except KeyboardInterrupt as e:
        interrupted = e
    finally:
        if progress is not None:
            progress.close()
        workers.close()
        if claimed is not None:  # ended before its header: the name is free again
            unclaim(claimed)
    if interrupted is not None:
        where = getattr(journal, "path", None) or journal_file
        if journal is None or not finished:
            log("\ninterrupted before any workload finished")
            raise interrupted
        if isinstance(journal, _NullJournal):  # no harness.journal: keep them the old way
            doc.pop("target", None)
            doc["interrupted"] = True
            _assemble(doc, finished, probe, blas, t_start, device)
            path = write_results(doc, target)
            log(f"\ninterrupted: {len(finished)} finished workloads kept in {path}")
            raise interrupted
        log(f"\ninterrupted: {len(finished)} finished workloads kept in {where}; "
            f"continue with: lstmbench run --resume {where}")
        raise interrupted
    doc.pop("target", None)
    _assemble(doc, finished, probe, blas, t_start, device)
    if report:
        log("")
        log(summary_table(doc))
        log("")
        log(noise_report(doc))
    path = _finalize(journal_file, target, doc)
    log(f"\nresults: {path}")
    return path


def entry_name(c: dict[str, Any]) -> str:
    """A results file's cell entry as a participant name: BACKEND, or BACKEND@VARIANT."""
    return participant_name(c["cell"]["backend"], c.get("variant"))


def variant_records(variants: list[Variant], src: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """What the results file keeps of each variant: its definition, where its code came from
    (folder, commit), and per backend the interpreter and framework version its workers had."""
    out: dict[str, Any] = {}
    for v in variants:
        backends = {}
        for name, i in info.items():
            b, vn = split_participant(name)
            if vn == v.name:
                backends[b] = {k: i.get(k) for k in ("available", "version", "kernel", "executable",
                                                     "python", "numpy", "reason") if i.get(k) is not None}
        out[v.name] = {**v.definition(), "source": src[v.name].record(), "backends": backends}
    return out


def _timed_count(wcells: list[Cell], info: dict[str, Any], variants: list[str] | None = None) -> int:
    """The participants of a workload that will be timed (not unsupported, available): the plan
    of harness.progress; _run_workload records the others without timing them."""
    return sum(1 for c in wcells for v in (variants or [None]) if not _unsupported(c)
               and info.get(participant_name(c.backend, v), {}).get("available"))


def _run_workload(wid: str, wcells: list[Cell], info: dict[str, Any], workers: Workers,
                  probe: ProbeState, sched: Schedule, rng: np.random.Generator, matrix: Matrix,
                  log: Callable[[str], None], variants: list[str] | None = None,
                  on_round: Callable[[int, int, bool], None] | None = None) -> dict[str, Any]:
    """Measure one workload; its journal record {"workload": {...}, "cells": [...]}. With
    `variants`, every backend takes part once per variant (BACKEND@VARIANT), each cell entry
    naming its variant."""
    by_p: dict[str, Cell] = {}  # participant -> its cell
    variant_of: dict[str, str | None] = {}
    for c in wcells:
        for v in variants or [None]:
            name = participant_name(c.backend, v)
            by_p[name], variant_of[name] = c, v
    pre: dict[str, dict[str, Any]] = {}
    for name, c in by_p.items():
        why = _unsupported(c)
        if why:
            pre[name] = {"status": "unsupported", "error": why}
        elif not info.get(name, {}).get("available"):
            pre[name] = {"status": "unavailable", "error": info.get(name, {}).get("reason")}
    timed = [n for n in by_p if n not in pre]

    parts: list[WorkerParticipant] = []

    def make(name: str, p: int) -> Participant:
        parts.append(WorkerParticipant(workers, name, p, by_p[name], matrix.timeout, matrix.round_time))
        return parts[-1]

    prober = probe.participant  # (it may be lost on the way)
    probe_settled = getattr(prober, "settled_s", 0.0)
    before = cpuload.snapshot()
    wd = measure_workload(timed, make, probe, sched, rng, log, on_round) if timed else WorkloadData({}, [], [])
    foreign = cpuload.foreign_cores(before, cpuload.snapshot())
    settled = sum(x.settled_s for x in parts) + getattr(prober, "settled_s", 0.0) - probe_settled
    results = {n: pre.get(n) or cell_result(by_p[n], wd.backends[n], sched) for n in by_p}
    c0 = wcells[0]
    workload = {"id": wid, "mode": c0.mode, "preset": c0.preset, "batch": c0.batch,
                "seq_len": c0.seq_len, "device": c0.device, "precision": c0.precision,
                "backends": list(by_p), "rounds": wd.rounds, "remeasured_rounds": wd.remeasured,
                "cut_short": wd.short, "settle_s": round(settled, 3),
                "foreign_cores": None if foreign is None else round(foreign, 3),
                "processes": sched.processes, "order": wd.order, "probe_s": wd.probe_s,
                "probe_best_s": probe.best_s, "ratios": workload_ratios(results)}
    return {"workload": workload,
            "cells": [{"cell": by_p[n].to_dict(), "variant": variant_of[n], "workload": wid,
                       "result": results[n]} for n in by_p]}


def _assemble(doc: dict[str, Any], records: list[dict[str, Any]], probe: ProbeState, blas: str,
              t_start: float, device: str) -> None:
    """The final document (schema v3) from the journal's records and the run's probe figures."""
    doc["workloads"] = [r["workload"] for r in records]
    doc["cells"] = [c for r in records for c in r["cells"]]
    rounds_s = [s for w in doc["workloads"] for s in w.get("probe_s", [])]
    probes = [s for s in rounds_s if s]
    flop = probe.flop
    seen = probes + ([probe.best_s] if probe.best_s else [])  # with the start/end bursts
    best_s = min(seen) if seen else None
    doc["probe"] = {"kind": "gemm", "n": PROBE_N, "blas": blas, "flop": flop, "rounds_s": rounds_s,
                    "best_gflops": flop / best_s / 1e9 if best_s else None,
                    "median_gflops": flop / float(np.median(probes)) / 1e9 if probes else None}
    big = doc.pop("_big_peak", None)
    bursts = [(doc.get("noise") or {}).get(k) or {} for k in ("start", "end")]
    cands = [v for v in (doc["probe"]["best_gflops"], *(b.get("gflops") for b in bursts)) if v]
    probe_best = max(cands) if cands else None  # the bursts' rounds are in best_s: the same figure
    peak = explain.peak_of(device, probe_best, big)
    if device == "cpu":
        doc["peak"] = {"gflops": peak, "via": f"numpy {blas}", "dtype": "float32", "probe_gflops": probe_best,
                       "probe_n": PROBE_N, "gemm_gflops": big, "gemm_n": PEAK_N, "threads": doc.get("threads")}
    else:
        doc["peak"] = {"gflops": peak, "via": "device_matmul_peak hook", "dtype": "float32"}
    collapse = sum(stats.collapses(probes)) + sum(c["result"].get("collapse_rounds", 0) for c in doc["cells"])
    frac, verdict = stats.noise_verdict(probes, best_s, collapse)
    probe_verdict = verdict  # before the neighbour count has its say (harness.explain.verdict_words)
    foreign = [w["foreign_cores"] for w in doc["workloads"] if w.get("foreign_cores") is not None]
    busiest = max(foreign) if foreign else None
    if busiest is not None and busiest >= stats.FOREIGN_LIMIT:  # a neighbour inside the machine
        verdict = "contended" if busiest >= 2 * stats.FOREIGN_LIMIT else max(verdict, "noisy", key=_VERDICTS.index)
    spread = stats.round_spread([c["result"].get("stats") or {} for c in doc["cells"]
                                 if c["result"].get("status") == "ok"])
    doc.setdefault("noise", {}).update(contended_fraction=frac, collapse_rounds=collapse, verdict=verdict,
                                       probe_verdict=probe_verdict, foreign_cores_max=busiest,
                                       round_spread=spread)
    doc["noise"].setdefault("start", None)
    doc["noise"].setdefault("end", None)
    doc["estimator"] = stats.estimator_info()
    doc["wall_s"] = round(time.monotonic() - t_start + float(doc.get("wall_s") or 0), 1)
    doc["schema_version"] = 3
    apply_peak(doc)


_VERDICTS = ["unknown", "quiet", "noisy", "contended"]


def _noise_line(what: str, s: dict[str, Any] | None, big: float | None, blas: str,
                device: str = "cpu") -> str:
    return explain.start_words(what, s, big, blas, PROBE_N, PEAK_N, device)


def noise_report(doc: dict[str, Any]) -> str:
    """How noisy the machine was: probe GFLOP/s at start and end, contended share, verdict."""
    n = doc.get("noise") or {}
    p = doc.get("probe") or {}
    lines = [f"machine noise: {explain.verdict_words(n)}"]
    for k in ("start", "end"):
        s = n.get(k) or {}
        if s.get("gflops"):
            lines.append(f"  {k:5}: probe {s['gflops']:.1f} GFLOP/s best, cv {100 * s['cv']:.0f}%")
    if not p.get("median_gflops"):  # no workload timed a round (every cell failed or was skipped)
        lines.append("  during: no probe round ran during the workloads")
    elif p.get("best_gflops"):
        lines.append(f"  during: probe best {p['best_gflops']:.1f}, median {p['median_gflops']:.1f} GFLOP/s "
                     f"over {len([x for x in p['rounds_s'] if x])} rounds; "
                     f"{100 * n.get('contended_fraction', 0):.0f}% of rounds contended "
                     f"(probe > {stats.CLEAN_FACTOR}x best), {n.get('collapse_rounds', 0)} collapse rounds")
    rs = n.get("round_spread") or {}
    if rs.get("median"):
        lines.append(f"  cells' own rounds: the median cell's median round took {rs['median']:.2f}x its fastest "
                     f"(90% of cells within {rs['q90']:.2f}x); the probe feels such swings only in part")
    if n.get("foreign_cores_max") is not None:
        lines.append(f"  other processes on this machine: up to {n['foreign_cores_max']:.2f} cores busy "
                     f"during a workload" + (f" (at or above {stats.FOREIGN_LIMIT}: compare will not "
                                             "judge those workloads)" if n["foreign_cores_max"] >= stats.FOREIGN_LIMIT else ""))
    pk = doc.get("peak") or {}
    if pk.get("gflops"):
        lines.append(f"  efficiency denominator: {explain.peak_words(pk)}")
    flagged = [c for c in doc.get("cells", []) if c["result"].get("efficiency_flag")]
    for c in flagged:
        lines.append(f"  FLAGGED {c['cell']['backend']} {c['workload']}: efficiency "
                     f"{100 * c['result']['efficiency']:.0f}% ({c['result']['efficiency_flag']})")
    return "\n".join(lines)


def _describe(res: dict[str, Any]) -> str:
    if res.get("status") != "ok":
        return f"{res.get('status')}: {res.get('error')}"
    lo, hi = res["ci_s"]
    extra = f", {res['us_per_char']:.1f} us/char" if "us_per_char" in res else ""
    noisy = "  NOISY" if res.get("noisy") else ""
    return (f"{res['chars_per_s']:,.0f} chars/s ({res['estimate_s'] * 1e3:.3f} ms "
            f"[{lo * 1e3:.3f}, {hi * 1e3:.3f}], {res['clean_rounds']} of {len(res['samples'])} rounds clean)"
            f"{extra}, first step {res['first_step_s']:.2f} s{noisy}")


def summary_table(doc: dict[str, Any]) -> str:
    """Per workload: each backend's time ratio to the fastest with its interval (paired
    rounds), then characters per second; noisy figures are marked, never shown as clean."""
    n_clean = explain.min_clean_of(doc)
    lines = [f"time ratio to the fastest backend per workload (95% interval, paired rounds); "
             f"chars/s from the {doc.get('estimator', {}).get('name', '?')} estimator; * = noisy"
             + (f" (fewer than {n_clean} clean rounds: the NOISY rule above)" if n_clean else "")]
    by_w: dict[str, list[dict[str, Any]]] = {}
    for c in doc["cells"]:
        by_w.setdefault(c.get("workload") or workload_id(Cell.from_dict(c["cell"])), []).append(c)
    ratios = {w["id"]: w.get("ratios", {}) for w in doc.get("workloads", [])}
    for wid, cs in by_w.items():
        lines.append(wid)
        rs = ratios.get(wid, {})
        order = sorted(cs, key=lambda c: (rs.get(entry_name(c), {}).get("ratio", float("inf"))))
        for c in order:
            b, res = entry_name(c), c["result"]
            if res.get("status") != "ok":
                lines.append(f"  {b:15} {res.get('status')}: {str(res.get('error'))[:70]}")
                continue
            r = rs.get(b)
            mark = "*" if res.get("noisy") or (r and r.get("noisy")) else " "
            rtxt = f"{r['ratio']:7.2f}x [{r['lo']:.2f}, {r['hi']:.2f}]" if r else f"{'':7}"
            eff = res.get("efficiency")
            efft = f"{100 * eff:5.1f}%" if eff is not None else ""
            if res.get("efficiency_flag"):
                efft += " (>100%: measurement error)"
            lines.append(f"  {b:15} {rtxt:26}{mark} {res['chars_per_s']:>14,.0f} chars/s"
                         f"{' NOISY' if res.get('noisy') else ''}  eff {efft}")
    return "\n".join(lines)
