"""How much CPU the machine's other processes took while a workload was measured.

A busy process beside a run (a second job on a CI runner, a test suite, a CPU burner) slows
the backends in ways the GEMM probe does not follow: on the project's 2-core VM, with every
worker pinned to CPU 1 and a single-threaded burner free to use CPU 0, five eval cells ran
12-26% slower while the probe's best round moved 6% (docs/measurement.md, "Local
neighbours"). The kernel, unlike the hypervisor, tells who used the CPUs: /proc/stat has
the machine's busy time, /proc/PID/stat each process's. Whatever was busy and is not this
run (the parent and its descendants: workers, their compile subprocesses) is a neighbour's.
Other tenants of the host stay invisible here (they show, if at all, as steal time, which is
not counted as busy); this witness is for the neighbour inside the machine.

Linux only; elsewhere every function returns None and the run records no figure."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Snapshot:
    t: float  # time.monotonic()
    busy: int  # jiffies every CPU spent in user, nice, system, irq and softirq
    ours: dict[int, int]  # pid -> utime+stime+cutime+cstime of root and its descendants


def _busy() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]  # user nice system idle iowait irq softirq
    return v[0] + v[1] + v[2] + v[5] + v[6]


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ... (comm may hold spaces)
    return int(rest[1]), sum(int(x) for x in rest[11:15])


def _tree(root: int) -> dict[int, int]:
    """CPU jiffies of `root` and every process descended from it."""
    procs: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                procs[int(name)] = st
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in out:
            out[pid] = procs[pid][1]
            todo.extend(kids.get(pid, []))
    return out


def snapshot(root: int | None = None) -> Snapshot | None:
    """The machine's busy time and this run's (root: this process by default) right now."""
    try:
        return Snapshot(time.monotonic(), _busy(), _tree(root or os.getpid()))
    except (OSError, ValueError, IndexError):
        return None


def foreign_cores(a: Snapshot | None, b: Snapshot | None) -> float | None:
    """Cores kept busy, on average between snapshots a and b, by processes not of the run.
    A process of the run that ended between them is counted with the neighbours (its time
    is lost with it unless its parent reaped it), so the figure errs towards "busy"."""
    if a is None or b is None or b.t - a.t <= 0:
        return None
    ours = sum(v - a.ours.get(pid, 0) for pid, v in b.ours.items())
    return max(0.0, (b.busy - a.busy - ours) / _TICK / (b.t - a.t))
