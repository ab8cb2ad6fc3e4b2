"""The JAX train, eval and generate steps a user would write by hand: an LSTM cell under
lax.scan per layer, optax's integer-label softmax cross-entropy; train: jax.value_and_grad,
optax clip + optimiser, the whole step under jax.jit; eval: the forward and loss under jax.jit;
generate: a jitted one-step function (the forward from the given state and a
jax.random.categorical draw) called from a Python loop, once for the prefix and once per
token, each token to the host as it comes (not the whole loop in one lax.scan program: that
is the jax backend's optimisation, which this baseline is there to measure). The yardstick of
the jax and flax backends (harness/commands/baselines.py).

    make_step(model_config, batch, seq_len, train=None, seed=0) -> step       # one train step
    make_eval(model_config, batch, seq_len, train=None, seed=0) -> step       # one eval step
    make_generate(model_config, 1, seq_len, train=None, seed=0) -> step   # seq_len tokens

Train and eval's step() returns the mean cross-entropy as a 0-d jax.Array; float() on it waits
for it. Generate's returns the sum of the drawn ids as an int, its `tokens` the ids
(_common.GenerateStep)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import (DEFAULT_TRAIN, TEMPERATURE, GenerateStep, ModelConfig, TrainConfig,  # noqa: E402
                     check_generate, demo, prefix, window)

Params = dict[str, Any]


def init(m: ModelConfig, key: jax.Array) -> Params:
    """Uniform(-0.1, 0.1) weights, zero biases; W_x (D, 4H), W_h (H, 4H), out W (H, V)."""
    u = lambda k, s: jax.random.uniform(k, s, jnp.float32, -0.1, 0.1)  # noqa: E731
    keys = iter(jax.random.split(key, 3 * m.num_layers + 3))
    H = m.hidden_size
    p: Params = {"lstm": [{"Wx": u(next(keys), (m.layer_input_size(l), 4 * H)),
                           "Wh": u(next(keys), (H, 4 * H)), "b": jnp.zeros(4 * H)}
                          for l in range(m.num_layers)],
                 "W": u(next(keys), (H, m.vocab_size)), "b": jnp.zeros(m.vocab_size)}
    if m.input == "embedding":
        p["embed"] = u(next(keys), (m.vocab_size, m.embed_size))
    return p


def forward(m: ModelConfig, p: Params, tok: jax.Array, h0: jax.Array, c0: jax.Array,
            key: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """tok (T, B) -> logits (T, B, V), h and c (L, B, H). Inverted dropout where key is given."""
    x = jax.nn.one_hot(tok, m.vocab_size) if m.input == "onehot" else p["embed"][tok]  # (T, B, D)
    keys = None if key is None or m.dropout == 0 else jax.random.split(key, m.num_layers + 1)

    def drop(x: jax.Array, i: int) -> jax.Array:
        if keys is None:
            return x
        keep = jax.random.bernoulli(keys[i], 1 - m.dropout, x.shape)
        return jnp.where(keep, x / (1 - m.dropout), 0)

    hs, cs = [], []
    for l, lp in enumerate(p["lstm"]):
        xw = drop(x, l) @ lp["Wx"] + lp["b"]  # (T, B, 4H)

        def cell(carry: tuple[jax.Array, jax.Array], xw_t: jax.Array, Wh: jax.Array = lp["Wh"]
                 ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
            h, c = carry  # (B, H) each
            i, f, g, o = jnp.split(xw_t + h @ Wh, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        (h, c), x = jax.lax.scan(cell, (h0[l], c0[l]), xw)  # x: (T, B, H)
        hs.append(h)
        cs.append(c)
    return drop(x, -1) @ p["W"] + p["b"], jnp.stack(hs), jnp.stack(cs)


def _data(m: ModelConfig, batch: int, seq_len: int, seed: int
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
    tok, tgt = (jnp.asarray(a, jnp.int32) for a in window(m, batch, seq_len, seed))  # (T, B)
    return tok, tgt, jnp.zeros((m.num_layers, batch, m.hidden_size))  # zeros (L, B, H)


def make_step(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], jax.Array]:
    """One train step: forward from the carried state, mean cross-entropy, value_and_grad,
    optax clip + update, the state carried on (truncated BPTT: no gradient crosses windows)."""
    m, tc = model_config, train or DEFAULT_TRAIN

    def loss_fn(p: Params, tok: jax.Array, tgt: jax.Array, h0: jax.Array, c0: jax.Array,
                key: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        logits, h, c = forward(m, p, tok, h0, c0, key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()
        return loss, (h, c)

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
    tok, tgt, zeros = _data(m, batch, seq_len, seed)
    carry = {"p": p, "s": tx.init(p), "key": jax.random.key(seed + 1), "h": zeros, "c": zeros}

    def step() -> jax.Array:
        carry["p"], carry["s"], loss, carry["h"], carry["c"], carry["key"] = train_step(
            carry["p"], carry["s"], tok, tgt, carry["h"], carry["c"], carry["key"])
        return loss

    return step


def make_eval(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], jax.Array]:
    """One eval step: the forward (no dropout) from the carried state and the mean
    cross-entropy, one jitted function."""
    m = model_config

    @jax.jit
    def eval_step(p, tok, tgt, h0, c0):  # type: ignore[no-untyped-def]
        logits, h, c = forward(m, p, tok, h0, c0, None)  # (T, B, V)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean(), h, c

    p = init(m, jax.random.key(seed))
    tok, tgt, zeros = _data(m, batch, seq_len, seed)
    state = {"h": zeros, "c": zeros}

    def step() -> jax.Array:
        loss, state["h"], state["c"] = eval_step(p, tok, tgt, state["h"], state["c"])
        return loss

    return step


def make_generate(model_config: ModelConfig, batch: int, seq_len: int,
                  train: TrainConfig | None = None, seed: int = 0) -> GenerateStep:
    """One generate step (batch 1): from a zero state the jitted one_step on the 8-token
    prefix (P, 1) gives the first token, then one_step on each drawn (1, 1) token, fed back as
    the device array it is (all but the last); each id to the host with .item(). one_step
    draws with jax.random.categorical on the last logits / temperature 1, splitting a key
    carried from draw to draw from jax.random.key(seed + 1), so a seed gives the same text.
    one_step compiles twice on the first call (prefix and single-token shapes)."""
    m = model_config
    check_generate(batch, seq_len)

    @jax.jit
    def one_step(p, tok, h0, c0, key):  # type: ignore[no-untyped-def]
        logits, h, c = forward(m, p, tok, h0, c0, None)  # (t, 1, V)
        key, sub = jax.random.split(key)
        return jax.random.categorical(sub, logits[-1:] / TEMPERATURE), h, c, key  # (1, 1)

    p = init(m, jax.random.key(seed))
    pre = jnp.asarray(prefix(m, seed).reshape(-1, 1), jnp.int32)  # (P, 1)
    zeros = jnp.zeros((m.num_layers, 1, m.hidden_size))  # (L, 1, H)
    keys = {"key": jax.random.key(seed + 1)}

    def draw() -> list[int]:
        nxt, h, c, keys["key"] = one_step(p, pre, zeros, zeros, keys["key"])
        out = [nxt.item()]
        for _ in range(seq_len - 1):
            nxt, h, c, keys["key"] = one_step(p, nxt, h, c, keys["key"])
            out.append(nxt.item())
        return out

    return GenerateStep(draw)


if __name__ == "__main__":
    demo(make_step, "jax baseline", make_eval, make_generate)
