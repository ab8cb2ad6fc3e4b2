"""The `backend` kind: a backend's cell, prepared by the backend's module in its worker; a backend
in a variant (BACKEND@VARIANT) is this kind too, its worker started with the variant's
interpreter, source tree and environment. "prepare", its op, is the name older workers know it by."""
from __future__ import annotations

from typing import Any

from ..bench import Cell, backend_info, gpu_peak, prepare, reset_peak_rss
from ..participants import Built, Kind


def cell_fields(cell: Cell | None, threads: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    assert cell is not None, "a cell's participant needs its cell"
    return {**extra, "cell": cell.to_dict(), "threads": threads}


def _build_cell(req: dict[str, Any]) -> Built:
    cell = Cell.from_dict(req["cell"])
    info = backend_info(cell.backend, req.get("threads"), cell.device)
    reset_peak_rss()
    if cell.device == "gpu":
        gpu_peak(cell.backend, reset=True)
    return Built(prepare(cell), {"kernel": info.get("kernel")}, cell, warmup=req.get("warmup", 0.2))


KIND = Kind("backend", "prepare", cell_fields, _build_cell)
