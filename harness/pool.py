"""The harness's side of the worker protocol (harness/worker.py): start a worker in a given
interpreter, send a request, wait for its answer with a timeout, and notice a worker that
died or hung, so the caller can record that cell and start a fresh worker."""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time
from typing import Any

from .envs import ROOT, worker_env


class WorkerFailed(Exception):
    """The worker died or timed out; `kind` is "crash", "timeout", "oom" or "killed"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Worker:
    def __init__(self, python: str, threads: int | None) -> None:
        self.python, self.threads = python, threads
        self.log = tempfile.NamedTemporaryFile("w+", prefix="lstmbench-worker-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen(
            [python, "-m", "harness.worker"], cwd=ROOT, env=worker_env(threads),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            bufsize=1, start_new_session=True)  # its own group: Ctrl-C reaches only us
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def stderr_tail(self, n: int = 3) -> str:
        self.log.flush()
        try:
            with open(self.log.name, errors="replace") as f:
                lines = [ln.rstrip() for ln in f if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request; the answer dict, or WorkerFailed (and the worker is gone)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerFailed("timeout", f"no answer within {timeout:.0f} s; worker killed")
            if self._sel.select(timeout=min(left, 1.0)):
                line = self.proc.stdout.readline()
                if not line:
                    raise self._died()
                return json.loads(line)
            if self.proc.poll() is not None:
                raise self._died()

    def _died(self) -> WorkerFailed:
        code = self.proc.wait()
        tail = self.stderr_tail()
        if "MemoryError" in tail or "out of memory" in tail.lower():
            kind = "oom"
        elif code == -9:  # SIGKILL: the kernel's out-of-memory killer, or someone's kill -9
            kind = "killed"
        else:
            kind = "crash"
        return WorkerFailed(kind, f"worker exited with status {code}" + (f": {tail}" if tail else ""))

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
