"""The Flax backend (`flax`): JAX as most of its users write a model, beside the hand-written
pure functions of `jax`. Flax's current API, NNX (flax >= 0.10):

- `CharLSTM(nnx.Module)`: `nnx.Embed` or `jax.nn.one_hot`, per layer an
  `nnx.OptimizedLSTMCell` (dense_i: kernel (D, 4H), no bias; dense_h: kernel (H, 4H) and the
  one bias; gates i, f, g, o: the row layouts.FLAX_OPTIMIZED) driven over time by `nnx.RNN`
  (an `nnx.scan`), `nnx.Dropout` in front of each LSTM layer and of the output layer
  (docs/SPEC.md §1), `nnx.Linear` to the logits. Time-major throughout: tokens (T, B).
- optax optimisers chained after optax's clipping (`clip_by_global_norm`, `clip`), held by
  `nnx.Optimizer`; the train step (forward, `nnx.value_and_grad`, clip, update) is one
  `nnx.jit` function, as are eval and the forward pass.
- Generation: one compiled program for the whole sequence (`_generate`: nnx.split, then
  nnx.merge and lax.scan over the module's own cells inside `jax.jit`), drawing with
  docs/SPEC.md §5's rule on the device.

optax's formulas against docs/SPEC.md §4: `adam` (eps_root = 0) and `sgd` are SPEC's; `rmsprop` is
configured with eps_in_sqrt=False, which is SPEC's g / (sqrt(v) + eps) (optax's default puts
eps inside the root); `adagrad` has no such switch: optax adds eps inside the root,
g * rsqrt(s + eps) — the documented deviation FLAX_DEVIATIONS below (registry), checked exactly
against NumpyBackend(eps_form="eps_inside").
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import jax_impl, layouts
from .config import ModelConfig, TrainConfig
from .params import Params, check_params, param_shapes
from .sampling import prefix_ids

State = tuple[jax.Array, jax.Array]  # (h, c), each (L, B, H)


def configure(threads: int | None, device: str) -> dict[str, str]:
    """The jax backend's process setup (XLA CPU threads), plus Flax's and optax's versions."""
    if device != "cpu":
        raise ValueError(f"the flax backend runs on the CPU only here, got device {device!r}")
    import flax
    info = jax_impl.configure(threads, device)
    info["jax"] = info.pop("version")
    info.update({"version": flax.__version__, "optax": optax.__version__})
    return info


def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    return {"kernel": "XLA:CPU (nnx.RNN scan)"}


# ---- the model ------------------------------------------------------------------------

