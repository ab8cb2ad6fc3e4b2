"""The pytest-benchmark route (`pytest benchmarks/`): which cells to time, chosen like the
harness's `lstmbench run`, and the run's settings recorded in the pytest-benchmark JSON.

    LSTMBENCH_MATRIX     smoke (default) | default | gpu | FILE.toml/.yaml
    LSTMBENCH_BACKENDS   comma list (default: every benchmarkable backend; those whose
                         framework does not import in this interpreter are skipped)
    LSTMBENCH_DEVICE     cpu (default) | gpu
    LSTMBENCH_PRECISION  float32 (default) | tf32 (GPU only)
    LSTMBENCH_THREADS    threads for every framework alike (default: the cores)

Unlike `lstmbench run`, the cells run in this one process, so a crash ends the session and
chainer (its own environment) is skipped; the timing method is harness.engine.bench's all the same.
Backends whose framework must be imported with their own environment variables (keras-jax,
keras-torch: KERAS_BACKEND) are timed in a worker process of their own (test_cells.py), and
cells a backend's registry entry cannot run (no train mode) are skipped with that reason.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

# Pin the BLAS/OpenMP pools before NumPy or a framework is imported, as the harness's
# workers do (harness.envs.interpreters.worker_env); a variable the user set wins.
THREADS = int(os.environ.get("LSTMBENCH_THREADS") or os.cpu_count() or 1)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from impls import registry  # noqa: E402 - after the thread pins above

from harness.engine.bench import Cell  # noqa: E402
from harness.engine.matrix import Matrix, load_matrix  # noqa: E402
from harness.envs.host import machine_info as lstmbench_machine  # noqa: E402

MATRIX_NAME = os.environ.get("LSTMBENCH_MATRIX") or "smoke"
DEVICE = os.environ.get("LSTMBENCH_DEVICE") or "cpu"
PRECISION = os.environ.get("LSTMBENCH_PRECISION") or "float32"


def matrix() -> Matrix:
    return load_matrix(MATRIX_NAME)


def backends() -> list[str]:
    names = os.environ.get("LSTMBENCH_BACKENDS")
    if names:
        out = [n.strip() for n in names.split(",") if n.strip()]
        for n in out:
            registry.get_spec(n)  # an unknown name is an error, not a skip
        return out
    return [b for b, s in registry.BACKENDS.items() if b != "numpy" and DEVICE in s.devices]


def cells() -> list[Cell]:
    m = matrix()
    if os.environ.get("LSTMBENCH_BACKENDS") and m.mode_backends:  # named: every mode, as `run` does
        m = dataclasses.replace(m, mode_backends={})
    return m.cells(backends(), DEVICE, PRECISION)


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Shown by `pytest-benchmark compare` when two runs' machines differ."""
    m = lstmbench_machine()
    machine_info["lstmbench"] = {"slug": m["slug"], "cpu": m["cpu"], "cores": m["cores"],
                                 "gpu": m["gpu"], "threads": THREADS, "device": DEVICE,
                                 "precision": PRECISION, "matrix": MATRIX_NAME}
