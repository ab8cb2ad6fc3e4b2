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

The run's own processes come and go between two readings (a failed worker is replaced, a
compile subprocess ends): one that ended was reaped by its parent, whose cutime/cstime then
holds its whole life's CPU time, the part before the first reading included; that part is
taken out again (foreign_cores). The counters move in clock ticks (10 ms), per CPU and per
process, so an interval too short for them to tell a tenth of a core gives no figure (a
workload whose every cell failed at once read "7.26 cores busy" on 2 cores before), and no
figure exceeds the machine's cores.

Linux only; elsewhere every function returns None and the run records no figure."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
RESOLUTION = 0.1  # cores: the most a figure may be off by tick rounding (stats.FOREIGN_LIMIT is 0.25)


@dataclass(frozen=True)
class Snapshot:
    t: float  # time.monotonic()
    busy: int  # jiffies every CPU spent in user, nice, system, irq and softirq
    ours: dict[int, int]  # pid -> utime+stime+cutime+cstime of root and its descendants
    parents: dict[int, int] = field(default_factory=dict)  # pid -> parent pid, of the same processes


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


def _tree(root: int) -> dict[int, tuple[int, int]]:
    """(parent pid, CPU jiffies) of `root` and every process descended from it."""
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
            out[pid] = procs[pid]
            todo.extend(kids.get(pid, []))
    return out


def snapshot(root: int | None = None) -> Snapshot | None:
    """The machine's busy time and this run's (root: this process by default) right now."""
    try:
        t, busy, tree = time.monotonic(), _busy(), _tree(root or os.getpid())
    except (OSError, ValueError, IndexError):
        return None
    return Snapshot(t, busy, {pid: v for pid, (_, v) in tree.items()},
                    {pid: ppid for pid, (ppid, _) in tree.items()})


def shortest_interval(processes: int, cores: int | None = None) -> float:
    """Seconds two snapshots must lie apart for a figure: the machine's busy time moves in
    ticks per CPU, and each process's time in ticks per field (utime and stime at least),
    so the figure can be off by (cores + 2 x processes) ticks; over this interval that is at
    most RESOLUTION cores."""
    return ((cores or os.cpu_count() or 1) + 2 * processes) / _TICK / RESOLUTION


def foreign_cores(a: Snapshot | None, b: Snapshot | None) -> float | None:
    """Cores kept busy, on average between snapshots a and b, by processes not of the run,
    from 0 to the machine's cores; None when the interval is too short to tell
    (shortest_interval). A process of the run that ended between them and was reaped by a
    parent still there moved its whole time into that parent's cutime/cstime: its time
    before `a` is taken out again. One whose parent ended too (a worker killed with its
    group: the kernel's init reaps the rest) took its time since `a` with it, which is then
    counted with the neighbours."""
    cores = os.cpu_count() or 1
    if a is None or b is None or b.t - a.t < shortest_interval(len(a.ours.keys() | b.ours.keys()), cores):
        return None
    ours = sum(v - a.ours.get(pid, 0) for pid, v in b.ours.items())
    ours -= sum(v for pid, v in a.ours.items() if pid not in b.ours and a.parents.get(pid) in b.ours)
    return min(float(cores), max(0.0, (b.busy - a.busy - ours) / _TICK / (b.t - a.t)))
