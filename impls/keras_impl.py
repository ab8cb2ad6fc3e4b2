"""Keras 3 on its other engines: `keras-jax` and `keras-torch` (KERAS_BACKEND=jax / torch).

The one Keras model definition the `tensorflow` backend also builds (impls/keras_model.py:
`CharLSTM`, its slots and layout conversion), with the same native optimisers
(impls/keras_optimizers.py: `keras.optimizers`, native `global_clipnorm` / `clipvalue`). Only
the training step is engine-specific, as
Keras 3's own guides write it for a custom step:
- jax: `model.stateless_call` + `jax.value_and_grad` + `optimizer.stateless_apply`, the whole
  step under `jax.jit` (Keras' LSTM is a `lax.scan` there); eval and the one-token generation
  step are jitted too;
- torch: eager `model(...)`, `loss.backward()`, `optimizer.apply(grads)` under `no_grad`
  (Keras' torch LSTM on the CPU: one input-projection matmul per window, then a Python loop
  of the recurrent product and gate ops per step).

The LSTM layers keep Keras' default `use_cudnn="auto"`, as a Keras user's model does: on the
torch engine that takes Keras' own torch LSTM (cuDNN on CUDA; on the CPU the input projection
hoisted out of the loop), on jax the generic `lax.scan` loop. `use_cudnn=False` would force the
generic per-step cell on torch too (input product inside the loop): measured 1.4x slower to
train and 2.2x slower to evaluate at char-rnn's sizes, same losses.

Keras picks its engine when it is first imported, so a process hosts one of these backends
only if KERAS_BACKEND was set before that: the registry entries carry env_vars, the harness
starts their workers with them, and tests run them in a child process.

Generation: on jax one compiled program (the model's stateless_call over the prefix, then a
lax.scan of one-token stateless_calls drawing with docs/SPEC.md §5's rule: 17 us a character at
char-rnn's sizes, against ~250 for a jitted call per token); on torch each token through the
layers' LSTMCells eagerly, drawn on the host with impls.sampling.draw (0.88 ms a token; the
per-token step under torch.compile took 0.21 ms but compiles anew, 6 s, for every backend
object, since Dynamo guards on the Keras layers, and a whole-loop while_loop cannot capture
Keras' layer call: docs/speed.md).

The optimisers are Keras' own, so the `tensorflow` backend's documented formula differences
(registry.KERAS_DEVIATIONS: Adam's epsilon-hat, epsilon inside the root for RMSprop and
Adagrad) hold here unchanged: the update code is engine-independent keras.ops.
"""
from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # if Keras imports TensorFlow for utilities

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

from .config import ModelConfig, TrainConfig  # noqa: E402
from .keras_model import CharLSTM  # noqa: E402
from .keras_optimizers import make_optimizer  # noqa: E402
from .params import Params, check_params  # noqa: E402
from .registry import BackendError  # noqa: E402
from .sampling import draw, prefix_ids  # noqa: E402

ENGINE = keras.backend.backend()  # fixed for this process at Keras' import
ENGINES = ("jax", "torch")
if ENGINE not in ENGINES:
    raise ImportError(f"Keras runs on the {ENGINE!r} engine in this process; keras-jax / keras-torch "
                      "need KERAS_BACKEND=jax / torch set before Keras is imported")

if ENGINE == "jax":
    import jax

    from . import jax_impl
else:
    import torch


def configure(threads: int | None, device: str) -> dict[str, str]:
    """Thread pools of the engine Keras runs on, and facts for the results file."""
    if device != "cpu":
        raise ValueError(f"keras-{ENGINE} runs on the CPU only here, got device {device!r}")
    info = {"version": keras.__version__, "engine": ENGINE}
    if ENGINE == "jax":
        from . import jax_impl
        info.update({f"jax_{k}" if k != "kernel" else k: v
                     for k, v in jax_impl.configure(threads, device).items()})
        info["engine_version"] = jax.__version__
    else:
        if threads:
            torch.set_num_threads(threads)
        info["engine_version"] = torch.__version__
        info["threads"] = str(torch.get_num_threads())
    info.update(kernel_info(f"keras-{ENGINE}", device))
    return info


