"""The `probe` kind: the noise probe, a fixed float32 GEMM through NumPy's BLAS with the backends'
thread settings, so that it suffers what they suffer (harness.engine.scheduler: one more
participant in every round)."""
from __future__ import annotations

from typing import Any

from ..bench import Cell, blas_name, gemm_prepared
from ..participants import PROBE_N, Built, Kind


def _probe_fields(cell: Cell | None, threads: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "n": PROBE_N}


def _build_probe(req: dict[str, Any]) -> Built:
    n = int(req.get("n", 256))
    return Built(gemm_prepared(n), {"n": n, "flop": 2 * n ** 3, "blas": blas_name()},
                 first_step=False, warmup=0.1)


KIND = Kind("probe", "probe", _probe_fields, _build_probe)