class CharLSTM(nnx.Module):
    """tokens (T, B) -> logits (T, B, V) and the final (h, c), each (L, B, H)."""

    def __init__(self, m: ModelConfig, rngs: nnx.Rngs) -> None:
        self.m = m
        H = m.hidden_size
        self.embed = nnx.Embed(m.vocab_size, m.embed_size, rngs=rngs) if m.input == "embedding" else None
        self.cells = nnx.List([nnx.OptimizedLSTMCell(m.layer_input_size(l), H, rngs=rngs)
                               for l in range(m.num_layers)])
        self.rnns = nnx.List([nnx.RNN(cell, time_major=True, return_carry=True)
                              for cell in self.cells])
        self.drop = nnx.Dropout(m.dropout, rngs=rngs)
        self.out = nnx.Linear(H, m.vocab_size, rngs=rngs)

    def __call__(self, tok: jax.Array, h0: jax.Array, c0: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        m = self.m
        x = self.embed(tok) if self.embed is not None else jax.nn.one_hot(tok, m.vocab_size)  # (T, B, D0)
        hs, cs = [], []
        for l, rnn in enumerate(self.rnns):
            # Flax's LSTM carry is (c, h)
            (c, h), x = rnn(self.drop(x), initial_carry=(c0[l], h0[l]))  # x (T, B, H)
            hs.append(h)
            cs.append(c)
        return self.out(self.drop(x)), jnp.stack(hs), jnp.stack(cs)

    def slots(self) -> list[tuple[str, nnx.Param, bool]]:
        """(canonical name, the nnx.Param holding it, gate axis last) in canonical order."""
        out = [("embed", self.embed.embedding, False)] if self.embed is not None else []
        for l, cell in enumerate(self.cells):
            out += [(f"lstm.{l}.W_x", cell.dense_i.kernel, True),
                    (f"lstm.{l}.W_h", cell.dense_h.kernel, True),
                    (f"lstm.{l}.b", cell.dense_h.bias, True)]
        return out + [("out.W", self.out.kernel, False), ("out.b", self.out.bias, False)]


def make_tx(train: TrainConfig) -> optax.GradientTransformation:
    """optax's clip then optax's optimiser (docs/SPEC.md §4 values; see the module docstring)."""
    o, c = train.optimizer, train.clip
    if o.name == "sgd":
        opt = optax.sgd(o.lr)
    elif o.name == "adam":
        opt = optax.adam(o.lr, b1=o.beta1, b2=o.beta2, eps=o.eps)
    elif o.name == "rmsprop":
        opt = optax.rmsprop(o.lr, decay=o.alpha, eps=o.eps, eps_in_sqrt=False)
    elif o.name == "adagrad":
        opt = optax.adagrad(o.lr, initial_accumulator_value=0.0, eps=o.eps)
    else:
        raise ValueError(f"unknown optimizer {o.name!r}")
    if c.kind == "norm":
        return optax.chain(optax.clip_by_global_norm(c.value), opt)
    if c.kind == "value":
        return optax.chain(optax.clip(c.value), opt)
    return opt


def _loss(logits: jax.Array, tgt: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()  # over T*B


@nnx.jit
def _forward(model: CharLSTM, tok: jax.Array, h0: jax.Array, c0: jax.Array):  # type: ignore[no-untyped-def]
    return model(tok, h0, c0)


@nnx.jit
def _eval_step(model: CharLSTM, tok: jax.Array, tgt: jax.Array, h0: jax.Array, c0: jax.Array):  # type: ignore[no-untyped-def]
    logits, h, c = model(tok, h0, c0)
    return _loss(logits, tgt), h, c


def _loss_fn(model: CharLSTM, tok: jax.Array, tgt: jax.Array, h0: jax.Array, c0: jax.Array):  # type: ignore[no-untyped-def]
    logits, h, c = model(tok, h0, c0)
    return _loss(logits, tgt), (logits, h, c)


@nnx.jit
def _grads(model: CharLSTM, tok: jax.Array, tgt: jax.Array, h0: jax.Array, c0: jax.Array):  # type: ignore[no-untyped-def]
    (loss, (logits, h, c)), g = nnx.value_and_grad(_loss_fn, has_aux=True)(model, tok, tgt, h0, c0)
    return loss, logits, h, c, g


@nnx.jit
def _train_step(model: CharLSTM, opt: nnx.Optimizer, tok: jax.Array, tgt: jax.Array,  # type: ignore[no-untyped-def]
                h0: jax.Array, c0: jax.Array):
    (loss, (_, h, c)), g = nnx.value_and_grad(_loss_fn, has_aux=True)(model, tok, tgt, h0, c0)
    opt.update(model, g)  # clip, then the optimiser (one optax chain)
    return loss, h, c


# graphdef as an argument, not static: it holds no arrays, so jax keys its cache on the
# argument's tree structure, where a static graphdef is hashed and compared on every call
# (0.7 ms of a 2.7 ms call at char-rnn's sizes)
@functools.partial(jax.jit, static_argnames=("greedy", "top_k"))
def _generate(graphdef: Any, state: Any, prefix: jax.Array, uniforms: jax.Array,  # type: ignore[no-untyped-def]
              temperature: jax.Array, greedy: bool, top_k: int):
    """prefix (P,) int32, uniforms (n,) -> (n,) int32: the whole generation in one XLA program,
    as Flax's docs write a loop over a module: nnx.split outside, nnx.merge inside the jitted
    function, and lax.scan over the module's own layers (nnx.Embed, each
    nnx.OptimizedLSTMCell called on one step, nnx.Linear): a scan feeds the prefix, a second
    one draws the n tokens with docs/SPEC.md §5's rule (jax_impl._draw, the `jax` backend's).
    Measured at char-rnn's sizes (docs/speed.md): 13 us a character, the `jax` backend's time,
    against 540 for an nnx.jit one-token step per token."""
    model = nnx.merge(graphdef, state)
    m, L = model.m, len(model.cells)

    def step(carry, tok):  # type: ignore[no-untyped-def]
        hs, cs = carry  # L x (1, H) each
        x = model.embed(tok[None]) if model.embed is not None else jax.nn.one_hot(tok[None], m.vocab_size)  # (1, D)
        nh, nc = [], []
        for l, cell in enumerate(model.cells):
            (c, h), x = cell((cs[l], hs[l]), x)  # Flax's LSTM carry is (c, h)
            nh.append(h)
            nc.append(c)
        return (tuple(nh), tuple(nc)), model.out(x)[0]  # logits (V,)

    zero = tuple(jnp.zeros((1, m.hidden_size), jnp.float32) for _ in range(L))
    # all but the last prefix token only advance the state; the first draw step feeds the last
    (hs, cs), _ = jax.lax.scan(lambda c, t: (step(c, t)[0], None), (zero, zero), prefix[:-1])

    def draw(carry, u):  # type: ignore[no-untyped-def]
        tok, st = carry
        st, logits = step(st, tok)
        nxt = jax_impl._draw(logits, u, temperature, greedy, top_k)
        return (nxt, st), nxt

    _, toks = jax.lax.scan(draw, (prefix[-1], (hs, cs)), uniforms)
    return toks


# ---- the backend ---------------------------------------------------------------------

def _to_flax(w: np.ndarray, H: int) -> np.ndarray:
    """Canonical gate-axis tensor -> dense_i/dense_h kernel or bias (same i,f,g,o blocks, but
    through the layout table so a change of Flax's order is one row)."""
    return layouts.bias_to_native(layouts.FLAX_OPTIMIZED, w) if w.ndim == 1 else \
        layouts.weight_to_native(layouts.FLAX_OPTIMIZED, w, H)


def _from_flax(w: np.ndarray, H: int) -> np.ndarray:
    return layouts.bias_to_canonical(layouts.FLAX_OPTIMIZED, w, H) if w.ndim == 1 else \
        layouts.weight_to_canonical(layouts.FLAX_OPTIMIZED, w, w.shape[0], H)


class FlaxBackend:
    """The char-LSTM as a Flax NNX module with optax, steps under nnx.jit."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 precision: str = "float32") -> None:
        if device != "cpu":
            raise ValueError(f"the flax backend runs on the CPU only here, got device {device!r}")
        if dtype != "float32":
            raise ValueError(f"the flax backend computes in float32, got dtype {dtype!r}")
        if precision != "float32":
            raise ValueError(f"the flax backend has only precision float32, got {precision!r}")
        self.model, self.train = model, train
        self.dtype = np.dtype(np.float32)
        self.net = CharLSTM(model, nnx.Rngs(params=0, dropout=seed))
        self._tx = make_tx(train)
        shapes = param_shapes(model)
        slots = self.net.slots()
        assert [s[0] for s in slots] == list(shapes)
        for name, var, _ in slots:
            assert tuple(var.get_value().shape) == shapes[name], (name, var.get_value().shape, shapes[name])
        self._last: Any = None
        self._split: Any = None
        self._steps: dict[str, Any] = {}
        self._training: bool | None = None
        self.load(params)

    def _mode(self, training: bool) -> None:
        """nnx's train()/eval() walk the whole module in Python (0.8 ms at char-rnn's sizes):
        only when the mode changes."""
        if self._training is not training:
            self.net.train() if training else self.net.eval()
            self._training = training
            self._split = None  # the mode is part of the module's structure
            self._steps = {}

    def _step(self, name: str) -> Any:
        """The eval or train step as `nnx.cached_partial` (Flax's way for a step called in a
        loop): nnx.jit's walk of the module (and optimiser) graph is done once, not per call
        (smoke sizes: 2.3 -> 0.4 ms an eval step, 3.1 -> 1.3 ms a train step). Taken again
        after a change of mode or parameters (_mode, load), which changes that graph."""
        if name not in self._steps:
            self._steps[name] = (nnx.cached_partial(_eval_step, self.net) if name == "eval" else
                                 nnx.cached_partial(_train_step, self.net, self.opt))
        return self._steps[name]

    # ---- parameters and data -----------------------------------------------------------
    def load(self, params: Params) -> None:
        check_params(self.model, params)
        H = self.model.hidden_size
        for name, var, gates in self.net.slots():
            w = np.asarray(params[name], np.float64)
            w = _to_flax(w, H) if gates else w
            assert w.shape == tuple(var.get_value().shape), (name, w.shape, var.get_value().shape)
            var.set_value(jnp.asarray(w, jnp.float32))
        self.opt = nnx.Optimizer(self.net, self._tx, wrt=nnx.Param)  # fresh state, count 0
        self._split = None  # generate's nnx.split of the module, taken again after a change
        self._steps: dict[str, Any] = {}  # the cached steps hold the old optimiser

    def _canonical(self, values: list[Any]) -> Params:
        H = self.model.hidden_size
        out: Params = {}
        for (name, _, gates), v in zip(self.net.slots(), values):
            w = np.array(v, np.float64)
            out[name] = _from_flax(w, H) if gates else w
        return out

    def params(self) -> Params:
        return self._canonical([var.get_value() for _, var, _ in self.net.slots()])

    def put(self, tokens: np.ndarray) -> jax.Array:
        return jnp.asarray(np.ascontiguousarray(np.asarray(tokens).T, dtype=np.int32))  # (T, B)

    def state(self, h: np.ndarray, c: np.ndarray) -> State:
        return jnp.asarray(np.asarray(h, np.float32)), jnp.asarray(np.asarray(c, np.float32))

    def fetch_state(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        return np.array(state[0], np.float64), np.array(state[1], np.float64)

    def sync(self) -> None:
        jax.block_until_ready(self._last)

    def value(self, x: Any) -> float:
        return float(x)

    # ---- compute -------------------------------------------------------------------------
    def forward(self, tokens: jax.Array, state: State) -> tuple[np.ndarray, State]:
        self._mode(False)
        logits, h, c = _forward(self.net, tokens, state[0], state[1])
        self._last = (h, c)
        return np.asarray(logits, np.float64).transpose(1, 0, 2), (h, c)  # (B, T, V)

    def eval_step(self, tokens: jax.Array, targets: jax.Array, state: State) -> tuple[jax.Array, State]:
        self._mode(False)
        loss, h, c = self._step("eval")(tokens, targets, state[0], state[1])
        self._last = (loss, h, c)
        return loss, (h, c)

    def loss_and_grads(self, tokens: jax.Array, targets: jax.Array, state: State
                       ) -> tuple[float, np.ndarray, State, Params]:
        self._mode(True)
        loss, logits, h, c, g = _grads(self.net, tokens, targets, state[0], state[1])
        grads = nnx.merge(nnx.graphdef(self.net), g, nnx.state(self.net, nnx.Not(nnx.Param)))
        return (float(loss), np.asarray(logits, np.float64).transpose(1, 0, 2), (h, c),
                self._canonical([var.get_value() for _, var, _ in grads.slots()]))

    def train_step(self, tokens: jax.Array, targets: jax.Array, state: State) -> tuple[jax.Array, State]:
        self._mode(True)
        self._split = None  # the update replaces the parameters' arrays
        loss, h, c = self._step("train")(tokens, targets, state[0], state[1])
        self._last = (loss, h, c)
        return loss, (h, c)

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        prefix = prefix_ids(prefix, np.int32)  # (P,)
        if n == 0:
            return np.empty(0, np.int64)
        if self._split is None:  # nnx.split walks the module in Python: 1.4 ms, 7 us a character
            self._split = nnx.split(self.net)  # (structure: static, arrays); until they change
        graphdef, state = self._split
        toks = _generate(graphdef, state, jnp.asarray(prefix), jnp.asarray(np.asarray(uniforms[:n], np.float32)),
                         jnp.asarray(temperature, jnp.float32), greedy=temperature == 0, top_k=int(top_k))
        return np.asarray(toks, np.int64)
