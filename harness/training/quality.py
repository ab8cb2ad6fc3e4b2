"""The quality matrix (`lstmbench run --matrix quality`): train every backend the same way
and record how fast each reaches a target validation loss, and how good it ends.

Per backend, in a fresh process of its own environment (`lstmbench train` in the backend's
interpreter, so the same code path as the `train` command): the same seeded initial
parameters, the same batches in the same order, the preset's optimiser as the framework ships
it, a fixed step budget, the validation loss every `eval_every` steps on the same validation
characters.

Recorded per backend: steps to the target (the first evaluation at or under it: exact and
free of timing noise, resolution `eval_every`), seconds to the target, the loss against
steps and against seconds, the final validation loss, a sample, the native optimiser's
documented deviation from docs/SPEC.md §4 where it has one, and where and beside what it ran
(`lane`, `start_s`/`end_s`, `concurrent_with`).

Lanes: `--jobs N` lanes (default cores // threads; the quality matrices default to one
thread per backend, so one lane per core) pull backends from one queue, slowest expected
first, each training its backend in a child process of its own process group. Ctrl-C or
SIGTERM stops every lane's child (SIGTERM to the group, SIGKILL after a grace period).

Noise: seconds count only training steps (tokens copied in, the step, the loss fetched to the
host, which waits for the device); evaluation, start-up and compilation outside the first
step are not counted. With two lanes every backend's seconds were measured while another
backend trained on the other core (memory bandwidth and caches are shared, so they are
slower than on an idle machine); `estimate_s_to_target` = steps to target x the median step
time, which a few slow steps do not move. Steps to target are unaffected by any of it.

Durability: the run goes through a session (harness.session.session): each finished backend is
appended (flushed and fsynced) to a journal beside the target file, so a finished backend
survives any interruption, even SIGKILL of this process; `run --resume JOURNAL` trains only the
missing ones. The results are JSON
(`schema` lstmbench.quality), written atomically from the journal at the end and never over
an existing file; the journal is removed once they are."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from impls import registry
from impls.config import get_preset

from ..engine.lanes import Children, Slot, Stopped, run_lanes
from ..engine.workers import killpg
from ..envs.host import default_jobs, git_info, lane_cpus, machine_info
from ..envs.interpreters import child_vars, harness_command, interpreter_for, worker_env
from ..session.session import Resume, RunSession, running
from ..errors import UsageError
from ..results.schema import QUALITY_SCHEMA as SCHEMA, QUALITY_VERSIONS
from ..results.store import check_writable, default_path
from .corpus import prepare
from .loop import _CHILD

SCHEMA_VERSION = QUALITY_VERSIONS[-1]
REFERENCE = registry.REFERENCE  # the calibration reference: NumPy only, float32, docs/SPEC.md §4's formulas
# The quality matrices' threads per backend: the lanes then fill the cores one each, and a
# framework's thread pool does not spin against a neighbour's (docs/quality.md)
QUALITY_THREADS = 1


@dataclass(frozen=True)
class QualityConfig:
    name: str  # matrix name, in the results file's name
    preset: str  # sizes and optimiser (impls.config)
    corpus: str  # harness.training.corpus corpus
    steps: int  # step budget per backend
    eval_every: int  # validation every K steps (the resolution of steps-to-target)
    target_loss: float  # validation loss (nats/char) to reach
    seed: int = 0  # initial parameters, dropout masks, the sample's uniforms
    val_chars: int = 50_000  # validation characters per evaluation
    timeout_s: float = 1500.0  # per backend
    optimizer_from: str | None = None  # another preset whose optimiser and clip replace the preset's


# Calibrated on the project's 2-core machine (docs/quality.md): numpy-f32 passes 1.9 nats
# at step 1000 of 1500 (1.93 at step 900, 1.89 at 1000; 1.81 at 1500); tensorflow and
# tensorflow-xla (Keras RMSprop, eps inside the root) only at step 1300, so a budget under 1300
# would hide that finding. The budget, 1500 steps, fits the 30 minutes of the whole run in two lanes:
# median step times at 1 thread (30-step probes, 2 December 2026, while two other jobs shared
# the cores, load 3.5-4.5) sum to 1.84 s over the 11 trainable backends (chainer 0.37,
# keras-torch 0.32, jax 0.16, keras-jax 0.15, flax, torch-cell, numpy-f32 0.14, tensorflow
# 0.13, tensorflow-xla 0.12, torch-compile 0.10 + 15 s compiling, torch 0.09). x 1500 steps
# x 1.07 (16 evaluations of 20 windows) + ~150 s of start-ups = 3100 s of lane time; in two
# lanes, slowest first, the longer lane ends at ~1620 s = 27 minutes at that contention. On a
# quiet machine (numpy-f32 runs at 0.057 s a step, 2.4x faster than in the probe) about
# 13-15 minutes. Chainer, the longest single backend, needs ~590 s at the probe's speed, well
# inside the per-backend timeout (1500 s).
MATRICES: dict[str, QualityConfig] = {
    "quality": QualityConfig("quality", "char-rnn", "shakespeare", steps=1500, eval_every=100,
                             target_loss=1.9),
    # char-rnn sizes with the tutorial's Adam (lr 1e-3, norm clip 5): where Keras and Chainer
    # place Adam's epsilon differently from docs/SPEC.md §4. Target from the 2 December run
    # (results/amd-epyc-2c/quality/20261202T154212Z-quality-adam-cpu.json, recorded with 2.1,
    # which no backend reached): numpy-f32, torch, jax, chainer and tensorflow were at
    # 2.280-2.286 at step 800 and 2.312-2.317 at 700, so 2.3 is passed at step 800; 2.21 at 1000
    "quality-adam": QualityConfig("quality-adam", "char-rnn", "shakespeare", steps=1000,
                                  eval_every=100, target_loss=2.3, optimizer_from="tutorial"),
    # seconds, for a smoke test: the tiny preset on the interpreter's own library source
    "quality-tiny": QualityConfig("quality-tiny", "tiny", "python-stdlib", steps=30, eval_every=10,
                                  target_loss=4.2, val_chars=2000, timeout_s=300.0),
}


def steps_to_target(evals: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first evaluation record at or under the target, or None."""
    for rec in evals:
        if rec["val_loss"] <= target:
            return rec
    return None


