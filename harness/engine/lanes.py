"""Lanes: work items run side by side in child processes, `check --jobs` (a backend's cases in
its worker) and the quality matrix (a backend's training run) alike.

`jobs` lanes, threads of this process, pull items from one queue in the order given; the work
of an item happens in child processes each leading its own process group (a worker, a
training run), which the work registers in the lanes' Children while they run. Each finished
item goes to `record` at once, in the lane's thread, so that it is kept (on disk, where the
caller journals it) however the main thread ends. An exception in the main thread (Ctrl-C, or
SIGTERM through harness.engine.signals) closes the queue, sends SIGTERM to every child's group
and SIGKILL to those still there after `grace_s`, waits for the lanes and propagates; a second
Ctrl-C kills the children at once. An item cut short that way is not recorded (its work raises
Stopped, or fails while the lanes stop); one that finished is."""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .signals import on_second_signal
from .workers import killpg

R = TypeVar("R")


class Stopped(Exception):
    """The lanes are stopping: the item's work ends without a result."""


class Children:
    """The lanes' live child processes (each the leader of its own process group; or a task on a
    cluster's node, which has a stop()), so that an interruption can stop every one of them,
    and so that no lane starts one after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []
        self.closed = False

    def add(self, proc: subprocess.Popen) -> bool:
        """Register a started child; False (and the child killed) once the lanes are stopping."""
        with self._lock:
            if not self.closed:
                self._procs.append(proc)
                return True
        _stop(proc, signal.SIGKILL)
        return False

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def close(self) -> None:
        """No new child from now on."""
        with self._lock:
            self.closed = True

    def signal(self, sig: int) -> None:
        """`sig` to every live child's whole group (a child that re-ran itself in its
        backend's interpreter has a grandchild there)."""
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _stop(proc, sig)


def _stop(child: Any, sig: int) -> None:
    """`sig` to a child process's group; a child elsewhere (a cluster's task,
    harness.cluster.tasks.RemoteTask) stops itself as `sig` asks: SIGTERM gracefully, SIGKILL
    at once."""
    stop = getattr(child, "stop", None)
    if stop is not None:
        stop(sig)
    else:
        killpg(child, sig)


@dataclass(frozen=True)
class Slot:
    """Where and beside what an item ran: its lane (1..jobs), its start and end (seconds since
    the lanes started, on `clock`) and every item that ran at any moment of its run (from the
    lanes' own bookkeeping, not from timing)."""
    lane: int
    start_s: float
    end_s: float
    beside: list[str]


def run_lanes(items: list[str], jobs: int, work: Callable[[str, int], R],
              record: Callable[[str, R, Slot], None], failed: Callable[[str, Exception], R], *,
              children: Children, name: str = "lane", clock: Callable[[], float] = time.monotonic,
              grace_s: float = 5.0) -> None:
    """Run work(item, lane) for every item in `jobs` lanes (module docstring); each result goes
    to record(item, result, slot), one at a time; an exception of the work other than Stopped
    becomes the result failed(item, exception), unless the lanes are stopping. An exception of
    `record` (the journal's disk full) stops the lanes and is raised in the main thread."""
    queue = deque(items)
    lock = threading.Lock()  # the queue, the bookkeeping and `record`
    running: dict[str, set[str]] = {}  # item -> every item seen running beside it
    failures: list[BaseException] = []
    t0 = clock()

    def lane(n: int) -> None:
        while True:
            with lock:
                if children.closed or not queue or failures:
                    return
                item = queue.popleft()
                for other in running:
                    running[other].add(item)
                running[item] = set(running)
                start = clock() - t0
            try:
                res = work(item, n)
            except Stopped:
                res = None
            except Exception as e:  # noqa: BLE001 - one item's failure, not the run's
                res = None if children.closed else failed(item, e)
            with lock:
                end = clock() - t0
                beside = running.pop(item)
                if res is None:
                    return  # stopped by the interruption: not a finished item
                try:
                    record(item, res, Slot(n, round(start, 3), round(end, 3), sorted(beside)))
                except BaseException as e:  # noqa: BLE001 - e.g. the journal's disk is full
                    failures.append(e)
                    return

    threads = [threading.Thread(target=lane, args=(n,), name=f"{name} {n}", daemon=True)
               for n in range(1, min(jobs, len(items)) + 1)]
    on_second_signal(lambda: children.signal(signal.SIGKILL))  # a second Ctrl-C: no grace
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)  # short joins: the main thread stays responsive to signals
            if failures:
                raise failures[0]
    except BaseException:
        children.close()
        children.signal(signal.SIGTERM)  # a training child keeps its log and checkpoint, then exits
        deadline = clock() + grace_s
        for t in threads:
            t.join(max(0.0, deadline - clock()))
        if any(t.is_alive() for t in threads):
            children.signal(signal.SIGKILL)
            for t in threads:
                t.join(10.0)
        raise
