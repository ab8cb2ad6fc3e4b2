"""The interleaved scheduler of `lstmbench run` (harness.engine.scheduler.measure_workload) with fake
in-process participants: the order of every round is a fresh permutation of the backends and
the probe; every participant gets the same rounds; process sets are fresh; rounds are
re-measured while a cell lacks clean ones; cells that stay dirty are marked noisy; failures
stay with their cell; ratios come from paired rounds."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from harness.engine import assemble, scheduler
from harness.engine.bench import Cell
from harness.engine.matrix import Matrix, load_matrix
from harness.engine.participants import PROBE, ParticipantFailed
from harness.engine.scheduler import ProbeState, Schedule, measure_workload
from harness.errors import UsageError
from harness.report.console import summary_table
from impls.config import ModelConfig, TrainConfig


class Clock:
    """Shared machine state: a call counter that fake participants may read."""

    def __init__(self) -> None:
        self.calls = 0


class Fake:
    def __init__(self, name: str, clock: Clock, time_of: Callable[[int], float], *,
                 fail_at: int | None = None, finite: bool = True, log: list | None = None) -> None:
        self.name, self.clock, self.time_of = name, clock, time_of
        self.fail_at, self.finite, self.log = fail_at, finite, log if log is not None else []
        self.rounds = 0
        self.prepared = self.released = 0

    def prepare(self) -> dict[str, Any]:
        self.prepared += 1
        return {"status": "ok", "first_step_s": 0.1, "inner": 3}

    def round(self) -> float:
        self.rounds += 1
        self.clock.calls += 1
        self.log.append(self.name)
        if self.fail_at is not None and self.rounds >= self.fail_at:
            raise ParticipantFailed("crash", "worker exited with status -11")
        return self.time_of(self.clock.calls)

    def release(self) -> dict[str, Any]:
        self.released += 1
        return {"finite": self.finite, "peak_rss_bytes": 1}


def _setup(backends: dict[str, Callable[[int], float]], probe_time: Callable[[int], float] | None,
           **fake_kw: Any) -> tuple[Clock, dict[tuple[str, int], Fake], ProbeState, Callable]:
    clock = Clock()
    made: dict[tuple[str, int], Fake] = {}

    def make(b: str, p: int) -> Fake:
        made[(b, p)] = Fake(b, clock, backends[b], **fake_kw.get(b, {}))
        return made[(b, p)]
    probe = ProbeState(Fake(PROBE, clock, probe_time) if probe_time else None)
    return clock, made, probe, make


def _steady(v: float) -> Callable[[int], float]:
    return lambda _: v


def test_rounds_are_random_permutations_and_even():
    _, made, probe, make = _setup({"a": _steady(1e-3), "b": _steady(2e-3), "c": _steady(3e-3)}, _steady(1e-4))
    wd = measure_workload(["a", "b", "c"], make, probe, Schedule(rounds=20, processes=2, min_clean=1),
                          np.random.default_rng(7))
    assert wd.rounds == 40 and wd.remeasured == 0
    by_round: dict[int, list[tuple[int, str]]] = {}
    for r, slot, name in wd.order:
        by_round.setdefault(r, []).append((slot, name))
    perms = []
    for r, entries in sorted(by_round.items()):
        slots = [s for s, _ in entries]
        names = [n for _, n in sorted(entries)]
        assert slots == list(range(4)) and sorted(names) == ["a", "b", "c", "probe"]
        perms.append(tuple(names))
    assert len(set(perms)) > 5  # the order changes from round to round
    assert Counter(p[0] for p in perms).most_common(1)[0][1] < 40  # nobody always goes first
    for b in "abc":  # same number of rounds, in both fresh process sets
        d = wd.backends[b]
        assert len(d.samples) == 40 and d.status == "ok"
        assert Counter(s["process"] for s in d.samples) == {0: 20, 1: 20}
        assert made[(b, 0)] is not made[(b, 1)] and made[(b, 0)].prepared == made[(b, 1)].released == 1
        assert [s["round"] for s in d.samples] == list(range(40))
        slots = {(r, n): s for r, s, n in wd.order}
        assert all(s["slot"] == slots[(s["round"], b)] for s in d.samples)
    assert all(s["probe_s"] == 1e-4 for s in wd.backends["a"].samples)


def test_same_seed_same_order_other_seed_other_order():
    def order(seed: int) -> list:
        _, _, probe, make = _setup({"a": _steady(1e-3), "b": _steady(1e-3)}, _steady(1e-4))
        return measure_workload(["a", "b"], make, probe, Schedule(rounds=15, min_clean=1),
                                np.random.default_rng(seed)).order
    assert order(3) == order(3) and order(3) != order(4)


def test_dirty_rounds_are_remeasured_until_clean():
    # the probe is slow (a busy neighbour) for the first 25 calls, then the machine calms down
    _, _, probe, make = _setup({"a": _steady(1e-3), "b": _steady(2e-3)},
                               lambda k: 1e-4 if k < 3 else (5e-4 if k < 75 else 1e-4))
    sched = Schedule(rounds=10, min_clean=8, extra_rounds=100, extra_time=60)
    wd = measure_workload(["a", "b"], make, probe, sched, np.random.default_rng(0))
    assert wd.remeasured > 0 and wd.rounds == 10 + wd.remeasured
    for b in "ab":
        res = assemble.cell_result(_cell(b), wd.backends[b], sched)
        assert res["clean_rounds"] >= 8 and not res["noisy"]
        assert res["clean_rounds"] < len(res["samples"])  # the dirty rounds are kept, marked
        assert all(s["clean"] == (s["probe_s"] <= 1.5e-4) for s in res["samples"])


def test_rounds_that_stay_dirty_make_the_cell_noisy():
    # one quick probe round, then 3x slower for ever: the budget runs out, the cell is noisy
    _, _, probe, make = _setup({"a": _steady(1e-3), "b": _steady(2e-3)},
                               lambda k: 1e-4 if k == 1 else 3e-4)
    sched = Schedule(rounds=10, min_clean=8, extra_rounds=15, extra_time=60)
    wd = measure_workload(["a", "b"], make, probe, sched, np.random.default_rng(0))
    assert wd.remeasured == 15 and wd.rounds == 25
    results = {b: assemble.cell_result(_cell(b), wd.backends[b], sched) for b in "ab"}
    assert all(r["status"] == "ok" and r["noisy"] for r in results.values())
    doc = {"cells": [{"cell": _cell(b).to_dict(), "workload": "w", "result": r} for b, r in results.items()],
           "workloads": [{"id": "w", "ratios": assemble.workload_ratios(results)}],
           "estimator": {"name": "q25"}}
    text = summary_table(doc)
    assert text.count("NOISY") == 2 and "*" in text


def test_quiet_run_is_not_remeasured():
    _, _, probe, make = _setup({"a": _steady(1e-3)}, _steady(1e-4))
    wd = measure_workload(["a"], make, probe, Schedule(rounds=12, min_clean=10), np.random.default_rng(0))
    assert wd.rounds == 12 and wd.remeasured == 0


def test_failures_stay_with_their_cell():
    _, made, probe, make = _setup({"a": _steady(1e-3), "b": _steady(2e-3), "c": _steady(1e-3)},
                                  _steady(1e-4), b={"fail_at": 4}, c={"finite": False})
    wd = measure_workload(["a", "b", "c"], make, probe, Schedule(rounds=10, processes=2, min_clean=1),
                          np.random.default_rng(0))
    assert wd.backends["a"].status == "ok" and len(wd.backends["a"].samples) == 20
    assert wd.backends["b"].status == "crash" and len(wd.backends["b"].samples) == 3
    assert ("b", 1) not in made  # a failed cell is not retried in the next process set
    assert wd.backends["c"].status == "nan"


def test_collapse_rounds_are_not_clean():
    _, _, probe, make = _setup({"a": lambda k: 1.0 if k % 7 else 1000.0}, _steady(1e-4))
    wd = measure_workload(["a"], make, probe, Schedule(rounds=30, min_clean=1), np.random.default_rng(0))
    s = wd.backends["a"].samples
    assert any(x.get("collapse") for x in s)
    assert all(x["clean"] == (x["s"] < 10) for x in s)


def test_ratios_come_from_paired_rounds():
    # the machine alternates between fast and 3x slower; b is always 2x a in the same round
    clock_state = {"slow": 1.0}

    def a(k: int) -> float:
        clock_state["slow"] = 3.0 if (k // 3) % 2 else 1.0
        return 1e-3 * clock_state["slow"]
    _, _, probe, make = _setup({"a": a, "b": lambda k: 2e-3 * clock_state["slow"]}, None)
    sched = Schedule(rounds=40, min_clean=5)
    wd = measure_workload(["a", "b"], make, probe, sched, np.random.default_rng(0))
    results = {b: assemble.cell_result(_cell(b), wd.backends[b], sched) for b in "ab"}
    r = assemble.workload_ratios(results)
    assert r["a"]["ratio"] == 1.0 and r["b"]["to"] == "a"
    assert r["b"]["lo"] <= 2.0 <= r["b"]["hi"] and r["b"]["pairs"] == 40


def test_group_workloads_keeps_every_backend_of_a_workload_together():
    cells = load_matrix("smoke").cells(["numpy-f32", "torch"], "cpu", "float32")
    ws = assemble.group_workloads(cells)
    assert len(ws) == 3 and all([c.backend for c in cs] == ["numpy-f32", "torch"] for _, cs in ws)


def _cell(b: str) -> Cell:
    return Cell(b, "train", "x", ModelConfig(10, 8), TrainConfig(), 2, 5)


@pytest.mark.parametrize("text, message", [
    ('name = "../../x"\n', "not allowed"),
    ('rounds = 0\n', "rounds = 0 is invalid"),
    ('max_rounds = 0\n', "max_rounds = 0 is invalid"),
    ('timeout = "soon"\n', "timeout = 'soon' is invalid"),
    ('timeout = -1\n', "timeout = -1 is invalid"),
    ('min_time = nan\n', "min_time = nan is invalid"),
    ('colour = 1\n', "unknown key(s) colour"),
    ('threads = 0\n', "threads = 0 is invalid"),
    ('threads = "all"\n', "threads = 'all' is invalid"),
    ('round_time = 0\n', "round_time = 0 is invalid"),
    ('[mode_backends]\nfly = ["jax"]\n', "unknown mode(s) fly"),
    ('[mode_backends]\ntrain = ["nope"]\n', "unknown backend(s) nope"),
    ('[mode_backends]\ntrain = "jax"\n', "give a list of backend names"),
])
def test_matrix_file_validation(tmp_path, text, message):
    p = tmp_path / "m.toml"
    p.write_text(text + '[[group]]\nvocab_size = 10\nhidden_size = 8\n')
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_matrix(str(p))


@pytest.mark.parametrize("group, message", [
    ('vocab_size = 10\nhidden_size = 8\nbatch = [0]', "batch"),
    ('vocab_size = 10\nhidden_size = 8\nmodes = ["fly"]', "modes"),
    ('vocab_size = 10\nhidden_size = 8\nseq_len = 0', "seq_len"),
    ('vocab_size = 10\nhidden_size = 8\nbogus = 1', "unknown key"),
    ('hidden_size = 8', "needs a preset"),
])
def test_matrix_group_validation(tmp_path, group, message):
    p = tmp_path / "m.toml"
    p.write_text('[[group]]\n' + group + '\n')
    with pytest.raises(UsageError, match=message):
        load_matrix(str(p))


def test_default_measures_each_frameworks_fastest_backend_per_mode(tmp_path):
    """`default` runs one backend per framework in each mode, the one measured fastest there
    (torch-genloop generates, torch trains); backends named on the command line run in every
    mode; a matrix file may name a mode's backends too."""
    from harness.commands.run import run_settings
    from harness.cli import build_parser
    from impls import registry
    m = load_matrix("default")
    want = {"train": ["numpy-f32", "torch", "tensorflow", "jax", "chainer"],
            "eval": ["numpy-f32", "torch", "tensorflow-xla", "jax", "chainer"],
            "generate": ["numpy-f32", "torch-genloop", "tensorflow-genloop", "jax", "chainer"]}
    by_mode: dict[str, list[str]] = {}
    for c in m.cells(list(m.default_backends), "cpu", "float32"):
        by_mode.setdefault(c.mode, [])
        if c.backend not in by_mode[c.mode]:
            by_mode[c.mode].append(c.backend)
    assert {k: sorted(v) for k, v in by_mode.items()} == {k: sorted(v) for k, v in want.items()}
    for mode, names in want.items():  # one per framework, as the registry names them
        fws = [registry.get_spec(b).framework for b in names]
        assert fws == ["numpy", "torch", "tensorflow", "jax", "chainer"] and len(set(fws)) == 5, mode
    parser = build_parser()
    opts = run_settings(parser.parse_args(["run", "--backends", "torch,jax"]), default_matrix="default")
    cells = opts.matrix.cells(list(opts.backends), "cpu", "float32")
    assert {(c.mode, c.backend) for c in cells} == {(md, b) for md in want for b in ("torch", "jax")}
    opts = run_settings(parser.parse_args(["run"]), default_matrix="default")
    assert opts.matrix.mode_backends == m.mode_backends
    p = tmp_path / "m.toml"
    p.write_text('[mode_backends]\ngenerate = ["jax"]\n[[group]]\nvocab_size = 10\nhidden_size = 8\n')
    f = load_matrix(str(p))
    assert Matrix.from_dict(f.to_dict()) == f
    assert {(c.mode, c.backend) for c in f.cells(["torch", "jax"], "cpu", "float32") if c.mode == "generate"} \
        == {("generate", "jax")}


