"""Canonical parameters (docs/SPEC.md §2): names, shapes and the seeded float64 initialiser that
every backend loads, for cross-checks and benchmarks alike."""
from __future__ import annotations

import numpy as np

from .config import ModelConfig

Params = dict[str, np.ndarray]


def param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape, in canonical order."""
    H, V = m.hidden_size, m.vocab_size
    shapes: dict[str, tuple[int, ...]] = {}
    if m.input == "embedding":
        shapes["embed"] = (V, m.embed_size)
    for l in range(m.num_layers):
        shapes[f"lstm.{l}.W_x"] = (m.layer_input_size(l), 4 * H)  # blocks [i | f | g | o]
        shapes[f"lstm.{l}.W_h"] = (H, 4 * H)
        shapes[f"lstm.{l}.b"] = (4 * H,)
    shapes["out.W"] = (H, V)
    shapes["out.b"] = (V,)
    return shapes


def init_params(m: ModelConfig, seed: int, forget_bias: float = 0.0, scale: float = 0.1) -> Params:
    """Uniform(-scale, scale) for every parameter, as RNNForLM does; `forget_bias` is added
    to the f block of each LSTM bias. float64, drawn in canonical order from one stream."""
    rng = np.random.default_rng(seed)
    params = {name: rng.uniform(-scale, scale, size=shape) for name, shape in param_shapes(m).items()}
    H = m.hidden_size
    for l in range(m.num_layers):
        params[f"lstm.{l}.b"][H:2 * H] += forget_bias
    return params


def check_params(m: ModelConfig, params: Params) -> None:
    """Raise ValueError naming the first missing, extra or misshapen parameter."""
    shapes = param_shapes(m)
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, expected {shape}")
