"""The harness's side of the worker protocol (harness.engine.worker): start a worker in a given
interpreter, send a request, wait for its answer with a timeout, and notice a worker that
died, hung or answered nonsense, so the caller can record that cell and start a fresh worker.
Above the single worker: the run's set of them (Workers, started as a Launcher says, memory
permitting), and a participant living in one (WorkerParticipant).

The channel: requests go to the worker's stdin; answers come back, one JSON object per line,
on a pipe of their own (the worker's fd LSTMBENCH_PROTO_FD, passed with pass_fds). The
worker's stdout and stderr go to a log file, so nothing a library prints (from Python or from
C, before or after the worker starts) can reach the protocol. The log is an anonymous
temporary file (unlinked at birth): it can never be left behind; its tail goes into errors.

Workers never outlive the harness: each runs in its own process group (Ctrl-C in a terminal
reaches only the harness), which is killed on close(), when a request is interrupted, at
exit (atexit) and on a second Ctrl-C (signals.on_second_signal); the kernel kills a worker
whose parent died (PR_SET_PDEATHSIG, which the worker's boot code sets before anything
else: harness.envs.interpreters.child_vars), even after a SIGKILL."""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from impls import registry

from .bench import Cell
from ..envs.interpreters import bootstrap_code, child_vars, interpreter_for, worker_env
from .failures import classify_message
from ..envs.host import memory_reserve, mem_available, settle, worker_cpus
from .kinds import KINDS
from .participants import PROBE, ROUND_TIME, Kind, ParticipantFailed
from .signals import on_second_signal
from ..envs.variants import Variant, split

# Run in the worker's interpreter: `harness` and `impls` loaded from the folder this process
# imported them from, by location (envs.bootstrap_code), then the worker's loop. A protocol
# compatibility: a source tree a variant runs (src=REV, harness.envs.variants) may predate
# harness/engine/ and hold the worker at harness/worker.py (the flat layout); its worker
# answers the same requests, so it is started where the new module is not there.
_BOOT = bootstrap_code("""\
try:
    from harness.engine.worker import main
except ModuleNotFoundError as e:
    if e.name not in ("harness.engine", "harness.engine.worker"):
        raise
    from harness.worker import main  # the flat layout's worker
main()""")

MAX_LINE = 256 << 20  # an answer this long without a newline is not an answer


class WorkerFailed(Exception):
    """The worker died, hung, or answered something that is not an answer; `kind` is one of
    "crash", "killed", "timeout", "oom", "malformed". The worker is gone: start a new one."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_live: "weakref.WeakSet[Worker]" = weakref.WeakSet()


def kill_all() -> None:
    """SIGKILL every live worker's process group now (at exit, on a second Ctrl-C); no waiting."""
    for w in list(_live):
        w._killpg()


atexit.register(kill_all)
on_second_signal(kill_all)