def test_matrix_round_trip_and_file_name(tmp_path):
    m = load_matrix("default")
    assert Matrix.from_dict(m.to_dict()) == m
    smoke = load_matrix("smoke")
    assert smoke.threads == 1 and m.threads is None  # smoke: one pinned thread; default: the cores
    assert Matrix.from_dict(smoke.to_dict()) == smoke
    p = tmp_path / "my matrix!.toml"
    p.write_text('[[group]]\nvocab_size = 10\nhidden_size = 8\n')
    assert load_matrix(str(p)).name == "my-matrix"


def test_time_budget_cuts_base_rounds_short(monkeypatch):
    # a fake clock: every timed round takes one "second"; budget 10 s for 100 rounds
    now = [0.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: now[0])

    def slow(_: int) -> float:
        now[0] += 1.0
        return 1.0
    _, _, probe, make = _setup({"a": slow, "b": slow}, slow)
    sched = Schedule(rounds=100, min_clean=1, max_time=10.0, min_rounds=3)
    wd = measure_workload(["a", "b"], make, probe, sched, np.random.default_rng(0))
    assert wd.short and wd.rounds == 4  # 3 participants x 1 s: over 10 s after the 4th round
    assert all(len(wd.backends[b].samples) == 4 for b in "ab")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread states come from Linux's /proc")
