"""Shared by the baseline scripts: the default train config, the synthetic window, the generate
cell's prefix and the generate step's wrapper (GenerateStep), the Keras optimiser (tensorflow
and keras baselines) and a tiny command-line demo. Imports nothing but NumPy and impls.config
at module level, so it loads in chainer's NumPy < 2 environment too."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig

__all__ = ["DEFAULT_TRAIN", "PREFIX_LEN", "TEMPERATURE", "GenerateStep", "ModelConfig", "TrainConfig",
           "check_generate", "demo", "keras_optimizer", "prefix", "window"]

DEFAULT_TRAIN = TrainConfig(OptimizerConfig("adam", lr=1e-3), ClipConfig("norm", 5.0))


def window(m: ModelConfig, batch: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens and their targets (the next token), time-major (T, B) int64."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, m.vocab_size, size=(seq_len, batch))  # (T, B)
    return tok, np.roll(tok, -1, axis=0)


PREFIX_LEN = 8  # the generate cells' prefix length (harness.engine.bench.prepare)
TEMPERATURE = 1.0  # the generate cells' temperature (harness.engine.bench.prepare), no top-k


def check_generate(batch: int, seq_len: int) -> None:
    """A generate step draws one sequence (batch 1) of seq_len >= 1 tokens, as the harness's
    generate cells do; anything else is refused before a model is built."""
    if batch != 1:
        raise ValueError(f"a generate step draws one sequence: batch must be 1, got {batch}")
    if seq_len < 1:
        raise ValueError(f"a generate step draws seq_len >= 1 tokens, got {seq_len}")


def prefix(m: ModelConfig, seed: int) -> np.ndarray:
    """The prefix a generate cell of this seed feeds first: PREFIX_LEN ids (P,) int64, drawn as
    harness.engine.bench.prepare draws the backends' (the first draw of default_rng(seed))."""
    return np.random.default_rng(seed).integers(0, m.vocab_size, PREFIX_LEN)


class GenerateStep:
    """What make_generate returns. Calling it runs `draw()` once (one sequence: the prefix fed
    from a zero state, then seq_len tokens sampled one at a time, each collected on the host)
    and returns the sum of the drawn ids as an int: a number `float()` accepts, computed from
    every token, so the work is finished when the call returns. `tokens` holds the last
    sequence's ids, (seq_len,) int64, for tests and for a user who wants the text."""

    def __init__(self, draw: Callable[[], list[int]]) -> None:
        self.draw = draw
        self.tokens = np.empty(0, np.int64)

    def __call__(self) -> int:
        self.tokens = np.asarray(self.draw(), np.int64).reshape(-1)
        return int(self.tokens.sum())


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
         make_eval: Callable[..., Callable[[], Any]] | None = None,
         make_generate: Callable[..., Callable[[], Any]] | None = None) -> None:
    """Time a baseline at char-rnn's sizes (2x128, V=65; train and eval B=50 T=50, generate
    200 characters after the 8-token prefix) and print ms per step."""
    m = ModelConfig(65, 128, 2)
    for mode, make, batch, seq_len in (("train", make_step, 50, 50), ("eval", make_eval, 50, 50),
                                       ("generate", make_generate, 1, 200)):
        if make is None:
            continue
        step = make(m, batch, seq_len)
        float(step())  # first step: tracing/compiling
        t0 = time.perf_counter()
        for _ in range(10):
            float(step())  # waited for, as the harness times it
        ms = (time.perf_counter() - t0) / 10 * 1e3
        print(f"{name} {mode}: char-rnn sizes B={batch} T={seq_len}: {ms:.1f} ms/step"
              + (f" ({ms / seq_len * 1e3:.0f} us/char)" if mode == "generate" else ""))