def killpg(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the process group `proc` leads (it and whatever it started), unless it was
    reaped: its group id may belong to someone else by then."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass


@dataclass(frozen=True)
class Launch:
    """How a participant's worker process starts: the interpreter, the backend whose spec's
    env_vars it gets (None: the probe), its threads and CPUs, more environment variables
    (OMP_WAIT_POLICY, a variant's env.VAR) and the source tree it runs (None: this process's;
    a variant's src=, harness.envs.variants)."""
    python: str
    backend: str | None
    threads: int | None
    cpus: tuple[int, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    code_root: str | None = None

    def start(self) -> "Worker":
        return Worker(self.python, self.threads, backend=self.backend, extra_env=dict(self.env),
                      cpus=list(self.cpus) if self.cpus else None, code_root=self.code_root)


class Worker:
    """One worker process in interpreter `python`. `backend` gives the spec's env_vars to its
    environment, `extra_env` more variables (OMP_WAIT_POLICY); `cpus` pins it (worker_cpus);
    `code_root` runs another source tree's harness and impls (LSTMBENCH_CODE_ROOT)."""

    def __init__(self, python: str, threads: int | None, *, backend: str | None = None,
                 extra_env: dict[str, str] | None = None, cpus: list[int] | None = None,
                 code_root: str | None = None) -> None:
        self.python, self.threads, self.cpus = python, threads, cpus
        self._buf = bytearray()
        self._closed = False
        # anonymous: unlinked as it is made, so no /tmp/lstmbench-worker-*.log is ever left
        self.log = tempfile.TemporaryFile("w+b", prefix="lstmbench-worker-", suffix=".log")
        r, w = os.pipe()
        env = worker_env(threads, backend=backend, extra=extra_env, root=code_root)
        env["LSTMBENCH_PROTO_FD"] = str(w)
        env.update(child_vars(os.getpid(), cpus))  # pinned and tied to us by its boot code
        try:
            self.proc = subprocess.Popen(
                [python, "-c", _BOOT], env=env, stdin=subprocess.PIPE, stdout=self.log,
                stderr=self.log, pass_fds=(w,), start_new_session=True)  # Ctrl-C reaches only us
        except BaseException:
            os.close(r)
            os.close(w)
            self.log.close()
            raise
        os.close(w)  # the worker holds the only write end: EOF here means it is gone
        self._fd = r
        _live.add(self)

    # ---- the log -------------------------------------------------------------------------

    def stderr_tail(self, n: int = 3) -> str:
        """The last `n` non-blank lines the worker printed, joined by " | "."""
        try:
            fd = self.log.fileno()
            size = os.fstat(fd).st_size
            data = os.pread(fd, min(size, 65536), max(0, size - 65536))  # offset untouched
        except (OSError, ValueError):
            return ""
        lines = [ln.rstrip() for ln in data.decode(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])

    # ---- requests ------------------------------------------------------------------------

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request; the answer dict ({"ok": True, ...} or {"ok": False, "kind": "oom" |
        "error", "error": ONE_LINE, "traceback": ...}), or WorkerFailed (and the worker is gone)."""
        self.send(req)
        return self.receive(timeout)

    def send(self, req: dict[str, Any]) -> None:
        """The first half of request(): several workers can then work side by side, each
        answer taken with receive()."""
        if self._closed:
            raise WorkerFailed("crash", "the worker was closed")
        if self.proc.poll() is not None:
            raise self._died()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        except BaseException:
            self.kill()
            raise

    def receive(self, timeout: float) -> dict[str, Any]:
        """The answer to the request sent (request()'s second half)."""
        try:
            return self._await(timeout)
        except BaseException as e:  # Ctrl-C/SIGTERM mid-request: the worker goes with it
            if not isinstance(e, WorkerFailed):
                self.kill()
            raise

    def _await(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, rest = bytes(self._buf[:nl]), bytes(self._buf[nl + 1:])
                self._buf = bytearray()
                ans = self._parse(line)  # WorkerFailed("malformed") when it is not an answer
                if rest.strip():  # one request, one answer: the channel is out of step
                    self.kill()
                    raise WorkerFailed("malformed", f"the worker sent more than one answer: "
                                                    f"{rest[:120]!r} after {line[:120]!r}")
                return ans
            if len(self._buf) > MAX_LINE:
                self.kill()
                raise WorkerFailed("malformed", f"the worker's answer exceeds {MAX_LINE} bytes without a line end")
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerFailed("timeout", f"no answer within {timeout:.0f} s; worker killed")
            ready, _, _ = select.select([self._fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._fd, 1 << 16)
                if chunk:
                    self._buf += chunk
                    continue
                if self._buf.strip():  # EOF in the middle of an answer
                    part = bytes(self._buf[:120])
                    died = self._died()
                    raise WorkerFailed("malformed", f"truncated answer {part!r}; {died}")
                raise self._died()
            if self.proc.poll() is not None and not select.select([self._fd], [], [], 0)[0]:
                raise self._died()

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            ans = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            self.kill()
            raise WorkerFailed("malformed", f"the worker's answer is not JSON ({e}): {line[:120]!r}") from None
        if not isinstance(ans, dict) or not isinstance(ans.get("ok"), bool):
            self.kill()
            raise WorkerFailed("malformed", f"the worker's answer is not an answer object: {line[:120]!r}")
        if not ans["ok"]:
            err = str(ans.get("error") or "").strip()
            ans["error"] = err.splitlines()[0] if err else "the worker gave no reason"
            if ans.get("kind") not in ("oom", "error"):
                ans["kind"] = classify_message(ans["error"])
        return ans

    def _died(self) -> WorkerFailed:
        code = self.proc.wait()
        _live.discard(self)
        tail = self.stderr_tail()
        if classify_message(tail) == "oom":
            kind = "oom"
        elif code == -signal.SIGKILL:  # the kernel's out-of-memory killer, or someone's kill -9
            kind = "killed"
        else:
            kind = "crash"
        return WorkerFailed(kind, f"worker exited with status {code}" + (f": {tail}" if tail else ""))

    def usable(self) -> bool:
        """Whether the worker can take a request now: not closed, not exited, not stopped (a
        SIGSTOPped worker would only time out). A worker that died or was stopped while idle,
        after its last answer, is no fault of whoever asks next: start a fresh one instead."""
        return not self._closed and self.proc.poll() is None and not self._stopped()

    def _stopped(self) -> bool:
        """Stopped by a signal (state T, or t under a tracer, in /proc/PID/stat)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
        except (OSError, IndexError):
            return False  # no /proc here: only an exit can be seen

    # ---- ending ----------------------------------------------------------------------------

    def _killpg(self) -> None:
        killpg(self.proc, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the worker's process group (it and anything it started) and reap it."""
        self._killpg()
        try:
            self.proc.wait()
        except BaseException:  # interrupted while reaping: the kill was sent, that is enough
            pass
        _live.discard(self)

    def close(self) -> None:
        """Ask the worker to exit (SIGKILL after 10 s); release the pipe and the log. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.proc.poll() is None and not self._stopped():  # a stopped one cannot exit
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.write(b'{"op": "exit"}\n')
                    self.proc.stdin.close()
                    self.proc.wait(timeout=10)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    pass
            self.kill()  # its group too: anything it left running
        finally:
            for f in (self.proc.stdin,):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
            try:
                os.close(self._fd)
            except OSError:
                pass
            self.log.close()
            _live.discard(self)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- the run's workers --------------------------------------------------------------------

@dataclass
class Launcher:
    """How a run starts each participant's worker: the probe in this interpreter; a backend
    in its environment's interpreter (envs.interpreter_for, --python overrides); a backend in
    a variant (BACKEND@VARIANT, harness.envs.variants) with the variant's interpreter, source
    tree (`roots`: variant -> folder), environment variables and threads. Workers with fewer
    threads than CPUs are pinned to the last CPUs (host.worker_cpus) on the CPU. A record of
    the run's settings, not a closure, so that it can travel with a workload to where it runs."""
    overrides: dict[str, str]
    threads: int | None
    extra_env: dict[str, str] = field(default_factory=dict)  # OMP_WAIT_POLICY
    cpus: list[int] | None = None
    variants: dict[str, Variant] = field(default_factory=dict)
    roots: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    aliases: dict[str, str] = field(default_factory=dict)  # a participant whose worker is another's

    def __call__(self, name: str) -> Launch:
        name = self.aliases.get(name, name)
        extra = tuple(sorted(self.extra_env.items()))
        base_cpus = tuple(self.cpus) if self.cpus else None
        if name == PROBE:
            return Launch(sys.executable, None, self.threads, base_cpus, extra)
        backend, vname = split(name)
        v = self.variants.get(vname or "")
        if v is None:
            return Launch(interpreter_for(backend, self.overrides), backend, self.threads, base_cpus, extra)
        t = v.threads or self.threads
        pin = (worker_cpus(t) if self.device == "cpu" else None) if v.threads else self.cpus
        return Launch(v.interpreter(backend, self.overrides), backend, t, tuple(pin) if pin else None,
                      tuple(sorted({**self.extra_env, **dict(v.env)}.items())), self.roots.get(v.name))


class Workers:
    """Live workers keyed by (participant, process index): process p of every workload uses set
    p, each workload preparing its cell anew in it; a failed worker is replaced on next use.
    `launch` says how each participant's worker starts (a Launcher).

    Workers stay alive from workload to workload (starting one costs up to a minute: imports,
    compiles), unless memory runs short: before a worker starts while less than `reserve`
    bytes are available, idle workers of other process sets go first, least recently used
    first (a full set of smoke's 13 backends holds about 5 GB; two variants of three sets
    would not fit this project's 24 GiB machine)."""

    def __init__(self, launch: Callable[[str], Launch], reserve: int | None = None) -> None:
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
        first (Worker.usable): a participant starting in it (a workload's cell, the probe)
        must not inherit what befell it while idle."""
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


def answer(ans: dict[str, Any]) -> dict[str, Any]:
    """A worker's answer, or ParticipantFailed with its kind (oom when the error says so)."""
    if not ans.get("ok"):
        err = str(ans.get("error", ""))
        kind = ans.get("kind") or ("oom" if ("MemoryError" in err or "out of memory" in err.lower()
                                             or "OOM" in err) else "error")
        raise ParticipantFailed(kind, err)
    return ans


class WorkerParticipant:
    """A participant in worker process p of `workers`, of kind `kind` (harness.engine.kinds.KINDS; a
    backend's cell by default; `extra`: the kind's own request fields, e.g. a baseline's file
    and host backend). Every kind's rounds and release are the same requests; only the
    request that prepares it differs."""

    def __init__(self, workers: Workers, name: str, p: int, cell: Cell | None, timeout: float,
                 round_time: float = ROUND_TIME, kind: Kind | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.workers, self.name, self.p, self.cell = workers, name, p, cell
        self.timeout, self.round_time = timeout, round_time
        self.round_timeout = timeout
        self.kind = kind or KINDS["backend"]
        self.extra = extra or {}
        self.settled_s = 0.0  # seconds the scheduler waited for this worker to go quiet

    def _request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:  # a participant starts (is prepared) in a worker fit to take it: Workers.healthy
            get = self.workers.healthy if req["op"] == self.kind.op else self.workers.get
            return answer(get(self.name, self.p).request(req, timeout))
        except WorkerFailed as e:
            self.workers.drop(self.name, self.p)
            raise ParticipantFailed(e.kind, str(e)) from None
        except registry.BackendError as e:
            raise ParticipantFailed("unavailable", str(e)) from None

    def prepare(self) -> dict[str, Any]:
        req = {"op": self.kind.op, "round_time": self.round_time,
               **self.kind.fields(self.cell, self.workers.threads(self.name), self.extra)}
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
        """Wait until this participant's worker has gone quiet (host.settle), counting the wait."""
        self.settled_s += settle(self.workers.pid(self.name, self.p))

    def release(self) -> dict[str, Any]:
        return self._request({"op": "release"}, self.timeout)
