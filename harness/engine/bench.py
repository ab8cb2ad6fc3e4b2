"""One benchmark cell: what it is (`Cell`), the backend set up in this process for it
(configure_backend), and how it is timed (`measure_cell`, and the rounds of the interleaved
engine). Shared by the harness's worker processes and the pytest-benchmark route
(benchmarks/), so the timing method is written once.

Method: the first step (tracing, compiling, autotuning) is timed apart; warm-up steps follow
untimed; then rounds of `inner` steps, each round bracketed by the backend's sync() and
perf_counter_ns, every round kept as one sample of seconds per step."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from impls import registry
from impls.config import (ClipConfig, ModelConfig, OptimizerConfig, Preset, TrainConfig,
                          flops_per_char)
from impls.params import init_params

MODES = ("train", "eval", "generate")


@dataclass(frozen=True)
class Cell:
    backend: str  # registry name
    mode: str  # train | eval | generate (docs/SPEC.md §7)
    preset: str  # the preset these sizes come from (label only; sizes below are the truth)
    model: ModelConfig  # network sizes
    train: TrainConfig  # optimiser and clip (train mode)
    batch: int  # B (generate: 1)
    seq_len: int  # T (generate: characters drawn per sample)
    device: str = "cpu"  # cpu | gpu
    dtype: str = "float32"  # what the backend computes in
    precision: str = "float32"  # float32 (strict) or tf32 on a GPU
    seed: int = 0  # parameters, tokens and dropout masks

    @staticmethod
    def from_preset(p: Preset, backend: str, mode: str, *, batch: int | None = None,
                    seq_len: int | None = None, **kw: Any) -> "Cell":
        if mode == "generate":
            batch, seq_len = 1, seq_len or 200
        return Cell(backend, mode, p.name, p.model, p.train, batch or p.batch_size,
                    seq_len or p.seq_len, **kw)

    def chars_per_call(self) -> int:
        return self.seq_len if self.mode == "generate" else self.batch * self.seq_len

    def label(self) -> str:
        return f"{self.backend}/{self.mode}/{self.preset}/B{self.batch}xT{self.seq_len}"

    def key(self) -> tuple:
        """What makes two cells comparable across runs: everything but the seed."""
        d = self.to_dict()
        d.pop("seed")
        return tuple(sorted((k, repr(v)) for k, v in d.items()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Cell":
        d = dict(d)
        model = ModelConfig(**d.pop("model"))
        t = d.pop("train")
        train = TrainConfig(OptimizerConfig(**t["optimizer"]), ClipConfig(**t["clip"]))
        return Cell(model=model, train=train, **d)


@dataclass
class Prepared:
    """A backend built for a cell, with data on the device and a step function."""
    backend: Any
    step: Callable[[], Any]  # one timed unit of work; returns a loss handle or tokens
    check: Callable[[Any], bool] = field(default=lambda x: True)  # finite result?
    last: Any = None  # the latest step's output (checked for NaN when the cell is released)


def prepare(cell: Cell) -> Prepared:
    m = cell.model
    params = init_params(m, cell.seed)
    kw = {"precision": cell.precision} if cell.precision != "float32" else {}
    be = registry.create(cell.backend, m, cell.train, params, device=cell.device,
                         dtype=cell.dtype, seed=cell.seed, **kw)
    rng = np.random.default_rng(cell.seed)
    if cell.mode == "generate":
        prefix = rng.integers(0, m.vocab_size, 8)
        uniforms = rng.random(cell.seq_len)
        return Prepared(be, lambda: be.generate(prefix, cell.seq_len, 1.0, 0, uniforms))
    seq = rng.integers(0, m.vocab_size, (cell.batch, cell.seq_len + 1))
    tok, tgt = be.put(seq[:, :-1]), be.put(seq[:, 1:])
    shape = (m.num_layers, cell.batch, m.hidden_size)
    state = [be.state(np.zeros(shape), np.zeros(shape))]
    fn = be.train_step if cell.mode == "train" else be.eval_step

    def step() -> Any:
        loss, state[0] = fn(tok, tgt, state[0])  # carried state: truncated BPTT
        return loss

    return Prepared(be, step, lambda loss: math.isfinite(be.value(loss)))


def reset_peak_rss() -> None:
    try:  # Linux: writing 5 to clear_refs resets VmHWM, the peak resident set size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def backend_hook(backend: str, hook_name: str) -> Callable[..., Any] | None:
    """The backend module's optional hook (registry.hook); None when the module lacks it or
    cannot be imported here."""
    try:
        return registry.hook(backend, hook_name)
    except Exception:  # noqa: BLE001 - an unimportable backend has no hooks
        return None


_configured: dict[str, dict[str, str]] = {}  # module -> configure() info, once per process


def configure_backend(name: str, threads: int | None, device: str) -> dict[str, str]:
    """Import the backend's module and call its configure() once per process."""
    spec = registry.get_spec(name)
    if spec.module not in _configured:
        mod = registry.load_module(spec)
        _configured[spec.module] = dict(mod.configure(threads, device))
    return _configured[spec.module]


