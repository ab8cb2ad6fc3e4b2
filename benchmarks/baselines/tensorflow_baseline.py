"""The TensorFlow train and eval steps a user would write by hand (TensorFlow's "training loop
from scratch" guide): Keras layers (Embedding or tf.one_hot, Dropout, stacked layers.LSTM,
Dense) called inside a tf.function; train: tf.GradientTape and a Keras optimiser with its own
clipping; eval: the forward (training=False) and the loss in a tf.function. The yardstick of
the tensorflow and tensorflow-xla backends (harness/baselines.py).

    make_step(model_config, batch, seq_len, train=None, seed=0) -> step   # one train step
    make_eval(model_config, batch, seq_len, train=None, seed=0) -> step   # one eval step

step() returns the mean cross-entropy as a 0-d tf.Tensor; float() on it waits for it."""
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
from _common import DEFAULT_TRAIN, ModelConfig, TrainConfig, demo, keras_optimizer, window  # noqa: E402


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


if __name__ == "__main__":
    demo(make_step, "tensorflow baseline", make_eval)