def summarize_run(run: dict[str, Any], target: float) -> dict[str, Any]:
    """What the matrix keeps of one backend's run.json."""
    evals = run["evals"]
    hit = steps_to_target(evals, target)
    step_s = np.asarray(run.get("step_seconds") or [np.nan], float)
    median = float(np.median(step_s[1:])) if step_s.size > 1 else float(step_s[0])  # the first step compiles
    out = {
        "status": "ok", "steps": run["steps"], "train_seconds": run["train_seconds"],
        "first_step_s": float(step_s[0]), "median_step_s": median,
        "chars_per_s": run["batch_size"] * run["seq_len"] / median if median > 0 else None,
        "steps_to_target": hit["step"] if hit else None,
        "seconds_to_target": hit["seconds"] if hit else None,
        "estimate_s_to_target": hit["step"] * median if hit else None,
        "final_val_loss": run["final_val_loss"], "final_val_bpc": run.get("final_val_bpc"),
        "best_val_loss": min(r["val_loss"] for r in evals),
        "curve": [{k: r[k] for k in ("step", "seconds", "train_loss", "val_loss")} for r in evals],
        "train_losses": [round(x, 6) for x in run["train_losses"]],
        "sample": run.get("sample"),
    }
    return out


def _run_one(backend: str, cfg: QualityConfig, out: Path, threads: int | None,
             overrides: dict[str, str], log: Callable[[str], None],
             children: Children | None = None, cpus: list[int] | None = None) -> dict[str, Any]:
    """One backend's training in its own process (group), pinned to `cpus` where given (its
    lane's, lane_cpus); its summary, or a failure record. The process is registered in
    `children` while it runs, so an interruption can stop it."""
    registry.get_spec(backend)  # an unknown name fails here, before any process starts
    try:
        python = interpreter_for(backend, overrides)
    except registry.BackendError as e:
        return {"status": "unavailable", "error": str(e)}
    env = worker_env(threads, backend=backend)  # the spec's env_vars included
    env[_CHILD] = "1"
    env.update(child_vars(os.getpid(), cpus))  # pinned, and killed with us (its boot code)
    # harness_command, not `python -m harness`: another environment's interpreter (chainer's)
    # has no lstmbench installed, and a non-editable install's code is not on its path
    cmd = harness_command(python, "train", "--backend", backend, "--preset", cfg.preset,
                          "--corpus", cfg.corpus, "--out", str(out), "--steps", str(cfg.steps),
                          "--eval-every", str(cfg.eval_every), "--seed", str(cfg.seed),
                          "--val-chars", str(cfg.val_chars), "--no-progress")
    if cfg.optimizer_from:
        cmd += ["--optimizer-from", cfg.optimizer_from]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    # its own session: Ctrl-C reaches only us, and we stop its whole group; PR_SET_PDEATHSIG
    # (child_vars): killed with us even by SIGKILL, never left training as an orphan
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    if children is not None:
        children.add(proc)
    tail: deque[str] = deque(maxlen=5)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        killpg(proc, signal.SIGKILL)

    timer = threading.Timer(cfg.timeout_s, kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith("step "):
                log(f"  {backend}: {line}")
            elif line:
                tail.append(line)
        code = proc.wait()
    except KeyboardInterrupt:  # only where called in the main thread (lanes run in threads)
        killpg(proc, signal.SIGTERM)  # the child saves its checkpoint and log
        proc.wait()
        raise
    finally:
        timer.cancel()
        if children is not None:
            children.discard(proc)
    wall = time.perf_counter() - t0
    run_json = out / "run.json"
    if timed_out.is_set():
        return {"status": "timeout", "error": f"no result within {cfg.timeout_s:.0f} s", "wall_s": wall}
    if code != 0 or not run_json.is_file():
        msg = next((t for t in reversed(tail) if "error" in t.lower()), tail[-1] if tail else "")
        status = "unavailable" if "unavailable" in msg or "cannot run" in msg else "error"
        return {"status": status, "error": f"exit status {code}: {msg}"[:500], "wall_s": wall}
    res = summarize_run(json.loads(run_json.read_text()), cfg.target_loss)
    res["wall_s"] = wall
    return res


def train_on_node(backend: str, cfg: dict[str, Any], threads: int | None,
                  overrides: dict[str, str]) -> dict[str, Any]:
    """One backend's training where a cluster's task runs it (harness.cluster.tasks.Lanes):
    the corpus fetched (and cached) on that node, the training in a process of its own there."""
    config = QualityConfig(**cfg)
    prepare(config.corpus)
    with tempfile.TemporaryDirectory(prefix="lstmbench-quality-") as tmp:
        return _run_one(backend, config, Path(tmp) / backend, threads, overrides, print,
                        children=Children())


def _cannot_train(backend: str) -> str | None:
    """Why `backend` cannot train, where the registry says so."""
    return registry.unsupported(backend, mode="train")


def schedule_order(backends: list[str]) -> list[str]:
    """The queue's order: the slowest expected first (longest-processing-time first keeps the
    lanes' finishing times close), by each backend's measured step time in its registry entry
    (BackendSpec.train_step_s); ties, and backends without one, keep the order given."""
    def slow(b: str) -> float:
        s = registry.BACKENDS[b].train_step_s if b in registry.BACKENDS else None
        return -s if s is not None else 0.0
    return sorted(backends, key=slow)  # stable: the given order among equals


def train_in_lanes(backends: list[str], jobs: int, train_one: Callable[[str, int], dict[str, Any]],
                   record: Callable[[str, dict[str, Any]], None], *, children: Children,
                   clock: Callable[[], float] = time.monotonic, grace_s: float = 5.0) -> None:
    """Train `backends` in `jobs` lanes pulling from one queue (harness.engine.lanes, in the
    order given); each finished backend goes to `record` at once, its result with `lane`
    (1..jobs), `start_s`/`end_s` (monotonic seconds since the lanes started) and
    `concurrent_with` (the backends that trained at any moment of its run). A trainer that
    raises is that backend's error record; an interruption stops every lane's child."""
    def with_slot(b: str, res: dict[str, Any], slot: Slot) -> None:
        res.update(lane=slot.lane, start_s=slot.start_s, end_s=slot.end_s, concurrent_with=slot.beside)
        record(b, res)

    def failed(b: str, e: Exception) -> dict[str, Any]:  # one backend's harness failure, not the run's
        return {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}

    run_lanes(backends, jobs, train_one, with_slot, failed, children=children, name="quality lane",
              clock=clock, grace_s=grace_s)


def noise_statement(threads: int | None, jobs: int, cores: int) -> str:
    """What the seconds of this run mean, in words (the document's "noise" field)."""
    per = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "the default threads"
    if jobs > 1:
        beside = (f"{jobs} lanes on {cores} cores: each backend was measured with {per}, on "
                  "its lane's own CPUs where they fit (see each backend's cpus), while "
                  f"up to {jobs - 1} other backend(s) trained in the other lane(s) (see each "
                  "backend's lane and concurrent_with); caches and memory bandwidth were shared, "
                  "so seconds are slower than on an idle machine and depend on the neighbour")
    else:
        beside = f"one lane: backends ran one at a time, each with {per}"
    return ("steps_to_target is exact (deterministic data order and initial parameters; "
            "resolution eval_every) and unaffected by the lanes; seconds count training steps "
            "only, each ending with the loss fetched to the host; " + beside + "; "
            "estimate_s_to_target = steps_to_target x median step time resists a few slow steps")


def _is_backend_record(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("backend"), str) and isinstance(obj.get("result"), dict)


@dataclass
class Resumed:
    """An interrupted quality run's journal, read once (harness.session.Resume): its settings,
    finished results by backend and earlier sessions by index."""
    resume: Resume
    cfg: QualityConfig
    backends: list[str]
    threads: int | None
    done: dict[str, dict[str, Any]]
    sessions: dict[int, dict[str, Any]]


def read_resume(path: str | os.PathLike[str] | Resume) -> Resumed:
    """The journal PATH names, read once; UsageError (one line) where it is no quality run's
    journal or its header lacks the run's settings."""
    r = (path if isinstance(path, Resume) else Resume.read(path)).only(_is_backend_record)
    if r.header.get("schema") != SCHEMA:
        raise UsageError(f"--resume {path if not isinstance(path, Resume) else r.journal}: {r.journal} is "
                         f"not a quality run's journal (no {SCHEMA} header)")
    try:
        cfg = QualityConfig(**r.header["matrix"])
        backends = list(r.header["requested_backends"])
    except (KeyError, TypeError) as e:
        raise UsageError(f"--resume {r.journal}: {r.journal}'s header lacks the run's settings ({e})") from None
    done: dict[str, dict[str, Any]] = {}
    sessions: dict[int, dict[str, Any]] = {}
    for rec in r.records:  # a backend journaled twice (never by this code): the last one counts
        done[rec["backend"]] = rec["result"]
        if isinstance(rec.get("session"), dict):
            sessions[int(rec["session"].get("index", 0))] = rec["session"]
    target = Path(r.header.get("target") or r.target)
    return Resumed(replace(r, target=target), cfg, backends, r.header.get("threads"), done, sessions)


def _preset(cfg: QualityConfig) -> Any:
    preset = get_preset(cfg.preset)
    return replace(preset, train=get_preset(cfg.optimizer_from).train) if cfg.optimizer_from else preset


def new_document(cfg: QualityConfig, backends: list[str], threads: int | None, jobs: int, corpus: Any,
                 command: list[str] | None, lanes: Any) -> dict[str, Any]:
    """A new quality run's document (schema lstmbench.quality): the matrix, the corpus, the
    model, the machine and where it trains."""
    cores = os.cpu_count() or 1
    preset = _preset(cfg)
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "machine": machine_info(), "git": git_info(), "command": command or [], "matrix": asdict(cfg), "device": "cpu",
        "threads": threads, "jobs": jobs, "cores": cores, "python": sys.version.split()[0],
        "corpus": {k: v for k, v in corpus.summary().items() if k != "vocab"},
        "model": {"preset": preset.name, "batch_size": preset.batch_size, "seq_len": preset.seq_len,
                  "optimizer": preset.train.optimizer.to_json(), "clip": asdict(preset.train.clip),
                  **{k: v for k, v in asdict(preset.model).items() if k != "vocab_size"},
                  "vocab_size": corpus.vocab_size},
        "reference": REFERENCE, "requested_backends": list(backends),
        "noise": noise_statement(threads, jobs, cores), "interrupted": False}
    if lanes is not None:  # where it trained: the cluster's nodes, and their machine (one kind)
        doc.update(lanes.record())
    return doc


