"""The backend interface: what every `impls/<framework>_impl.py` module provides.

NumPy arrays and the canonical parameter dict (docs/SPEC.md §2) are the boundary. Inside, a backend
keeps whatever its framework wants (device tensors, native layouts); the harness only moves
data across the boundary outside of timed regions.

Each backend module exposes the same public names (as Keras's backend folders do):

    configure(threads: int | None, device: str) -> dict[str, str]
        Called once per process before any backend object is made: sets thread pools and
        returns facts for the results file ("version", "kernel" path, ...).

    one class per variant, constructed as
        Cls(model: ModelConfig, train: TrainConfig, params: Params, *, device: str = "cpu",
            dtype: str = "float32", seed: int = 0)
    and implementing `Backend` below. There is no base class to inherit: the Protocol is the
    contract; `registry.create` returns it, and tests/test_conformance.py checks every
    registered backend against it (isinstance through runtime_checkable, plus each method's
    arity).

    optional hooks (impls.registry.HOOKS): kernel_info, device_peak_memory, device_matmul_peak.

A backend whose spec lacks a mode (registry.BackendSpec.modes, e.g. no "train") still has
every method; the ones of the missing mode raise NotImplementedError naming the mode.

Semantics shared by every method:
- tokens and targets are (B, T) integer arrays; a state is (h, c), each (L, B, H).
- `put`/`state` convert host data to the backend's form once; the compute methods take
  those forms, so timing loops never pay for host conversion.
- `forward` and `eval_step` run in eval mode (no dropout); `loss_and_grads` and
  `train_step` run in train mode (dropout with p from the model, masks from `seed`).
- `train_step`: forward from `state`, mean cross-entropy, BPTT, clip, one optimiser update;
  returns the loss before the update and the final state, detached (truncated BPTT).
- `load(params)` replaces the weights and resets the optimiser state (step count t = 0).
- `generate`: from a zero (L, 1, H) state, feed `prefix`, then draw n tokens one at a time
  with docs/SPEC.md §5's rule (impls.sampling) using uniforms[i] for the i-th draw.
- `sync()` blocks until all queued device work is done (the harness calls it before every
  clock read); `value(x)` fetches a scalar to a Python float.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import ModelConfig, TrainConfig
from .params import Params

State = Any  # a backend's own (h, c) representation
Tokens = Any  # a backend's own (B, T) token representation


@runtime_checkable
class Backend(Protocol):
    model: ModelConfig
    train: TrainConfig

    def load(self, params: Params) -> None: ...
    def params(self) -> Params: ...  # canonical names, float64 copies

    def put(self, tokens: np.ndarray) -> Tokens: ...
    def state(self, h: np.ndarray, c: np.ndarray) -> State: ...
    def fetch_state(self, state: State) -> tuple[np.ndarray, np.ndarray]: ...

    def forward(self, tokens: Tokens, state: State) -> tuple[np.ndarray, State]: ...
    def loss_and_grads(self, tokens: Tokens, targets: Tokens, state: State
                       ) -> tuple[float, np.ndarray, State, Params]: ...
    def eval_step(self, tokens: Tokens, targets: Tokens, state: State) -> tuple[Any, State]: ...
    def train_step(self, tokens: Tokens, targets: Tokens, state: State) -> tuple[Any, State]: ...
    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray: ...

    def sync(self) -> None: ...
    def value(self, x: Any) -> float: ...


def zero_state(model: ModelConfig, batch: int, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
    shape = (model.num_layers, batch, model.hidden_size)
    return np.zeros(shape, dtype), np.zeros(shape, dtype)
