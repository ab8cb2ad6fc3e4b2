"""The harness's side of the worker protocol (harness/worker.py): start a worker in a given
interpreter, send a request, wait for its answer with a timeout, and notice a worker that
died, hung or answered nonsense, so the caller can record that cell and start a fresh worker.

The channel: requests go to the worker's stdin; answers come back, one JSON object per line,
on a pipe of their own (the worker's fd LSTMBENCH_PROTO_FD, passed with pass_fds). The
worker's stdout and stderr go to a log file, so nothing a library prints (from Python or from
C, before or after the worker starts) can reach the protocol. The log is an anonymous
temporary file (unlinked at birth): it can never be left behind; its tail goes into errors.

Workers never outlive the harness: each runs in its own process group (Ctrl-C in a terminal
reaches only the harness), which is killed on close(), when a request is interrupted, at
exit (atexit) and on a second Ctrl-C (signals.on_second_signal); the kernel kills a worker
whose parent died (PR_SET_PDEATHSIG, which the worker's boot code sets before anything
else: harness.envs.child_vars), even after a SIGKILL."""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Any

from .envs import bootstrap_code, child_vars, worker_env
from .failures import classify_message

# Run in the worker's interpreter: `harness` and `impls` loaded from the folder this process
# imported them from, by location (envs.bootstrap_code), then the worker's loop. A protocol
# compatibility: a source tree a variant runs (src=REV, harness.engine.variants) may predate
# harness/engine/ and hold the worker at harness/worker.py (the flat layout); its worker
# answers the same requests, so it is started where the new module is not there.
_BOOT = bootstrap_code("""\
try:
    from harness.engine.worker import main
except ModuleNotFoundError as e:
    if e.name not in ("harness.engine", "harness.engine.worker"):
        raise
    from harness.worker import main
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
try:
    from .signals import on_second_signal
    on_second_signal(kill_all)
except ImportError:  # pragma: no cover - signals.py ships with this file
    pass


def worker_cpus(threads: int | None, available: "list[int] | None" = None) -> list[int] | None:
    """The CPUs a run's workers are pinned to: the last `threads` CPUs this process may use,
    when `threads` is fewer than those; None (no pinning) otherwise.

    Why: on the project's 2-core VM, one-thread workers left to the scheduler ran most rounds
    1.3-1.5x slower than their fastest (median over cells of the 25th percentile over the
    minimum, three smoke runs) and only when placed well at the fastest; pinned to one CPU,
    1.06-1.19x, with half the between-run scatter of the cells' minima (docs/measurement.md,
    "Pinning"). The last CPUs, because CPU 0 takes more of the kernel's own work; the parent,
    which only waits while a round runs, is left unpinned."""
    if not threads:
        return None
    available = usable_cpus() if available is None else available
    if available is None or threads >= len(available):
        return None
    return available[-threads:]


def default_jobs(threads: int | None, cores: int | None = None) -> int:
    """Children that fit the machine side by side (quality lanes, `check --jobs`): the cores
    // threads per child (at least 1)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, threads or cores))


def mem_available() -> int | None:
    """Bytes of memory available for new processes now (Linux MemAvailable); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_reserve() -> int:
    """Memory to keep available when a worker starts: the larger of 2 GiB (the largest
    worker, keras-torch's, held 0.9 GB after preparing a smoke cell) and a tenth of the
    machine's memory."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return max(2 << 30, (total or 0) // 10)


def usable_cpus() -> list[int] | None:
    """The CPUs this process may run on, in order; None where the platform cannot tell."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


@dataclass(frozen=True)
class Launch:
    """How a participant's worker process starts: the interpreter, the backend whose spec's
    env_vars it gets (None: the probe), its threads and CPUs, more environment variables
    (OMP_WAIT_POLICY, a variant's env.VAR) and the source tree it runs (None: this process's;
    a variant's src=, harness.variants)."""
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
        if self.proc.returncode is None:  # not yet reaped: the group id is still ours
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass

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