class QualityRun:
    """One quality run's session (harness.session) and its backends' results as they finish."""

    def __init__(self, cfg: QualityConfig, backends: list[str], threads: int | None, jobs: int,
                 overrides: dict[str, str], session: RunSession, resumed: Resumed | None,
                 lanes: Any, log: Callable[[str], None]) -> None:
        self.cfg, self.backends, self.threads, self.jobs = cfg, backends, threads, jobs
        self.overrides, self.session, self.lanes = overrides, session, lanes
        self.preset = _preset(cfg)
        self.results: dict[str, dict[str, Any]] = dict(resumed.done) if resumed else {}
        self.sessions = dict(resumed.sessions) if resumed else {}
        # a session: one process's part of the run (the first, then each --resume); start_s/end_s
        # and concurrent_with compare backends of the same session only
        self.index = 0 if resumed is None else 1 + max([0, *self.sessions, *(r.get("session", 0)
                                                                              for r in self.results.values())])
        self.info = {"index": self.index, "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                     "jobs": jobs, "threads": threads, "cores": os.cpu_count() or 1}
        self._lock = threading.Lock()  # lanes log from their threads: whole lines, never interleaved
        self._log = log

    def say(self, line: str) -> None:
        with self._lock:
            self._log(line)

    def record(self, b: str, res: dict[str, Any]) -> None:
        """A finished backend, journaled at once."""
        dev = registry.get_spec(b).deviations.get(self.preset.train.optimizer.name)
        res["optimizer_deviation"] = dev.cause if dev else None
        res["session"] = self.index
        self.session.keep({"backend": b, "result": res, "session": self.info})
        self.results[b] = res
        lane = f" [node {res['node']}]" if res.get("node") else (f" [lane {res['lane']}]" if res.get("lane") else "")
        self.say(_line(b, res) + lane)

    def interrupted(self, sessions: list[RunSession]) -> str:
        left = [b for b in self.backends if b not in self.results]
        j = self.session.journal_file
        return (f"interrupted: {len(self.results)} finished backends kept in {j} ({len(left)} left: "
                f"{', '.join(left)}); continue with: lstmbench run --resume {j}")

    def train_one(self, b: str, lane: int, tmp: Path, children: Children) -> dict[str, Any]:
        """One backend trained in its lane: on a cluster's node (the lane's CPUs are Ray's to
        give), or here in a child process pinned to the lane's CPUs."""
        if self.lanes is not None:
            self.say(f"{b}: training on the cluster ...")
            return self.lanes.call("harness.training.quality:train_on_node",
                                   {"backend": b, "cfg": asdict(self.cfg), "threads": self.threads,
                                    "overrides": self.overrides}, children, self.say, b)
        cpus = lane_cpus(lane, self.threads, self.jobs) if self.jobs > 1 else None
        self.say(f"{b}: training in lane {lane}" + (f" on CPU {','.join(map(str, cpus))}" if cpus else "") + " ...")
        res = _run_one(b, self.cfg, tmp / b, self.threads, self.overrides, self.say, children=children, cpus=cpus)
        if children.closed and res.get("status") != "ok":
            raise Stopped  # cut short by the interruption: not a finished backend
        res["cpus"] = cpus
        return res

    def train(self, todo: list[str]) -> None:
        """Every backend left: those that cannot train recorded at once, the rest in lanes."""
        for b in todo:
            why = _cannot_train(b)
            if why:
                self.record(b, {"status": "unsupported", "error": why, "lane": None})
        trainable = [b for b in schedule_order(todo) if not _cannot_train(b)]
        with tempfile.TemporaryDirectory(prefix="lstmbench-quality-") as tmp:
            children = Children()
            train_in_lanes(trainable, self.jobs, lambda b, lane: self.train_one(b, lane, Path(tmp), children),
                           self.record, children=children)

    def finish(self, wall: float, resumed: bool) -> Path:
        """The results file: every backend in the requested order, the sessions, the comparison."""
        doc = self.session.doc
        doc["backends"] = {b: self.results[b] for b in self.backends if b in self.results}  # the requested order
        self.sessions[self.index] = {**self.info, "wall_s": wall}
        doc["sessions"] = [self.sessions[k] for k in sorted(self.sessions)]
        doc["jobs"] = self.jobs  # this session's; each session's own are in "sessions"
        doc["noise"] = noise_statement(self.threads, max(int(x.get("jobs") or 1) for x in doc["sessions"]),
                                       os.cpu_count() or 1)
        doc["resumed"] = resumed
        doc["wall_s"] = wall  # this session's; a resumed run's earlier sessions are in "sessions"
        doc["comparison"] = compare(doc["backends"])
        return self.session.finish(doc)

    def intro(self, resumed: Resumed | None, corpus: Any, trainable: int) -> None:
        cfg, threads, cores = self.cfg, self.threads, os.cpu_count() or 1
        lanes_used = min(self.jobs, trainable)
        if resumed is not None:
            done = resumed.done
            self.say(f"resuming {self.session.journal_file}: {len(done)} of {len(self.backends)} backends "
                     f"already finished ({', '.join(done) or 'none'})")
        self.say(f"quality matrix {cfg.name}: {self.preset.name} on {cfg.corpus} ({corpus.summary()['chars']:,} "
                 f"characters, V={corpus.vocab_size}), {cfg.steps} steps per backend, target "
                 f"{cfg.target_loss} nats, validation every {cfg.eval_every} steps; {trainable} to train "
                 f"in {lanes_used} lane(s) x {threads or 'default'} thread(s) on {cores} cores")
        if threads and lanes_used * threads > cores:
            self.say(f"note: {lanes_used} lanes x {threads} threads exceed the {cores} cores: the lanes "
                     "will slow each other down")


def run_quality(cfg: QualityConfig, backends: list[str], out_dir: Path, *, threads: int | None = None,
                jobs: int | None = None, overrides: dict[str, str] | None = None,
                command: list[str] | None = None, resume: Path | Resume | Resumed | None = None,
                log: Callable[[str], None] = print, lanes: Any = None) -> Path:
    """Run the matrix (or, with `resume`, the backends an interrupted run's journal lacks;
    then `cfg`, `backends` and `threads` are the journal's) and write the results file; its path.
    `lanes` (harness.cluster.tasks.Lanes): each backend trains on a cluster's node."""
    resumed = resume if isinstance(resume, Resumed) or resume is None else read_resume(resume)
    if resumed is not None:
        cfg, backends, threads = resumed.cfg, resumed.backends, resumed.threads
    else:
        check_writable(out_dir)  # before the corpus is fetched and anything trains
    backends = list(dict.fromkeys(backends))  # each once: a backend is one record
    jobs = jobs or (lanes.jobs if lanes is not None else default_jobs(threads))
    corpus = prepare(cfg.corpus)  # fetched and cached once, before any backend starts
    if resumed is None:
        doc = new_document(cfg, backends, threads, jobs, corpus, command, lanes)
        session = RunSession.new(doc, default_path(out_dir, doc))  # a name of its own (journal.claim)
        session.begin()
    else:
        session = RunSession.resume(resumed.resume)
        if corpus.sha256 != (session.doc.get("corpus") or {}).get("sha256"):
            raise UsageError(f"--resume: corpus {cfg.corpus!r} is not the text the journal's run trained "
                             f"on (sha256 {corpus.sha256[:12]}, the journal's "
                             f"{str((session.doc.get('corpus') or {}).get('sha256'))[:12]}); resume it where it started")
    run = QualityRun(cfg, backends, threads, jobs, overrides or {}, session, resumed, lanes, log)
    todo = [b for b in backends if b not in run.results]
    run.intro(resumed, corpus, sum(not _cannot_train(b) for b in todo))
    t0 = time.perf_counter()
    with running([session], run.interrupted, run.say):
        run.train(todo)
    written = run.finish(time.perf_counter() - t0, resumed is not None)
    log(table(session.doc))
    log(f"wrote {written}")
    return written


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Do native optimiser formulas change the final quality? The spread of the final
    validation loss over the backends that follow docs/SPEC.md §4 (float32 trajectories part after
    a few hundred steps, so they differ too) is the band a deviating backend is held to."""
    ok = {b: r for b, r in results.items() if r.get("status") == "ok"}
    spec_like = {b: r["final_val_loss"] for b, r in ok.items() if not r.get("optimizer_deviation")}
    out: dict[str, Any] = {"spec_backends": sorted(spec_like)}
    if spec_like:
        lo, hi = min(spec_like.values()), max(spec_like.values())
        out["spec_band"] = [lo, hi]
        out["deviating"] = {
            b: {"final_val_loss": r["final_val_loss"],
                "outside_band_by": max(0.0, lo - r["final_val_loss"], r["final_val_loss"] - hi),
                "cause": r["optimizer_deviation"]}
            for b, r in ok.items() if r.get("optimizer_deviation")}
    return out


def _line(b: str, r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        return f"{b}: {r.get('status')}: {r.get('error')}"
    hit = (f"target at step {r['steps_to_target']} ({r['seconds_to_target']:.1f} s, estimate "
           f"{r['estimate_s_to_target']:.1f} s)" if r["steps_to_target"] is not None else "target not reached")
    return f"{b}: {hit}; final validation {r['final_val_loss']:.4f} nats after {r['steps']} steps"


def table(doc: dict[str, Any]) -> str:
    t = doc["matrix"]["target_loss"]
    rows = [f"{'backend':15} {'status':8} {'steps to ' + str(t):>14} {'s to target':>12} "
            f"{'est. s':>8} {'chars/s':>9} {'final val':>10} {'bits/char':>9} {'lane':>4}  optimiser"]
    for b, r in doc["backends"].items():
        if r.get("status") != "ok":
            rows.append(f"{b:15} {r.get('status', '?'):8} {r.get('error', '')[:70]}")
            continue
        f = (lambda v, spec: format(v, spec) if v is not None else "-")
        rows.append(f"{b:15} {'ok':8} {f(r['steps_to_target'], 'd'):>14} "
                    f"{f(r['seconds_to_target'], '.1f'):>12} {f(r['estimate_s_to_target'], '.1f'):>8} "
                    f"{f(r['chars_per_s'], ',.0f'):>9} {r['final_val_loss']:10.4f} "
                    f"{r['final_val_bpc']:9.3f} {f(r.get('lane'), 'd'):>4}  {'native: ' + r['optimizer_deviation'][:40] if r['optimizer_deviation'] else 'docs/SPEC.md §4'}")
    c = doc.get("comparison", {})
    if c.get("spec_band"):
        lo, hi = c["spec_band"]
        rows.append(f"final validation loss of the docs/SPEC.md §4 backends: {lo:.4f} .. {hi:.4f}")
        for b, d in c.get("deviating", {}).items():
            rows.append(f"{b} (native formula): {d['final_val_loss']:.4f}, "
                        + ("inside that band" if d["outside_band_by"] == 0 else
                           f"outside it by {d['outside_band_by']:.4f}"))
    return "\n".join(rows)
