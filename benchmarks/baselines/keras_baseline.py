"""The Keras 3 train, eval and generate steps a user would write, engine-agnostic: a Sequential
model (Embedding or a one-hot CategoryEncoding, Dropout, stacked layers.LSTM, Dense) compiled
with a Keras optimiser (its own clipping) and SparseCategoricalCrossentropy(from_logits=True);
one train step is `model.train_on_batch(x, y)`, one eval step `model.test_on_batch(x, y)`.
Generation needs the state carried by hand, so it uses the same layers in a functional Model
that takes and returns each layer's (h, c) (LSTM(return_state=True) with initial_state, the
Keras way to build an inference model), run by `model.predict_on_batch` once for the prefix
and once per token, and NumPy draws from the softmax of the returned logits, as Keras'
character-level text generation example does (with `predict`, whose per-call data pipeline
is no part of decoding). Not `model(x, training=False)` per token: on the JAX engine that
call runs eagerly and compiles the LSTM's lax.scan anew on every call (jax_log_compiles shows
jit(scan) compiled at each one), measured at 477 ms per token at char-rnn's sizes against
0.82 ms for predict_on_batch, which Keras jits once per shape (on the PyTorch engine 5.8
against 4.5 ms; one 2-core machine, 5 calls each). It runs on whatever engine KERAS_BACKEND
chose before Keras was imported: the harness runs it with the backend's own environment, so
it is the yardstick of keras-jax (jitted by Keras) and keras-torch (eager) alike
(harness/commands/baselines.py).

    make_step(model_config, batch, seq_len, train=None, seed=0) -> step       # one train step
    make_eval(model_config, batch, seq_len, train=None, seed=0) -> step       # one eval step
    make_generate(model_config, 1, seq_len, train=None, seed=0) -> step   # seq_len tokens

Train and eval's step() returns the mean cross-entropy as a Python float (Keras fetches it).
Generate's returns the sum of the drawn ids as an int, its `tokens` the ids
(_common.GenerateStep).

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
import numpy as np  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import (DEFAULT_TRAIN, TEMPERATURE, GenerateStep, ModelConfig, TrainConfig,  # noqa: E402
                     check_generate, demo, keras_optimizer, prefix, window)


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


def build_generator(m: ModelConfig, seed: int) -> keras.Model:
    """The layers of `build` as a functional Model for one sequence that carries the state:
    [tokens (1, t) int32, h_1, c_1, ..., h_L, c_L each (1, H)] -> [logits (1, t, V),
    h_1, c_1, ..., h_L, c_L]."""
    keras.utils.set_random_seed(seed)
    tok = keras.Input(batch_shape=(1, None), dtype="int32")  # (1, t)
    states = [keras.Input(batch_shape=(1, m.hidden_size)) for _ in range(2 * m.num_layers)]
    if m.input == "embedding":
        x = keras.layers.Embedding(m.vocab_size, m.embed_size)(tok)  # (1, t, E)
    else:  # CategoryEncoding replaces a trailing axis of size 1 (t = 1 would give (1, V)): add one
        x = keras.layers.CategoryEncoding(m.vocab_size, output_mode="one_hot")(
            keras.layers.Reshape((-1, 1))(tok))  # (1, t, V)
    out_states = []
    for l in range(m.num_layers):
        if m.dropout:
            x = keras.layers.Dropout(m.dropout)(x)
        x, h, c = keras.layers.LSTM(m.hidden_size, return_sequences=True, return_state=True)(
            x, initial_state=states[2 * l:2 * l + 2])  # (1, t, H), (1, H), (1, H)
        out_states += [h, c]
    if m.dropout:
        x = keras.layers.Dropout(m.dropout)(x)
    return keras.Model([tok, *states], [keras.layers.Dense(m.vocab_size)(x), *out_states])  # (1, t, V)


def make_generate(model_config: ModelConfig, batch: int, seq_len: int,
                  train: TrainConfig | None = None, seed: int = 0) -> GenerateStep:
    """One generate step (batch 1): from zero states `model.predict_on_batch` on the 8-token
    prefix (1, P), then on each drawn token (1, 1) with the states it returned (all but the
    last); predict_on_batch hands back NumPy arrays, so each draw is NumPy's, as Keras'
    character-level text generation example samples: softmax of the last logits at
    temperature 1, choice(V, p=...) from a np.random.default_rng(seed) (a seed gives the same
    text)."""
    m = model_config
    check_generate(batch, seq_len)
    model = build_generator(m, seed)
    tok = prefix(m, seed).astype("int32").reshape(1, -1)  # (1, P)
    zeros = [np.zeros((1, m.hidden_size), "float32")] * (2 * m.num_layers)  # (1, H) each
    rng = np.random.default_rng(seed)

    def draw() -> list[int]:
        out: list[int] = []
        logits, *states = model.predict_on_batch([tok, *zeros])  # (1, P, V)
        for k in range(seq_len):
            z = logits[0, -1].astype(np.float64) / TEMPERATURE  # (V,)
            p = np.exp(z - z.max())
            out.append(int(rng.choice(m.vocab_size, p=p / p.sum())))
            if k + 1 < seq_len:
                logits, *states = model.predict_on_batch([np.array([[out[-1]]], "int32"), *states])  # (1, 1, V)
        return out

    return GenerateStep(draw)


if __name__ == "__main__":
    demo(make_step, f"keras ({keras.backend.backend()}) baseline", make_eval, make_generate)