def backend_info(name: str, threads: int | None, device: str) -> dict[str, str]:
    """configure()'s facts for one backend, with this variant's own kernel path from the
    module's kernel_info hook where it offers one."""
    info = dict(configure_backend(name, threads, device))
    fn = backend_hook(name, "kernel_info")
    if fn is not None:
        info.update({k: str(v) for k, v in (fn(name, device) or {}).items()})
    return info


def gpu_peak(backend: str, reset: bool) -> int | None:
    """The framework's own peak-allocation counter on a GPU, through the backend module's
    device_peak_memory hook; None where it has none."""
    fn = backend_hook(backend, "device_peak_memory")
    if fn is None:
        return None
    try:
        v = fn("gpu", reset)
    except Exception:  # noqa: BLE001 - a missing counter is recorded as unknown
        return None
    return None if reset or v is None else int(v)


def first_step(prep: Prepared) -> tuple[Any, float]:
    """Run and time the first step alone: tracing, compiling and autotuning land here."""
    t0 = time.perf_counter_ns()
    out = prep.step()
    prep.backend.sync()
    return out, (time.perf_counter_ns() - t0) / 1e9


def calibrate(prep: Prepared, warmup: float = 0.2) -> int:
    """Untimed warm-up (at least `warmup` seconds or 50 steps); returns how many steps one
    timed round holds so that a round lasts at least ~50 ms."""
    n, t0 = 0, time.perf_counter_ns()
    while True:
        prep.step()
        n += 1
        prep.backend.sync()
        el = (time.perf_counter_ns() - t0) / 1e9
        if el >= warmup or n >= 50:
            break
    est = el / n
    return max(1, int(0.05 / est)) if est < 0.05 else 1


def measure_cell(cell: Cell, *, min_time: float = 1.0, max_rounds: int = 30,
                 min_rounds: int = 5, warmup: float = 0.2) -> dict[str, Any]:
    """Time one cell; returns status, first-step seconds, every sample and derived numbers."""
    gpu = cell.device == "gpu"
    reset_peak_rss()
    if gpu:
        gpu_peak(cell.backend, reset=True)
    prep = prepare(cell)
    be = prep.backend
    out, first = first_step(prep)
    if not prep.check(out):
        return {"status": "nan", "error": "non-finite loss on the first step", "first_step_s": first}
    inner = calibrate(prep, warmup)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_rounds and (len(samples) < min_rounds or spent < min_time):
        be.sync()
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            out = prep.step()
        be.sync()
        dt = (time.perf_counter_ns() - t0) / 1e9
        samples.append(dt / inner)
        spent += dt
    if not prep.check(out):
        return {"status": "nan", "error": "non-finite loss during timing", "first_step_s": first,
                "samples_s": samples, "inner": inner}
    med = float(np.median(samples))
    cps = cell.chars_per_call() / med
    res: dict[str, Any] = {
        "status": "ok", "first_step_s": first, "samples_s": samples, "inner": inner,
        "chars_per_s": cps, "gflops": flops_per_char(cell.model, cell.mode) * cps / 1e9,
        "peak_rss_bytes": peak_rss(),
        "kernel": getattr(be, "kernel", None),  # the path this instance took, where it knows
    }
    if cell.mode == "generate":
        res["us_per_char"] = 1e6 * med / cell.seq_len
    if gpu:
        res["peak_device_bytes"] = gpu_peak(cell.backend, reset=False)
    return res


