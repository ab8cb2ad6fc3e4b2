"""The JAX training step a user would write by hand: an LSTM cell under lax.scan, mean
cross-entropy, jax.value_and_grad, optax clip + optimiser, the whole step under jax.jit.
`make_step(model_config, batch, seq_len) -> step`."""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import DEFAULT_TRAIN, demo, window  # noqa: E402


def init(m, key):  # type: ignore[no-untyped-def]
    u = lambda k, s: jax.random.uniform(k, s, jnp.float32, -0.1, 0.1)  # noqa: E731
    keys = iter(jax.random.split(key, 3 * m.num_layers + 3))
    H = m.hidden_size
    p = {"lstm": [{"Wx": u(next(keys), (m.layer_input_size(l), 4 * H)),
                   "Wh": u(next(keys), (H, 4 * H)), "b": jnp.zeros(4 * H)}
                  for l in range(m.num_layers)],
         "W": u(next(keys), (H, m.vocab_size)), "b": jnp.zeros(m.vocab_size)}
    if m.input == "embedding":
        p["embed"] = u(next(keys), (m.vocab_size, m.embed_size))
    return p


def make_step(model_config, batch: int, seq_len: int, train=None, seed: int = 0):  # type: ignore[no-untyped-def]
    m, tc = model_config, train or DEFAULT_TRAIN
    H, V = m.hidden_size, m.vocab_size

    def loss_fn(p, tok, tgt, h0, c0, key):  # type: ignore[no-untyped-def]
        x = jax.nn.one_hot(tok, V) if m.input == "onehot" else p["embed"][tok]  # (T, B, D)
        keys = jax.random.split(key, m.num_layers + 1)

        def drop(x, k):  # type: ignore[no-untyped-def]
            if m.dropout == 0:
                return x
            keep = jax.random.bernoulli(k, 1 - m.dropout, x.shape)
            return jnp.where(keep, x / (1 - m.dropout), 0)

        hs, cs = [], []
        for l, lp in enumerate(p["lstm"]):
            xw = drop(x, keys[l]) @ lp["Wx"] + lp["b"]  # (T, B, 4H)

            def cell(carry, xw_t, Wh=lp["Wh"]):  # type: ignore[no-untyped-def]
                h, c = carry
                i, f, g, o = jnp.split(xw_t + h @ Wh, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h

            (h, c), x = jax.lax.scan(cell, (h0[l], c0[l]), xw)
            hs.append(h)
            cs.append(c)
        logits = drop(x, keys[-1]) @ p["W"] + p["b"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()
        return loss, (jnp.stack(hs), jnp.stack(cs))

    o = tc.optimizer
    opt = {"sgd": lambda: optax.sgd(o.lr), "adam": lambda: optax.adam(o.lr, o.beta1, o.beta2, o.eps),
           "rmsprop": lambda: optax.rmsprop(o.lr, decay=o.alpha, eps=o.eps, eps_in_sqrt=False),
           "adagrad": lambda: optax.adagrad(o.lr, initial_accumulator_value=0.0, eps=o.eps)}[o.name]()
    clip = {"norm": lambda: [optax.clip_by_global_norm(tc.clip.value)],
            "value": lambda: [optax.clip(tc.clip.value)], "none": lambda: []}[tc.clip.kind]()
    tx = optax.chain(*clip, opt)

    @jax.jit
    def train_step(p, s, tok, tgt, h0, c0, key):  # type: ignore[no-untyped-def]
        key, sub = jax.random.split(key)
        (loss, (h, c)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tok, tgt, h0, c0, sub)
        upd, s = tx.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss, h, c, key

    p = init(m, jax.random.key(seed))
    carry = {"p": p, "s": tx.init(p), "key": jax.random.key(seed + 1)}
    tok, tgt = (jnp.asarray(a, jnp.int32) for a in window(m, batch, seq_len, seed))
    zeros = jnp.zeros((m.num_layers, batch, H))
    carry["h"], carry["c"] = zeros, zeros

    def step():  # type: ignore[no-untyped-def]
        carry["p"], carry["s"], loss, carry["h"], carry["c"], carry["key"] = train_step(
            carry["p"], carry["s"], tok, tgt, carry["h"], carry["c"], carry["key"])
        return loss

    return step


if __name__ == "__main__":
    demo(make_step, "jax baseline")
