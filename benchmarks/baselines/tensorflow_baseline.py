"""The TensorFlow train, eval and generate steps a user would write by hand (TensorFlow's
"training loop from scratch" guide; generation as its "Text generation with an RNN" tutorial
does it): Keras layers (Embedding or tf.one_hot, Dropout, stacked layers.LSTM, Dense) called
inside a tf.function; train: tf.GradientTape and a Keras optimiser with its own clipping; eval:
the forward (training=False) and the loss in a tf.function; generate: the tutorial's OneStep,
a tf.function that runs the net from the given state and draws the next token with
tf.random.categorical, called once for the prefix and then once per token from a Python loop,
each token to the host as it comes. The yardstick of the tensorflow and tensorflow-xla
backends (harness/commands/baselines.py).

    make_step(model_config, batch, seq_len, train=None, seed=0) -> step       # one train step
    make_eval(model_config, batch, seq_len, train=None, seed=0) -> step       # one eval step
    make_generate(model_config, 1, seq_len, train=None, seed=0) -> step   # seq_len tokens

Train and eval's step() returns the mean cross-entropy as a 0-d tf.Tensor; float() on it waits
for it. Generate's returns the sum of the drawn ids as an int, its `tokens` the ids
(_common.GenerateStep)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import (DEFAULT_TRAIN, TEMPERATURE, GenerateStep, ModelConfig, TrainConfig,  # noqa: E402
                     check_generate, demo, keras_optimizer, prefix, window)


class _Net:
    """The layers, and tokens (B, T) -> logits (B, T, V), h and c (L, B, H)."""

    def __init__(self, m: ModelConfig, batch: int, seed: int) -> None:
        keras.utils.set_random_seed(seed)
        self.m = m
        self.embed = keras.layers.Embedding(m.vocab_size, m.embed_size) if m.input == "embedding" else None
        self.lstms = [keras.layers.LSTM(m.hidden_size, return_sequences=True, return_state=True)
                      for _ in range(m.num_layers)]
        self.drop = keras.layers.Dropout(m.dropout)
        self.dense = keras.layers.Dense(m.vocab_size)
        zeros = tf.zeros((m.num_layers, batch, m.hidden_size))
        self(tf.zeros((batch, 1), tf.int32), zeros, zeros, False)  # builds the layers
        self.variables = ([self.embed.embeddings] if self.embed is not None else []) + \
            [v for l in self.lstms for v in l.trainable_variables] + self.dense.trainable_variables

    def __call__(self, tok: Any, h0: Any, c0: Any, training: bool) -> tuple[Any, Any, Any]:
        m = self.m
        x = self.embed(tok) if self.embed is not None else tf.one_hot(tok, m.vocab_size)  # (B, T, D)
        hs, cs = [], []
        for l, lstm in enumerate(self.lstms):
            x, h, c = lstm(self.drop(x, training=training), initial_state=[h0[l], c0[l]],
                           training=training)  # (B, T, H)
            hs.append(h)
            cs.append(c)
        return self.dense(self.drop(x, training=training)), tf.stack(hs), tf.stack(cs)


def _data(m: ModelConfig, batch: int, seq_len: int, seed: int) -> tuple[Any, Any, list[Any]]:
    tok, tgt = (tf.constant(a.T.astype("int32")) for a in window(m, batch, seq_len, seed))  # (B, T)
    return tok, tgt, [tf.zeros((m.num_layers, batch, m.hidden_size))] * 2  # h, c (L, B, H)


def make_step(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], Any]:
    """One train step: forward from the carried state, mean cross-entropy under a
    GradientTape, the Keras optimiser's clip and update; the state carried on (the tape
    does not reach into the next window)."""
    m, tc = model_config, train or DEFAULT_TRAIN
    net = _Net(m, batch, seed)
    opt = keras_optimizer(tc)
    tok, tgt, state = _data(m, batch, seq_len, seed)

    @tf.function
    def train_step(h0: Any, c0: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape() as tape:
            logits, h, c = net(tok, h0, c0, True)  # (B, T, V)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tgt, logits))
        opt.apply(tape.gradient(loss, net.variables), net.variables)
        return loss, h, c

    def step() -> Any:
        loss, state[0], state[1] = train_step(*state)
        return loss

    return step


def make_eval(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], Any]:
    """One eval step: the forward (training=False) from the carried state and the mean
    cross-entropy, one tf.function."""
    m = model_config
    net = _Net(m, batch, seed)
    tok, tgt, state = _data(m, batch, seq_len, seed)

    @tf.function
    def eval_step(h0: Any, c0: Any) -> tuple[Any, Any, Any]:
        logits, h, c = net(tok, h0, c0, False)  # (B, T, V)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tgt, logits)), h, c

    def step() -> Any:
        loss, state[0], state[1] = eval_step(*state)
        return loss

    return step


def make_generate(model_config: ModelConfig, batch: int, seq_len: int,
                  train: TrainConfig | None = None, seed: int = 0) -> GenerateStep:
    """One generate step (batch 1), the tutorial's loop: from a zero state one_step on the
    8-token prefix (1, P) gives the first token, then one_step on each drawn (1, 1) token,
    fed back as the tensor it is (all but the last); each id to the host with .numpy().
    one_step draws with tf.random.categorical on the last logits / temperature 1; the seed
    (keras.utils.set_random_seed, which seeds TensorFlow too) makes a seed give the same text.
    one_step is traced twice on the first call (prefix and single-token shapes)."""
    m = model_config
    check_generate(batch, seq_len)
    net = _Net(m, 1, seed)
    pre = tf.constant(prefix(m, seed).astype("int32").reshape(1, -1))  # (1, P)
    zeros = tf.zeros((m.num_layers, 1, m.hidden_size))  # (L, 1, H)

    @tf.function
    def one_step(tok: Any, h0: Any, c0: Any) -> tuple[Any, Any, Any]:
        logits, h, c = net(tok, h0, c0, False)  # (1, t, V)
        nxt = tf.random.categorical(logits[:, -1] / TEMPERATURE, 1, dtype=tf.int32)  # (1, 1)
        return nxt, h, c

    def draw() -> list[int]:
        nxt, h, c = one_step(pre, zeros, zeros)
        out = [nxt.numpy().item()]
        for _ in range(seq_len - 1):
            nxt, h, c = one_step(nxt, h, c)
            out.append(nxt.numpy().item())
        return out

    return GenerateStep(draw)


if __name__ == "__main__":
    demo(make_step, "tensorflow baseline", make_eval, make_generate)
