"""Every cell of the chosen matrix as a pytest-benchmark test, timed through
`benchmark.pedantic` so that --benchmark-json, --benchmark-compare, --benchmark-histogram and
`pytest-benchmark compare` work on lstmbench cells. The cell is built with harness.engine.bench.prepare
(as `lstmbench run` does); the first step (tracing, compiling) is timed apart and recorded in
extra_info; each timed call is one step followed by the backend's sync(), so device work is
inside the measurement.

A cell its backend's registry entry says it cannot run (onnxruntime and tensorflow-genloop
have no train mode) is skipped with that reason. A backend that needs its environment set
before its framework is imported (keras-jax, keras-torch: KERAS_BACKEND) is timed in a worker
process of its own, as `lstmbench run` does (harness.engine.worker's "cell" op), and the worker's
rounds are handed to pytest-benchmark through a timer that replays them (WorkerRounds).

    pytest benchmarks/ --benchmark-json out.json
    LSTMBENCH_MATRIX=default LSTMBENCH_BACKENDS=torch,jax pytest benchmarks/
"""
from __future__ import annotations

import math
import time
from typing import Any

import pytest

from impls import registry
from impls.config import flops_per_char

from conftest import DEVICE, MATRIX_NAME, THREADS, cells, matrix
from harness.engine.bench import Cell, calibrate, configure_backend, first_step, prepare

CELLS = cells()
MATRIX = matrix()


def _group(c: Cell) -> str:
    """Backends of one preset, mode and size side by side in pytest-benchmark's tables."""
    return f"{c.preset} {c.mode} B{c.batch} T{c.seq_len}"


class WorkerRounds:
    """pytest-benchmark's timer for a cell timed in a worker process: `step` advances it by the
    next round's seconds per step as the worker measured them (perf_counter there, the backend
    synced after every round), so the fixture's statistics are the worker's own rounds and no
    inter-process message is inside them."""
    __name__ = "worker_rounds"  # what pytest-benchmark records as the timer

    def __init__(self, samples: list[float]) -> None:
        self.samples, self.t, self.i = list(samples), 0.0, 0

    def __call__(self) -> float:
        return self.t

    def step(self) -> None:
        self.t += self.samples[self.i]
        self.i += 1


def _in_worker(benchmark: Any, cell: Cell) -> None:
    """Time `cell` in a worker process with its backend's environment (harness.engine.workers.Worker,
    op "cell": prepare, first step, warm-up, rounds, as harness.engine.bench.measure_cell does) and
    record its rounds in `benchmark`."""
    from harness.envs.interpreters import interpreter_for
    from harness.engine.workers import Worker, WorkerFailed
    if not hasattr(benchmark, "_timer"):  # a pytest-benchmark without the fixture's timer
        pytest.skip(f"backend {cell.backend} must run in a worker process "
                    f"({registry.env_mismatch(cell.backend)}), and this pytest-benchmark offers no "
                    "timer to hand its rounds to; time it with `lstmbench run`")
    try:
        w = Worker(interpreter_for(cell.backend), THREADS, backend=cell.backend)
    except (registry.BackendError, OSError) as e:
        pytest.skip(f"backend {cell.backend} cannot start its worker: {e}".splitlines()[0])
    try:
        ans = w.request({"op": "cell", "cell": cell.to_dict(), "threads": THREADS,
                         "min_time": MATRIX.min_time, "min_rounds": MATRIX.min_rounds,
                         "max_rounds": MATRIX.max_rounds}, timeout=MATRIX.timeout)
    except WorkerFailed as e:
        pytest.fail(f"{cell.label()}: the worker {e.kind}: {e}".splitlines()[0])
    finally:
        w.close()
    if not ans.get("ok"):
        if "unavailable here" in str(ans.get("error")):  # its framework is not installed
            pytest.skip(str(ans.get("error")).splitlines()[0])
        pytest.fail(f"{cell.label()}: {ans.get('error')}".splitlines()[0])
    res, info = ans["result"], ans.get("info") or {}
    assert res["status"] == "ok", f"{cell.label()}: {res.get('error')}"
    rounds = WorkerRounds(res["samples_s"])
    benchmark._timer = rounds
    _describe(benchmark, cell, res["first_step_s"], res["inner"], info.get("version", ""),
              res.get("kernel") or info.get("kernel", ""), sync="after every round of `inner` steps",
              measured_in="a worker process with " + " ".join(
                  f"{k}={v}" for k, v in registry.get_spec(cell.backend).env_vars.items()))
    benchmark.extra_info["worker_rounds_s"] = rounds.samples  # what the statistics replay
    benchmark.pedantic(rounds.step, rounds=len(rounds.samples), iterations=1)
    _throughput(benchmark, cell)


