"""The TensorFlow training step a user would write by hand: Keras layers (Embedding or
tf.one_hot, stacked layers.LSTM, Dense) called inside one tf.function with tf.GradientTape and
a Keras optimiser (native clipping). `make_step(model_config, batch, seq_len) -> step`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import DEFAULT_TRAIN, demo, window  # noqa: E402


def make_step(model_config, batch: int, seq_len: int, train=None, seed: int = 0):  # type: ignore[no-untyped-def]
    m, tc = model_config, train or DEFAULT_TRAIN
    keras.utils.set_random_seed(seed)
    embed = keras.layers.Embedding(m.vocab_size, m.embed_size) if m.input == "embedding" else None
    lstms = [keras.layers.LSTM(m.hidden_size, return_sequences=True, return_state=True)
             for _ in range(m.num_layers)]
    drop = keras.layers.Dropout(m.dropout)
    dense = keras.layers.Dense(m.vocab_size)
    o, c = tc.optimizer, tc.clip
    clip = ({"global_clipnorm": c.value} if c.kind == "norm" else
            {"clipvalue": c.value} if c.kind == "value" else {})
    opt = {"sgd": lambda: keras.optimizers.SGD(o.lr, **clip),
           "adam": lambda: keras.optimizers.Adam(o.lr, o.beta1, o.beta2, o.eps, **clip),
           "rmsprop": lambda: keras.optimizers.RMSprop(o.lr, rho=o.alpha, epsilon=o.eps, **clip),
           "adagrad": lambda: keras.optimizers.Adagrad(o.lr, initial_accumulator_value=0.0,
                                                       epsilon=o.eps, **clip)}[o.name]()
    tok, tgt = (tf.constant(a.T.astype("int32")) for a in window(m, batch, seq_len, seed))  # (B, T)

    def forward(tok, h0, c0):  # type: ignore[no-untyped-def]
        x = embed(tok) if embed is not None else tf.one_hot(tok, m.vocab_size)
        hs, cs = [], []
        for l, lstm in enumerate(lstms):
            x, h, c = lstm(drop(x, training=True), initial_state=[h0[l], c0[l]], training=True)
            hs.append(h)
            cs.append(c)
        return dense(drop(x, training=True)), tf.stack(hs), tf.stack(cs)

    forward(tok, *(tf.zeros((m.num_layers, batch, m.hidden_size)),) * 2)  # build the layers
    variables = ([embed.embeddings] if embed is not None else []) + \
        [v for l in lstms for v in l.trainable_variables] + dense.trainable_variables

    @tf.function
    def train_step(h0, c0):  # type: ignore[no-untyped-def]
        with tf.GradientTape() as tape:
            logits, h, c = forward(tok, h0, c0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tgt, logits))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss, h, c

    state = [tf.zeros((m.num_layers, batch, m.hidden_size))] * 2

    def step():  # type: ignore[no-untyped-def]
        loss, state[0], state[1] = train_step(*state)
        return loss

    return step


if __name__ == "__main__":
    demo(make_step, "tensorflow baseline")
