"""The Keras 3 train and eval steps a user would write, engine-agnostic: a Sequential model
(Embedding or a one-hot CategoryEncoding, Dropout, stacked layers.LSTM, Dense) compiled with a
Keras optimiser (its own clipping) and SparseCategoricalCrossentropy(from_logits=True); one
train step is `model.train_on_batch(x, y)`, one eval step `model.test_on_batch(x, y)`. It runs
on whatever engine KERAS_BACKEND chose before Keras was imported: the harness runs it with
the backend's own environment, so it is the yardstick of keras-jax (jitted by Keras) and
keras-torch (eager) alike (harness/baselines.py).

    make_step(model_config, batch, seq_len, train=None, seed=0) -> step   # one train step
    make_eval(model_config, batch, seq_len, train=None, seed=0) -> step   # one eval step

step() returns the mean cross-entropy as a Python float (Keras fetches it).

One difference from the other baselines: every window starts from a zero state. The Keras way
to carry the state across batches is `LSTM(stateful=True)`, and in Keras 3.15 that does not
work on these engines: on JAX the state variable is not tracked by the jitted train function
(it stays zero), and on PyTorch backward fails ("modified by an inplace operation") because
the state is assigned in place after the forward. The arithmetic is the same either way (the
first step's h0 @ W_h is computed on zeros instead of the carried values)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import DEFAULT_TRAIN, ModelConfig, TrainConfig, demo, keras_optimizer, window  # noqa: E402


def build(m: ModelConfig, batch: int, seq_len: int, tc: TrainConfig, seed: int) -> keras.Model:
    """tokens (B, T) int32 -> logits (B, T, V), compiled."""
    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input(batch_shape=(batch, seq_len), dtype="int32")]  # (B, T)
    layers.append(keras.layers.Embedding(m.vocab_size, m.embed_size) if m.input == "embedding"
                  else keras.layers.CategoryEncoding(m.vocab_size, output_mode="one_hot"))  # (B, T, D)
    for _ in range(m.num_layers):
        if m.dropout:
            layers.append(keras.layers.Dropout(m.dropout))
        layers.append(keras.layers.LSTM(m.hidden_size, return_sequences=True))  # (B, T, H)
    if m.dropout:
        layers.append(keras.layers.Dropout(m.dropout))
    layers.append(keras.layers.Dense(m.vocab_size))  # (B, T, V)
    model = keras.Sequential(layers)
    model.compile(optimizer=keras_optimizer(tc),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # mean over B*T
    return model


def _data(m: ModelConfig, batch: int, seq_len: int, seed: int) -> tuple[Any, Any]:
    return tuple(a.T.astype("int32") for a in window(m, batch, seq_len, seed))  # (B, T) each


def _compiled(model_config: ModelConfig, batch: int, seq_len: int, train: TrainConfig | None,
              seed: int) -> tuple[Any, Any, Any]:
    """The compiled model and its fixed window (x, y), both (B, T)."""
    m = model_config
    return (build(m, batch, seq_len, train or DEFAULT_TRAIN, seed), *_data(m, batch, seq_len, seed))


def make_step(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], float]:
    """One train step: model.train_on_batch (forward, loss, gradients, clip, update)."""
    model, x, y = _compiled(model_config, batch, seq_len, train, seed)
    return lambda: model.train_on_batch(x, y)


def make_eval(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], float]:
    """One eval step: model.test_on_batch (forward without dropout, mean cross-entropy)."""
    model, x, y = _compiled(model_config, batch, seq_len, train, seed)
    return lambda: model.test_on_batch(x, y)


if __name__ == "__main__":
    demo(make_step, f"keras ({keras.backend.backend()}) baseline", make_eval)