def test_settle_waits_for_a_spinning_worker_and_not_for_an_idle_one():
    """After a round, a library's threads may spin on (OpenBLAS for ~0.1 s); the next
    participant must not start until they stop, and an idle worker must cost nothing."""
    import subprocess
    import sys
    import time
    from harness.envs.host import settle
    spin = ("import sys, time\nprint('go', flush=True)\nt = time.perf_counter()\n"
            "while time.perf_counter() - t < 0.25: pass\ntime.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "go"
        t0 = time.perf_counter()
        waited = settle(p.pid, cap=2.0)
        assert 0.15 <= waited <= 1.0 and time.perf_counter() - t0 >= 0.15
        assert settle(p.pid, cap=2.0) < 0.05  # now asleep: back at once
    finally:
        p.kill()
        p.wait()
    assert settle(p.pid) == 0.0 and settle(None) == 0.0  # gone, or no process: no wait


def test_workers_are_pinned_to_the_last_cpus_when_they_use_fewer():
    """harness.envs.host.worker_cpus: the last `threads` CPUs, none when the threads fill the
    machine; a Worker started with them has exactly that mask (every thread inherits it)."""
    import os
    import sys
    from harness.envs.host import worker_cpus
    from harness.engine.workers import Worker
    assert worker_cpus(1, [0, 1]) == [1]
    assert worker_cpus(2, [0, 1, 2, 3]) == [2, 3]
    assert worker_cpus(2, [0, 1]) is None and worker_cpus(4, [0, 1]) is None
    assert worker_cpus(None, [0, 1]) is None
    cpus = sorted(os.sched_getaffinity(0))[-1:]
    w = Worker(sys.executable, 1, cpus=cpus)
    try:
        # the worker pins itself first thing (harness.envs.interpreters._BOOT): once it answers, it has
        assert w.request({"op": "info", "backends": [], "threads": 1, "device": "cpu"}, 120)["ok"]
        assert os.sched_getaffinity(w.proc.pid) == set(cpus)
    finally:
        w.close()


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    from harness.engine import cpuload
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / cpuload._TICK


BURN = "import time\nt = time.process_time() + {s}\nwhile time.process_time() < t: pass"


def test_foreign_cpu_load_counts_other_processes_only():
    """harness.engine.cpuload: a busy process outside the run's tree counts as a neighbour, the same
    process inside it does not. Both readings span the same interval, and the figures are held
    to the hog's own CPU time in it: whatever else keeps the machine busy (a CI runner's other
    jobs) is in both alike and changes nothing."""
    import subprocess
    import sys
    import time
    from harness.engine import cpuload
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the "run"
    hog = subprocess.Popen([sys.executable, "-c", BURN.format(s=60)])  # ours, not a descendant of root
    try:
        t0 = time.monotonic()
        while _cpu_s(hog.pid) < 0.1 and time.monotonic() - t0 < 30:  # it burns by now
            time.sleep(0.05)
        a_out, a_in = cpuload.snapshot(root.pid), cpuload.snapshot()
        hog0 = _cpu_s(hog.pid)
        while time.monotonic() - a_in.t < 2 * cpuload.shortest_interval(4) or _cpu_s(hog.pid) - hog0 < 0.3:
            time.sleep(0.1)  # long enough for the tick counters, and the hog had its share
        b_out, b_in = cpuload.snapshot(root.pid), cpuload.snapshot()
        assert hog.pid in a_in.ours and hog.pid not in a_out.ours
        dt = b_in.t - a_in.t
        hog_cores = (b_in.ours[hog.pid] - a_in.ours[hog.pid]) / cpuload._TICK / dt
        mine = (b_in.ours[os.getpid()] - a_in.ours[os.getpid()]) / cpuload._TICK / dt
        outside, inside = cpuload.foreign_cores(a_out, b_out), cpuload.foreign_cores(a_in, b_in)
        assert outside >= hog_cores - 0.15, (outside, hog_cores)  # the hog is a neighbour's load
        assert outside - inside == pytest.approx(hog_cores + mine, abs=0.15), (outside, inside, hog_cores, mine)
    finally:
        for p in (hog, root):
            p.kill()
            p.wait()


def test_foreign_cpu_load_leaves_out_the_runs_own_workers_and_never_exceeds_the_cores():
    """harness.engine.cpuload: the run's workers that start and end between two readings, and one
    that worked before the first and ends before the second, are the run's own load: the
    figure is the machine's busy time less this process's and its children's in the interval
    (held against os.times, which the kernel keeps apart from /proc/stat), never more than the
    cores; an interval too short for the tick counters gives no figure (such intervals read
    up to 13 cores on this 2-core machine before)."""
    import subprocess
    import sys
    import time
    from harness.engine import cpuload
    cores = os.cpu_count() or 1
    burn = [sys.executable, "-c", BURN.format(s=0.05)]
    for _ in range(15):  # short intervals, a worker started and ended in each
        a = cpuload.snapshot()
        subprocess.run(burn, check=True)
        f = cpuload.foreign_cores(a, cpuload.snapshot())
        assert f is None or 0 <= f <= cores, f
    # a neighbour (orphaned at once: outside this process's tree), so that the figure is
    # above zero wherever the machine is otherwise idle
    script = Path(tempfile.mkdtemp()) / "hog.py"
    script.write_text(BURN.format(s=60))
    hog = int(subprocess.run(["sh", "-c", f"{sys.executable} {script} >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout)
    # an old worker that has worked before the interval, and ends in it
    old = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0) + "\nimport sys\nsys.stdin.read()"],
                           stdin=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while _cpu_s(old.pid) < 0.95 and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        me0, a = os.times(), cpuload.snapshot()
        assert hog not in a.ours and old.pid in a.ours
        f, expected, pre_cores = _with_an_old_worker(a, me0, old)
    finally:
        old.kill()
        old.wait()
        os.kill(hog, signal.SIGKILL)
        shutil.rmtree(script.parent)
    assert 0 <= f <= cores
    assert f == pytest.approx(min(cores, max(0.0, expected)), abs=0.15), (f, expected, pre_cores)


def test_foreign_cpu_load_figures_are_within_what_the_counters_can_tell():
    """harness.engine.cpuload on made-up readings: an interval shorter than the tick counters can
    resolve gives no figure (2 ticks in 2 ms read as 10 cores before); a figure is clamped to
    the machine's cores; a worker reaped by the run between the readings counts only its time
    after the first."""
    from harness.engine.cpuload import Snapshot, _TICK, foreign_cores, shortest_interval
    cores = os.cpu_count() or 1
    a = Snapshot(100.0, 0, {1: 0}, {1: 0})
    assert foreign_cores(a, Snapshot(100.002, 2, {1: 0}, {1: 0})) is None
    long = shortest_interval(1, cores)
    assert foreign_cores(a, Snapshot(100 + long, int(10 * cores * long * _TICK), {1: 0}, {1: 0})) == cores
    # pid 2, a worker of pid 1 with 50 s behind it, ends (pid 1 reaps it: +50 s + its 1 s here);
    # pid 1 works 1 s itself, a neighbour 3 s: 5 s busy in 10 s, 0.3 of a core foreign
    a = Snapshot(0.0, 0, {1: 0, 2: 50 * _TICK}, {1: 0, 2: 1})
    b = Snapshot(10.0, 5 * _TICK, {1: 52 * _TICK}, {1: 0})
    assert foreign_cores(a, b) == pytest.approx(0.3)


def _with_an_old_worker(a: Any, me0: Any, old: Any) -> tuple[float, float, float]:
    """Short-lived workers in the interval after `a`, `old` ending in it: (the figure, what
    os.times says it must be, the old worker's time before `a` in cores over the interval)."""
    import subprocess
    import sys
    import time
    from harness.engine import cpuload
    burn = [sys.executable, "-c", BURN.format(s=0.05)]
    pre = a.ours[old.pid] / cpuload._TICK  # its CPU time before the interval
    for _ in range(3):  # short-lived workers of the run
        subprocess.run(burn, check=True)
    old.stdin.close()
    old.wait()
    while time.monotonic() - a.t < 2 * cpuload.shortest_interval(3):
        time.sleep(0.05)
    b, me1 = cpuload.snapshot(), os.times()
    dt = b.t - a.t
    ours = (me1.user + me1.system - me0.user - me0.system  # this process (the harness)
            + me1.children_user + me1.children_system - me0.children_user - me0.children_system - pre)
    return cpuload.foreign_cores(a, b), (b.busy - a.busy) / cpuload._TICK / dt - ours / dt, pre / dt


def test_idle_workers_of_other_sets_make_room_when_memory_is_short(monkeypatch):
    """Workers stay alive across workloads, but a worker about to start while memory is short
    first closes idle workers of other process sets, least recently used first; never the
    probe, never one of its own set."""
    from harness.engine import workers
    started: list[tuple[str, int]] = []

    class Fake:
        def __init__(self, name):
            self.name, self.closed = name, False
            self.proc = type("P", (), {"pid": 1})()

        def kill(self):
            pass

        def close(self):
            self.closed = True

    launch = lambda name: type("L", (), {"start": lambda self: Fake(name), "threads": 1})()  # noqa: E731
    avail = {"bytes": 10 << 30}
    monkeypatch.setattr(workers, "mem_available", lambda: avail["bytes"])
    w = workers.Workers(launch, reserve=4 << 30)
    for key in [("probe", 0), ("a", 0), ("b", 0), ("a", 1)]:
        w.get(*key)
        started.append(key)
    assert set(w.live) == set(started)  # plenty of memory: nothing closed
    w.get("a", 0)  # used again: now b@0 is the least recently used idle worker of set 0
    avail["bytes"] = 1 << 30  # short: closing one worker does not help here (the figure is fixed)
    w.get("b", 1)
    assert set(w.live) == {("probe", 0), ("a", 1), ("b", 1)}  # set 0's idle workers went, not the probe
    avail["bytes"] = 10 << 30
    w.get("c", 1)
    assert ("c", 1) in w.live and len(w.live) == 4
