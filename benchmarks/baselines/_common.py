"""Shared by the baseline scripts: the default train config, the synthetic window, the Keras
optimiser (tensorflow and keras baselines) and a tiny command-line demo. Imports nothing but
NumPy and impls.config at module level, so it loads in chainer's NumPy < 2 environment too."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig

__all__ = ["DEFAULT_TRAIN", "ModelConfig", "TrainConfig", "demo", "keras_optimizer", "window"]

DEFAULT_TRAIN = TrainConfig(OptimizerConfig("adam", lr=1e-3), ClipConfig("norm", 5.0))


def window(m: ModelConfig, batch: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens and their targets (the next token), time-major (T, B) int64."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, m.vocab_size, size=(seq_len, batch))  # (T, B)
    return tok, np.roll(tok, -1, axis=0)


def keras_optimizer(tc: TrainConfig) -> Any:
    """The Keras optimiser a user names for `tc`, with Keras' own clipping arguments
    (global_clipnorm for a norm clip, clipvalue for a value clip). Keras is imported here,
    so the caller has chosen KERAS_BACKEND first."""
    import keras
    o, c = tc.optimizer, tc.clip
    clip = ({"global_clipnorm": c.value} if c.kind == "norm" else
            {"clipvalue": c.value} if c.kind == "value" else {})
    return {"sgd": lambda: keras.optimizers.SGD(o.lr, **clip),
            "adam": lambda: keras.optimizers.Adam(o.lr, o.beta1, o.beta2, o.eps, **clip),
            "rmsprop": lambda: keras.optimizers.RMSprop(o.lr, rho=o.alpha, epsilon=o.eps, **clip),
            "adagrad": lambda: keras.optimizers.Adagrad(o.lr, initial_accumulator_value=0.0,
                                                        epsilon=o.eps, **clip)}[o.name]()


def demo(make_step: Callable[..., Callable[[], Any]], name: str,
         make_eval: Callable[..., Callable[[], Any]] | None = None) -> None:
    """Time a baseline at char-rnn's sizes (B=50, T=50, 2x128) and print ms per step."""
    m = ModelConfig(65, 128, 2)
    for mode, make in (("train", make_step), ("eval", make_eval)):
        if make is None:
            continue
        step = make(m, 50, 50)
        float(step())  # first step: tracing/compiling
        t0 = time.perf_counter()
        for _ in range(10):
            float(step())  # waited for, as the harness times it
        print(f"{name} {mode}: char-rnn sizes B=50 T=50: "
              f"{(time.perf_counter() - t0) / 10 * 1e3:.1f} ms/step")
