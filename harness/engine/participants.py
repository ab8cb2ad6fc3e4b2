"""Participants: what the interleaved scheduler (harness.engine.scheduler) times, round by round.

A participant is prepared once, then timed in rounds, then released (the Participant
protocol). Each lives in a worker process of its own (harness.engine.workers.WorkerParticipant
sends the requests); what tells the kinds apart is how the worker prepares one:

- `backend`: a backend's cell; a backend in a variant (BACKEND@VARIANT) is this kind too, its
  worker started with the variant's interpreter, source tree and environment;
- `probe`: the noise probe, a fixed float32 GEMM through NumPy's BLAS with the backends' thread
  settings, so that it suffers what they suffer;
- `baseline`: a hand-written step (benchmarks/baselines/) in its host backend's worker.

A Kind has two halves: `fields`, the request the harness sends (run here), and `build`, the
prepared step the worker makes of it (run in the worker's interpreter, which may be chainer's
NumPy < 2 environment: this module imports the standard library, NumPy and impls only). A new
kind is one Kind and its entry in KINDS: the worker answers every kind's op
(harness.engine.worker), and WorkerParticipant(..., kind=KINDS[name]) drives it."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Protocol

from .bench import (Cell, HostSync, Prepared, backend_info, blas_name, gemm_prepared, gpu_peak,
                    prepare, reset_peak_rss)

PROBE = "probe"  # the noise probe's participant name (in a workload's `order`)
PROBE_N = 256  # the probe GEMM's size: ~1 ms per multiply on a laptop core, many per round
ROUND_TIME = 0.03  # target seconds per timed round (20-50 ms)


class ParticipantFailed(Exception):
    """A participant could not prepare or time a round; `kind` is a results status."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Participant(Protocol):
    """One thing timed in the rotation: a backend's prepared cell, a baseline, the noise probe."""
    name: str

    def prepare(self) -> dict[str, Any]: ...  # {"status": "ok"|"nan", "first_step_s", "inner", ...}

    def round(self) -> float: ...  # seconds per step of one timed round

    def release(self) -> dict[str, Any]: ...  # {"finite": bool, "peak_rss_bytes", ...}


@dataclass
class Built:
    """What a kind's build gives the worker: the prepared step, the answer's own fields, the
    cell whose device memory the release reports (None: no such cell), whether the first step
    is timed apart (and must be finite), and the warm-up before a round is sized."""
    prep: Prepared
    info: dict[str, Any]
    cell: Cell | None = None
    first_step: bool = True
    warmup: float = 0.2


@dataclass(frozen=True)
class Kind:
    """One way of preparing a participant in its worker (module docstring)."""
    name: str
    op: str  # the worker request that prepares it
    fields: Callable[[Cell | None, int | None, dict[str, Any]], dict[str, Any]]  # harness side
    build: Callable[[dict[str, Any]], Built]  # worker side


# ---- backend: a backend's cell --------------------------------------------------------------

def _cell_fields(cell: Cell | None, threads: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    assert cell is not None, "a cell's participant needs its cell"
    return {**extra, "cell": cell.to_dict(), "threads": threads}


def _build_cell(req: dict[str, Any]) -> Built:
    cell = Cell.from_dict(req["cell"])
    info = backend_info(cell.backend, req.get("threads"), cell.device)
    reset_peak_rss()
    if cell.device == "gpu":
        gpu_peak(cell.backend, reset=True)
    return Built(prepare(cell), {"kernel": info.get("kernel")}, cell, warmup=req.get("warmup", 0.2))


# ---- probe: the noise probe's GEMM ------------------------------------------------------------

def _probe_fields(cell: Cell | None, threads: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "n": PROBE_N}


def _build_probe(req: dict[str, Any]) -> Built:
    n = int(req.get("n", 256))
    return Built(gemm_prepared(n), {"n": n, "flop": 2 * n ** 3, "blas": blas_name()},
                 first_step=False, warmup=0.1)


# ---- baseline: a hand-written step in its host backend's worker -------------------------------

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


# The kinds, by name. "prepare", the backend kind's op, is the name older workers know it by.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("backend", "prepare", _cell_fields, _build_cell),
    Kind("probe", "probe", _probe_fields, _build_probe),
    Kind("baseline", "baseline", _cell_fields, _build_baseline),
)}
