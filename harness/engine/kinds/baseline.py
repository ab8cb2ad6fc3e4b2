"""The `baseline` kind: a hand-written step (benchmarks/baselines/<name>_baseline.py) in its host
backend's worker (`lstmbench baselines`): its request names the file and the host backend."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ..bench import Cell, HostSync, Prepared, backend_info, reset_peak_rss
from ..participants import Built, Kind
from .backend import cell_fields


_baselines: dict[str, ModuleType] = {}  # resolved path -> module, imported once per process


def load_baseline(path: str) -> ModuleType:
    """Import a baseline script by its path (it is no package's module)."""
    p = str(Path(path).resolve())
    if p not in _baselines:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no baseline file at {p}")
        name = "lstmbench_baseline_" + re.sub(r"\W", "_", Path(p).stem)
        spec = importlib.util.spec_from_file_location(name, p)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {p}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _baselines[p] = mod
    return _baselines[p]


def _build_baseline(req: dict[str, Any]) -> Built:
    """The worker is first set up exactly as `backend`'s worker is (its module's configure():
    thread pools, library flags), then the file's make_step (train), make_eval (eval) or
    make_generate (generate: seq_len characters at batch 1) is built for the cell's sizes,
    batch, seq_len, optimiser and seed. One step is `float(step())`, so the loss is waited for
    inside the timed step."""
    cell = Cell.from_dict(req["cell"])
    factory = {"train": "make_step", "eval": "make_eval", "generate": "make_generate"}.get(cell.mode)
    if factory is None:
        raise ValueError(f"a baseline has train, eval and generate steps, not {cell.mode!r}")
    info = backend_info(req["backend"], req.get("threads"), cell.device)
    reset_peak_rss()
    mod = load_baseline(req["file"])
    make = getattr(mod, factory, None)
    if not callable(make):
        raise AttributeError(f"{req['file']} has no {factory}")
    fn = make(cell.model, cell.batch, cell.seq_len, train=cell.train, seed=cell.seed)
    prep = Prepared(HostSync(), lambda: float(fn()), check=lambda x: x is not None and math.isfinite(x))
    return Built(prep, {"kernel": info.get("kernel")}, warmup=req.get("warmup", 0.2))


KIND = Kind("baseline", "baseline", cell_fields, _build_baseline)
