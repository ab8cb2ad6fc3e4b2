"""Shared by the baseline scripts: default train config and the synthetic window."""
from __future__ import annotations

import numpy as np

from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig

DEFAULT_TRAIN = TrainConfig(OptimizerConfig("adam", lr=1e-3), ClipConfig("norm", 5.0))


def window(m: ModelConfig, batch: int, seq_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens and targets, time-major (T, B) int64."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, m.vocab_size, size=(seq_len, batch))
    return tok, np.roll(tok, -1, axis=0)


def demo(make_step, name: str) -> None:  # type: ignore[no-untyped-def]
    import time
    m = ModelConfig(65, 128, 2)
    step = make_step(m, 50, 50)
    float(step())  # first step: tracing/compiling
    t0 = time.perf_counter()
    for _ in range(10):
        loss = step()
    float(loss)
    print(f"{name}: char-rnn sizes B=50 T=50: {(time.perf_counter() - t0) / 10 * 1e3:.1f} ms/step")