def _describe(benchmark: Any, cell: Cell, first_step_s: float, inner: int, framework: str, kernel: str,
              **extra: str) -> None:
    """The cell's group and extra_info in pytest-benchmark's record, however it was timed."""
    benchmark.group = _group(cell)
    benchmark.extra_info.update({
        "cell": cell.to_dict(), "chars_per_call": cell.chars_per_call(),
        "flops_per_char": flops_per_char(cell.model, cell.mode), "first_step_s": first_step_s,
        "inner": inner, "matrix": MATRIX_NAME, "device": DEVICE, "threads": THREADS,
        "framework": framework, "kernel": kernel, **extra})


def _throughput(benchmark: Any, cell: Cell) -> None:
    """chars/s and GFLOP/s from the timed rounds' median, into extra_info."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:  # None with --benchmark-disable
        med = stats.stats.median
        benchmark.extra_info["chars_per_s"] = cell.chars_per_call() / med
        benchmark.extra_info["gflops"] = flops_per_char(cell.model, cell.mode) * cell.chars_per_call() / med / 1e9


@pytest.mark.parametrize("cell", CELLS, ids=[c.label() for c in CELLS])
def test_cell(benchmark: Any, cell: Cell) -> None:
    why = registry.unsupported(cell.backend, mode=cell.mode, device=cell.device, precision=cell.precision)
    if why:  # the registry says so: not a failure (`lstmbench run` records it as unsupported)
        pytest.skip(why)
    if registry.env_mismatch(cell.backend):  # KERAS_BACKEND=...: its own process, as `run` does
        _in_worker(benchmark, cell)
        return
    ok, why = registry.availability(cell.backend)
    if not ok:
        pytest.skip(f"backend {cell.backend} unavailable in this interpreter: {why}")
    try:
        info = configure_backend(cell.backend, THREADS, cell.device)
    except Exception as e:  # noqa: BLE001 - e.g. no GPU visible: this backend cannot run here
        pytest.skip(f"backend {cell.backend} cannot run on {cell.device}: {e}".splitlines()[0])
    prep = prepare(cell)
    be = prep.backend

    def target() -> Any:
        out = prep.step()
        be.sync()
        return out

    first_out, first = first_step(prep)  # tracing, compiling, autotuning
    assert prep.check(first_out), f"{cell.label()}: non-finite loss on the first step"
    inner = calibrate(prep)  # untimed warm-up that sizes the rounds, as `lstmbench run` does
    t0 = time.perf_counter_ns()
    target()
    est = (time.perf_counter_ns() - t0) / 1e9
    rounds = min(MATRIX.max_rounds, max(MATRIX.min_rounds, math.ceil(MATRIX.min_time / (est * inner))))

    _describe(benchmark, cell, first, inner, info.get("version", ""), info.get("kernel", ""),
              sync="after every step")
    out = benchmark.pedantic(target, rounds=rounds, iterations=inner, warmup_rounds=1)
    assert prep.check(out), f"{cell.label()}: non-finite loss during timing"
    _throughput(benchmark, cell)