def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    """Keras' LSTM on the CPU: a lax.scan compiled by XLA (jax), or Keras' torch LSTM, one
    input-projection matmul per window and per-step recurrent torch ops (torch)."""
    if ENGINE == "jax":
        return {"kernel": "XLA:CPU (Keras LSTM as lax.scan)"}
    return {"kernel": "Keras torch LSTM: hoisted input projection, per-step torch ops (CPU BLAS)"}


def _loss(logits: Any, tgt: Any) -> Any:
    """Mean cross-entropy over all B*T positions; logits (B, T, V), tgt (B, T)."""
    return ops.mean(ops.sparse_categorical_crossentropy(tgt, logits, from_logits=True))


# ---- the backend ------------------------------------------------------------------------

class KerasBackend:
    """The Keras 3 char-LSTM on the engine KERAS_BACKEND chose (jax or torch)."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 engine: str = "jax", precision: str = "float32") -> None:
        if engine != ENGINE:
            raise BackendError(f"keras-{engine} needs KERAS_BACKEND={engine} before Keras is imported; "
                               f"this process runs Keras on {ENGINE}")
        if device != "cpu":
            raise ValueError(f"keras-{engine} runs on the CPU only here, got device {device!r}")
        if dtype != "float32":
            raise ValueError(f"keras-{engine} computes in float32, got dtype {dtype!r}")
        if precision != "float32":
            raise ValueError(f"keras-{engine} has only precision float32, got {precision!r}")
        self.model, self.train = model, train
        self.dtype = np.dtype(np.float32)
        keras.utils.set_random_seed(seed)  # dropout seed generators derive from the layer seeds
        self.net = CharLSTM(model, seed=seed)  # use_cudnn="auto", Keras' default
        self._slots = self.net.slots()  # canonical order, shapes asserted by CharLSTM
        self._opt = make_optimizer(train)
        self._opt.build(self.net.trainable_variables)
        self._opt_init = [(v, np.array(ops.convert_to_numpy(v.value))) for v in self._opt.variables]
        index = {id(v): i for i, v in enumerate(self.net.trainable_variables)}
        self._index = [index[id(s.var)] for s in self._slots]  # slot -> trainable position
        assert len(self._index) == len(self.net.trainable_variables)
        self._last: Any = None
        if ENGINE == "jax":
            self._build_jax()
        self.load(params)

    # ---- parameters and data -------------------------------------------------------------
    def load(self, params: Params) -> None:
        check_params(self.model, params)
        self.net.assign(params)
        for v, init in self._opt_init:  # optimiser state and iteration count back to 0
            v.assign(init)
        if ENGINE == "jax":  # the jitted steps carry the values as arrays
            self._tv = [v.value for v in self.net.trainable_variables]
            self._ntv = [v.value for v in self.net.non_trainable_variables]
            self._ov = [v.value for v in self._opt.variables]

    def _values(self) -> list[Any]:
        """The trainable values in model order (the jitted arrays on jax)."""
        return self._tv if ENGINE == "jax" else [v.value for v in self.net.trainable_variables]

    def _canonical(self, values: list[Any]) -> Params:
        return {s.name: self.net.canonical(s, values[i]) for s, i in zip(self._slots, self._index)}

    def params(self) -> Params:
        return self._canonical(self._values())

    def put(self, tokens: np.ndarray) -> Any:
        return ops.convert_to_tensor(np.asarray(tokens, np.int32))  # (B, T)

    def state(self, h: np.ndarray, c: np.ndarray) -> tuple[Any, Any]:
        return (ops.convert_to_tensor(np.asarray(h, np.float32)),
                ops.convert_to_tensor(np.asarray(c, np.float32)))  # (L, B, H) each

    def fetch_state(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        return (np.array(ops.convert_to_numpy(state[0]), np.float64),
                np.array(ops.convert_to_numpy(state[1]), np.float64))

    def sync(self) -> None:
        if ENGINE == "jax" and self._last is not None:
            jax.block_until_ready(self._last)

    def value(self, x: Any) -> float:
        return float(ops.convert_to_numpy(x))

    # ---- jax: pure functions of the variable values, jitted ---------------------------------
    def _build_jax(self) -> None:
        net, opt = self.net, self._opt

        def run(tv, ntv, tok, h0, c0, training):  # type: ignore[no-untyped-def]
            (logits, h, c), ntv = net.stateless_call(tv, ntv, tok, h0, c0, training=training)
            return logits, h, c, ntv

        def loss_fn(tv, ntv, tok, tgt, h0, c0):  # type: ignore[no-untyped-def]
            logits, h, c, ntv = run(tv, ntv, tok, h0, c0, True)
            return _loss(logits, tgt), (logits, h, c, ntv)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def train_step(tv, ntv, ov, tok, tgt, h0, c0):  # type: ignore[no-untyped-def]
            (loss, (_, h, c, ntv)), g = grad_fn(tv, ntv, tok, tgt, h0, c0)
            tv, ov = opt.stateless_apply(ov, g, tv)  # native clip, then the update
            return loss, h, c, tv, ntv, ov

        def eval_step(tv, ntv, tok, tgt, h0, c0):  # type: ignore[no-untyped-def]
            logits, h, c, _ = run(tv, ntv, tok, h0, c0, False)
            return _loss(logits, tgt), h, c

        def forward(tv, ntv, tok, h0, c0):  # type: ignore[no-untyped-def]
            logits, h, c, _ = run(tv, ntv, tok, h0, c0, False)
            return logits, h, c

        def generate(tv, ntv, prefix, uniforms, temperature, greedy, top_k):  # type: ignore[no-untyped-def]
            """prefix (1, P) int32, uniforms (n,) -> (n,) int32: the prefix through the model
            once, then a lax.scan over the uniforms, each step the model's stateless_call on
            the drawn (1, 1) token with the state carried, drawn with docs/SPEC.md §5's rule
            (jax_impl._draw, the `jax` backend's), all in one program."""
            logits, h, c, _ = run(tv, ntv, prefix, h0, c0, False)  # (1, P, V)

            def draw(carry, u):  # type: ignore[no-untyped-def]
                logits, h, c = carry
                nxt = jax_impl._draw(logits, u, temperature, greedy, top_k)
                logits, h, c, _ = run(tv, ntv, nxt.reshape(1, 1), h, c, False)
                return (logits[0, -1], h, c), nxt

            _, toks = jax.lax.scan(draw, (logits[0, -1], h, c), uniforms)
            return toks

        zero = jax.numpy.zeros((self.model.num_layers, 1, self.model.hidden_size), "float32")
        h0 = c0 = zero
        self._j_generate = jax.jit(generate, static_argnames=("greedy", "top_k"))
        self._j_train = jax.jit(train_step, donate_argnums=(0, 2))
        self._j_grads = jax.jit(grad_fn)
        self._j_eval = jax.jit(eval_step)
        self._j_forward = jax.jit(forward)

    # ---- compute ---------------------------------------------------------------------------
    def _forward(self, tok: Any, h0: Any, c0: Any) -> tuple[Any, Any, Any]:
        if ENGINE == "jax":
            return self._j_forward(self._tv, self._ntv, tok, h0, c0)
        with torch.no_grad():
            return self.net(tok, h0, c0, training=False)

    def forward(self, tokens: Any, state: Any) -> tuple[np.ndarray, Any]:
        logits, h, c = self._forward(tokens, state[0], state[1])
        self._last = (h, c)
        return np.array(ops.convert_to_numpy(logits), np.float64), (h, c)  # (B, T, V)

    def eval_step(self, tokens: Any, targets: Any, state: Any) -> tuple[Any, Any]:
        if ENGINE == "jax":
            loss, h, c = self._j_eval(self._tv, self._ntv, tokens, targets, state[0], state[1])
        else:
            with torch.no_grad():
                logits, h, c = self.net(tokens, state[0], state[1], training=False)
                loss = _loss(logits, targets)
        self._last = (loss, h, c)
        return loss, (h, c)

    def _torch_grads(self, tokens: Any, targets: Any, state: Any) -> tuple[Any, Any, Any, Any, list]:
        trainable = self.net.trainable_variables
        for v in trainable:
            v.value.grad = None
        logits, h, c = self.net(tokens, state[0], state[1], training=True)
        loss = _loss(logits, targets)
        loss.backward()
        grads = [v.value.grad if v.value.grad is not None else torch.zeros_like(v.value)
                 for v in trainable]
        return loss.detach(), logits.detach(), h.detach(), c.detach(), grads

    def loss_and_grads(self, tokens: Any, targets: Any, state: Any
                       ) -> tuple[float, np.ndarray, Any, Params]:
        if ENGINE == "jax":
            (loss, (logits, h, c, self._ntv)), g = self._j_grads(
                self._tv, self._ntv, tokens, targets, state[0], state[1])
        else:
            loss, logits, h, c, g = self._torch_grads(tokens, targets, state)
        return (self.value(loss), np.array(ops.convert_to_numpy(logits), np.float64), (h, c),
                self._canonical(list(g)))

    def train_step(self, tokens: Any, targets: Any, state: Any) -> tuple[Any, Any]:
        if ENGINE == "jax":
            loss, h, c, self._tv, self._ntv, self._ov = self._j_train(
                self._tv, self._ntv, self._ov, tokens, targets, state[0], state[1])
        else:
            loss, _, h, c, grads = self._torch_grads(tokens, targets, state)
            with torch.no_grad():
                self._opt.apply(grads, self.net.trainable_variables)  # native clip, then update
        self._last = (loss, h, c)
        return loss, (h, c)

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        m = self.model
        prefix = prefix_ids(prefix).reshape(1, -1)  # (1, P)
        if ENGINE == "jax":
            if n == 0:
                return np.empty(0, np.int64)
            toks = self._j_generate(self._tv, self._ntv, self.put(prefix),
                                    jax.numpy.asarray(np.asarray(uniforms[:n], np.float32)),
                                    jax.numpy.asarray(temperature, "float32"),
                                    greedy=temperature == 0, top_k=int(top_k))
            return np.asarray(toks, np.int64)
        # torch: one token at a time through each layer's LSTMCell (the layer's own weights,
        # no time loop for one step: 0.88 against 1.28 ms a token for the LSTM layer's call)
        # and the Dense layer, eagerly, each token drawn on the host (docs/speed.md)
        H = m.hidden_size
        out = np.empty(n, np.int64)
        with torch.no_grad():
            hs = [torch.zeros(1, H) for _ in range(m.num_layers)]
            cs = [torch.zeros(1, H) for _ in range(m.num_layers)]

            def step(token: int) -> np.ndarray:
                x = self.net.inputs_of(torch.tensor([token], dtype=torch.int32))  # (1, D)
                for l, lstm in enumerate(self.net.lstms):
                    x, (hs[l], cs[l]) = lstm.cell(x, [hs[l], cs[l]], training=False)  # (1, H)
                return self.net.dense(x)[0].numpy()  # (V,)

            for t in prefix[0, :-1]:
                step(int(t))
            logits = step(int(prefix[0, -1]))
            for k in range(n):
                out[k] = draw(logits, temperature, top_k, float(uniforms[k]))
                if k + 1 < n:
                    logits = step(int(out[k]))
        return out
