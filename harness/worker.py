"""A worker process: runs inside one backend's environment and answers requests from the
harness, one JSON object per line. Requests arrive on stdin; answers go to the file
descriptor the process started with as stdout, while sys.stdout is pointed at stderr so
that nothing a framework prints can corrupt the protocol.

    {"op": "info", "backends": [...], "threads": N, "device": "cpu"}
    {"op": "case", "backend": B, "case": PATH, "out": PATH}
    {"op": "cell", "cell": {...harness.bench.Cell fields...}}
    {"op": "peak", "device": "cpu", "backend": B}

Only NumPy, the standard library and the backend's framework are imported here, so the same
file runs in the main environment and in chainer's NumPy < 2 one.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from impls import registry

_configured: dict[str, dict[str, str]] = {}  # module -> configure() info, once per process


def configure_backend(name: str, threads: int | None, device: str) -> dict[str, str]:
    """Import the backend's module and call its configure() once per process."""
    spec = registry.get_spec(name)
    if spec.module not in _configured:
        mod = registry.load_module(spec)
        _configured[spec.module] = dict(mod.configure(threads, device))
    return _configured[spec.module]


def backend_info(name: str, threads: int | None, device: str) -> dict[str, str]:
    """configure()'s facts for one backend; a variant's own kernel path, where the module
    reports one as kernel_<variant> (e.g. kernel_xla for tensorflow-xla), replaces the default."""
    info = dict(configure_backend(name, threads, device))
    variant = name.partition("-")[2]
    if variant and f"kernel_{variant}" in info:
        info["kernel"] = info[f"kernel_{variant}"]
    return {k: v for k, v in info.items() if not k.startswith("kernel_")}


def op_info(req: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    out: dict[str, Any] = {}
    for name in req["backends"]:
        try:
            info = backend_info(name, req.get("threads"), req.get("device", "cpu"))
            out[name] = {"available": True, **info}
        except Exception as e:  # noqa: BLE001 - any failure makes just this backend unavailable
            out[name] = {"available": False, "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {"backends": out, "python": sys.version.split()[0], "executable": sys.executable,
            "numpy": np.__version__}


def op_case(req: dict[str, Any]) -> dict[str, Any]:
    from impls.case import load_case, run_case, save_outputs
    name = req["backend"]
    spec = registry.get_spec(name)
    info = configure_backend(name, req.get("threads"), req.get("device", "cpu"))
    case = load_case(req["case"])
    t0 = time.perf_counter()
    kw = {"precision": req["precision"]} if req.get("precision", "float32") != "float32" else {}
    be = registry.create(name, case.spec.model, case.spec.train, case.params,
                         device=req.get("device", "cpu"), dtype=req.get("dtype"), **kw)
    outputs = run_case(case, be)
    dtype = req.get("dtype") or spec.dtype
    precision = req.get("precision") if dtype == "float32" and req.get("precision") else dtype
    save_outputs(outputs, {"backend": name, "dtype": dtype, "precision": precision,
                           "device": req.get("device", "cpu"), "version": info.get("version", ""),
                           "case": str(Path(req["case"]).resolve()),
                           "optimizer": case.spec.train.optimizer.name},
                 req["out"])
    return {"seconds": time.perf_counter() - t0}


def op_cell(req: dict[str, Any]) -> dict[str, Any]:
    from harness.bench import Cell, measure_cell
    cell = Cell.from_dict(req["cell"])
    info = backend_info(cell.backend, req.get("threads"), cell.device)
    return {"result": measure_cell(cell, min_time=req.get("min_time", 1.0),
                                   min_rounds=req.get("min_rounds", 5),
                                   max_rounds=req.get("max_rounds", 30)), "info": info}


def op_peak(req: dict[str, Any]) -> dict[str, Any]:
    from harness.bench import matmul_peak
    return {"gflops": matmul_peak(req.get("device", "cpu"), req.get("backend", "numpy"))}


OPS = {"info": op_info, "case": op_case, "cell": op_cell, "peak": op_peak}


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed from here on goes to stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        try:
            ans = {"ok": True, **OPS[req["op"]](req)}
        except Exception as e:  # noqa: BLE001 - reported to the harness, which records it
            ans = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0],
                   "traceback": traceback.format_exc()}
        proto.write(json.dumps(ans) + "\n")


if __name__ == "__main__":
    main()