def blas_name() -> str:
    """The BLAS NumPy uses here (for the efficiency denominator's provenance)."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-not-found]
        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                return f"{pool.get('internal_api')} {pool.get('version')}"
    except ImportError:
        pass
    try:
        d = np.show_config(mode="dicts")  # NumPy >= 1.26
        blas = d["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy: say so rather than guess
        return "numpy (BLAS unknown)"


def gemm_prepared(n: int) -> Prepared:
    """The noise probe: a fixed n x n float32 GEMM through NumPy's BLAS, with the same thread
    settings as the backends' workers, so it suffers what they suffer (e.g. an OpenMP barrier
    waiting on a descheduled thread)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    c = np.empty((n, n), np.float32)

    return Prepared(HostSync(), lambda: np.matmul(a, b, out=c))


class HostSync:
    """The "backend" of a step that runs on the host and is done when it returns (the probe's
    GEMM, a baseline's step that waits for its loss): nothing to synchronise."""
    kernel = None

    @staticmethod
    def sync() -> None:
        return None


def _slowdown() -> float:
    """LSTMBENCH_INJECT_SLOWDOWN=F: every timed round of this worker lasts F times as long (the
    extra time a busy loop inside the round). The harness's own test of itself: a known
    slowdown put into one variant's workers (`--variant b:env.LSTMBENCH_INJECT_SLOWDOWN=1.2`)
    must come out of `compare --variants` as that ratio (docs/measurement.md). Recorded with
    the variant's environment in the results file."""
    text = os.environ.get("LSTMBENCH_INJECT_SLOWDOWN", "")
    if not text:
        return 1.0
    try:
        f = float(text)
    except ValueError:
        f = math.nan
    if not (1.0 <= f <= 100.0):
        raise ValueError(f"LSTMBENCH_INJECT_SLOWDOWN={text!r}: give a factor from 1 to 100")
    return f


def time_round(prep: Prepared, inner: int) -> float:
    """One timed round: `inner` steps bracketed by sync(); seconds per step."""
    be = prep.backend
    slow = _slowdown()
    be.sync()
    t0 = time.perf_counter_ns()
    for _ in range(inner):
        prep.last = prep.step()
    be.sync()
    if slow > 1.0:  # stretch the round to slow x its time, spinning (a CPU-bound slowdown)
        end = t0 + int((time.perf_counter_ns() - t0) * slow)
        while time.perf_counter_ns() < end:
            pass
    return (time.perf_counter_ns() - t0) / 1e9 / inner


def inner_for(prep: Prepared, target: float = 0.03, warmup: float = 0.2) -> int:
    """Untimed warm-up, then the step count that makes one round last about `target` seconds
    (20-50 ms: short enough for many rounds, long enough to dwarf the timer and the IPC)."""
    n, t0 = 0, time.perf_counter_ns()
    while True:
        prep.last = prep.step()
        n += 1
        prep.backend.sync()
        el = (time.perf_counter_ns() - t0) / 1e9
        if el >= warmup or n >= 50:
            break
    return max(1, round(target / (el / n)))


def device_matmul_peak(device: str, backend: str) -> float | None:
    """GFLOP/s strict float32 on a GPU, from the backend module's device_matmul_peak hook."""
    fn = backend_hook(backend, "device_matmul_peak")
    return None if fn is None else fn(device)


PEAK_N = 1024  # the CPU's larger GEMM beside the noise probe (harness.engine.executor: the peak GEMM's other part)


def matmul_peak(device: str, backend: str = "numpy", n: int = PEAK_N, repeats: int = 7) -> float:
    """Best float32 GEMM GFLOP/s on this device, measured now. On the CPU with NumPy's BLAS,
    n x n (the run's peak GEMM is the faster of this and the noise probe: harness.engine.explain);
    on a GPU with the backend's framework, strict float32 (the peak GEMM itself)."""
    if device == "cpu":
        rng = np.random.default_rng(0)
        a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            a @ b
            best = min(best, (time.perf_counter_ns() - t0) / 1e9)
        return 2 * n ** 3 / best / 1e9
    peak = device_matmul_peak(device, backend)
    if peak is None:
        raise ValueError(f"backend {backend} offers no GPU matmul peak (no device_matmul_peak hook)")
    return float(peak)
