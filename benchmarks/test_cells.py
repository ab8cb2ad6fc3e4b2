"""Every cell of the chosen matrix as a pytest-benchmark test, timed through
`benchmark.pedantic` so that --benchmark-json, --benchmark-compare, --benchmark-histogram and
`pytest-benchmark compare` work on lstmbench cells. The cell is built with harness.bench.prepare
(as `lstmbench run` does); the first step (tracing, compiling) is timed apart and recorded in
extra_info; each timed call is one step followed by the backend's sync(), so device work is
inside the measurement.

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
from harness.bench import Cell, calibrate, first_step, prepare
from harness.worker import configure_backend

CELLS = cells()
MATRIX = matrix()


def _group(c: Cell) -> str:
    """Backends of one preset, mode and size side by side in pytest-benchmark's tables."""
    return f"{c.preset} {c.mode} B{c.batch} T{c.seq_len}"


@pytest.mark.parametrize("cell", CELLS, ids=[c.label() for c in CELLS])
def test_cell(benchmark: Any, cell: Cell) -> None:
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

    benchmark.group = _group(cell)
    benchmark.extra_info.update({
        "cell": cell.to_dict(), "chars_per_call": cell.chars_per_call(),
        "flops_per_char": flops_per_char(cell.model, cell.mode), "first_step_s": first,
        "inner": inner, "matrix": MATRIX_NAME, "device": DEVICE, "threads": THREADS,
        "framework": info.get("version", ""), "kernel": info.get("kernel", ""),
        "sync": "after every step",
    })
    out = benchmark.pedantic(target, rounds=rounds, iterations=inner, warmup_rounds=1)
    assert prep.check(out), f"{cell.label()}: non-finite loss during timing"
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:  # None with --benchmark-disable
        med = stats.stats.median
        benchmark.extra_info["chars_per_s"] = cell.chars_per_call() / med
        benchmark.extra_info["gflops"] = flops_per_char(cell.model, cell.mode) * cell.chars_per_call() / med / 1e9
