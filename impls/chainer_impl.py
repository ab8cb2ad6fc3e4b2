"""The Chainer backend (Chainer 7.8.1, NumPy < 2, CPU): the shape of Chainer's own RNNForLM.

One `L.LSTM(D, H)` link per layer, called once per time step (stateful: its `h`/`c` are set
explicitly at the start of every window with `set_state`), `F.dropout` on the input of each
LSTM layer and of the output layer, one `L.Linear(H, V)` over the whole window, and
`F.softmax_cross_entropy` (mean over B*T). Training uses Chainer's own optimisers and
optimizer hooks (GradientClipping for a norm clip, GradientHardClipping for a value clip).
After every step the graph is cut with `unchain_backward()` and the next window starts from
fresh state Variables: truncated BPTT, as the ptb example does.

Input layer:
- embedding: `L.EmbedID(V, E)`, looked up once for the whole (T, B) window and split per step.
- one-hot: one-hot rows (rows of an identity matrix, built in put()) are fed to L.LSTM, whose
  `upward` Linear then multiplies them by W_x. A one-hot row times W_x is exact in floating
  point (one product by 1, every other term an exact 0), so this equals the reference's row
  gather bit for bit, and it keeps L.LSTM owning its input projection as RNNForLM does. The
  extra cost is a (B, V) @ (V, 4H) product per step, small next to the recurrent one for
  character vocabularies (V ~ 65-100).

Layouts (docs/SPEC.md §3): L.LSTM keeps `upward.W` (4H, D), `upward.b` (4H,) and `lateral.W` (4H, H)
without bias, with the 4H rows INTERLEAVED per unit: row 4j+k is unit j, gate k in
(a=g, i, f, o). The conversion below is an explicit table. L.LSTM has a single bias, so the
canonical b is held as is (no second bias to pin at 0).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import optimizer_hooks, optimizers
from chainer.backends import intel64

from . import layouts
from .config import ModelConfig, TrainConfig
from .params import Params, check_params, param_shapes
from .sampling import prefix_ids

# ---- configuration -------------------------------------------------------------------


def configure(threads: int | None, device: str) -> dict[str, str]:
    """Process-wide Chainer settings; returns facts for the results file."""
    if device != "cpu":
        raise ValueError("chainer needs cuDNN-enabled CuPy for GPU; not supported here")
    ideep = intel64.is_ideep_available()
    # iDeep (MKL-DNN) accelerates Linear and friends on CPU when installed; otherwise Chainer
    # runs plain NumPy, whose BLAS pool is sized by OMP/OPENBLAS_NUM_THREADS at import
    # (the harness sets them for `threads`; nothing can resize it afterwards without extras).
    chainer.global_config.use_ideep = "auto" if ideep else "never"
    chainer.global_config.dtype = np.dtype(np.float32)
    # Per-call shape/dtype checks of every FunctionNode cost Python time on every step; the
    # tests run with them on (configure is not called there), benchmarks with them off.
    chainer.global_config.type_check = False
    info = {"version": chainer.__version__, "numpy": np.__version__,
            "kernel": "iDeep" if ideep else "numpy"}
    try:
        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # NumPy < 1.25 has no dict mode
        info["blas"] = "?"
    env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    info["threads"] = env or ("default" if threads is None else f"{threads} requested, env unset")
    return info


# ---- canonical <-> Chainer L.LSTM layout (docs/SPEC.md §3) ---------------------------------
# L.LSTM interleaves the gates per unit: row 4j+k of upward.W (4H, D), lateral.W (4H, H) and
# upward.b (4H,) is gate k in (a = g, i, f, o) of unit j. The table row is layouts.CHAINER.


def canonical_to_chainer(w: np.ndarray, H: int) -> np.ndarray:
    """Canonical W (D, 4H) -> L.LSTM W (4H, D); canonical b (4H,) -> (4H,)."""
    if w.ndim == 1:
        return layouts.bias_to_native(layouts.CHAINER, w)
    return layouts.weight_to_native(layouts.CHAINER, w, H)


def chainer_to_canonical(w: np.ndarray, H: int) -> np.ndarray:
    """L.LSTM W (4H, D) -> canonical W (D, 4H); L.LSTM b (4H,) -> (4H,). Exact inverse."""
    if w.ndim == 1:
        return layouts.bias_to_canonical(layouts.CHAINER, w, H)
    if w.ndim != 2:
        raise layouts.LayoutError(f"chainer weight: expected (4H, D), got {w.shape}")
    return layouts.weight_to_canonical(layouts.CHAINER, w, w.shape[1], H)


# ---- the network ----------------------------------------------------------------------


class CharLSTM(chainer.Chain):
    """RNNForLM's links: optional EmbedID, one L.LSTM per layer, Linear output. Every
    initialiser is 0 (nothing random, and no forget bias of 1): load() sets all values."""

    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        H = m.hidden_size
        with self.init_scope():
            if m.input == "embedding":
                self.embed = L.EmbedID(m.vocab_size, m.embed_size, initialW=0)  # W (V, E)
            self.lstms = chainer.ChainList(*[
                L.LSTM(m.layer_input_size(l), H, lateral_init=0, upward_init=0, bias_init=0,
                       forget_bias_init=0)
                for l in range(m.num_layers)])
            self.out = L.Linear(H, m.vocab_size, initialW=0, initial_bias=0)  # W (V, H)


class _Tokens:
    """A (B, T) window in the backend's form: time-major int32 ids (T, B), their flat view
    (T*B,) for the loss, and for one-hot input the rows fed to layer 0, (T, B, V)."""

    __slots__ = ("ids", "flat", "onehot")

    def __init__(self, tokens: np.ndarray, eye: np.ndarray | None) -> None:
        self.ids = np.ascontiguousarray(np.asarray(tokens).T, dtype=np.int32)  # (T, B)
        self.flat = self.ids.reshape(-1)  # (T*B,), time-major like the logits
        self.onehot = None if eye is None else eye[self.ids]  # (T, B, V)


def _set(param: chainer.Parameter, value: np.ndarray) -> None:
    """Overwrite a parameter in place (works for NumPy and iDeep arrays), shape-checked."""
    assert param.array.shape == value.shape, f"{param.name}: {param.array.shape} vs {value.shape}"
    param.array[...] = value


class ChainerBackend:
    """Chainer L.LSTM language model, CPU (NumPy or iDeep kernels)."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0) -> None:
        if device != "cpu":
            raise ValueError("chainer needs cuDNN-enabled CuPy for GPU; not supported here")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"the chainer backend computes in float32 or float64, not {dtype}")
        self.model, self.train = model, train
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)  # dropout masks (never NumPy's global RNG)
        with chainer.using_config("dtype", self.dtype):
            self.net = CharLSTM(model)
        for name, p in self.net.namedparams():
            assert p.dtype == self.dtype, f"{name} is {p.dtype}, expected {self.dtype}"
        if chainer.config.use_ideep != "never" and intel64.is_ideep_available():
            self.net.to_intel64()
        self._eye = np.eye(model.vocab_size, dtype=self.dtype) if model.input == "onehot" else None
        self.load(params)

    # ---- parameters and data -----------------------------------------------------------
    def _native(self) -> dict[str, chainer.Parameter]:
        """Canonical name -> the Chainer parameter that holds it."""
        n = self.net
        out: dict[str, chainer.Parameter] = {}
        if self.model.input == "embedding":
            out["embed"] = n.embed.W  # (V, E), same layout
        for l, lstm in enumerate(n.lstms):
            out[f"lstm.{l}.W_x"] = lstm.upward.W  # (4H, D_l) interleaved
            out[f"lstm.{l}.W_h"] = lstm.lateral.W  # (4H, H) interleaved
            out[f"lstm.{l}.b"] = lstm.upward.b  # (4H,) interleaved
        out["out.W"] = n.out.W  # (V, H): transposed
        out["out.b"] = n.out.b  # (V,)
        return out

    def _to_native(self, name: str, value: np.ndarray) -> np.ndarray:
        H = self.model.hidden_size
        if name.startswith("lstm."):
            return canonical_to_chainer(value, H)
        if name == "out.W":
            return value.T
        return value

    def _to_canonical(self, name: str, value: np.ndarray) -> np.ndarray:
        H = self.model.hidden_size
        value = np.asarray(value, np.float64)
        if name.startswith("lstm."):
            return chainer_to_canonical(value, H)
        if name == "out.W":
            return np.ascontiguousarray(value.T)
        return value.copy()

    def load(self, params: Params) -> None:
        check_params(self.model, params)
        native = self._native()
        assert set(native) == set(param_shapes(self.model))
        for name, p in native.items():
            _set(p, self._to_native(name, np.asarray(params[name], np.float64)).astype(self.dtype))
        self.opt = self._make_optimizer()  # fresh update rules: t = 0, no moments

    def _make_optimizer(self) -> chainer.Optimizer:
        o, clip = self.train.optimizer, self.train.clip
        if o.name == "sgd":
            opt = optimizers.SGD(lr=o.lr)
        elif o.name == "adam":  # eps added to sqrt(v) before bias correction (registry Deviation)
            opt = optimizers.Adam(alpha=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps)
        elif o.name == "rmsprop":  # eps outside the root: docs/SPEC.md §4 exactly
            opt = optimizers.RMSprop(lr=o.lr, alpha=o.alpha, eps=o.eps, eps_inside_sqrt=False)
        elif o.name == "adagrad":  # accumulator starts at 0, eps outside the root: docs/SPEC.md §4
            opt = optimizers.AdaGrad(lr=o.lr, eps=o.eps)
        else:
            raise ValueError(f"unknown optimizer {o.name!r}")
        opt.setup(self.net)
        if clip.kind == "norm":  # one global norm over every parameter's gradient
            opt.add_hook(optimizer_hooks.GradientClipping(clip.value))
        elif clip.kind == "value":
            opt.add_hook(optimizer_hooks.GradientHardClipping(-clip.value, clip.value))
        return opt

    def params(self) -> Params:
        return {k: self._to_canonical(k, np.asarray(p.array)) for k, p in self._native().items()}

    def _grads(self) -> Params:
        return {k: self._to_canonical(k, np.asarray(p.grad)) for k, p in self._native().items()}

    def put(self, tokens: np.ndarray) -> _Tokens:
        return _Tokens(tokens, self._eye)

    def state(self, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array(h, dtype=self.dtype), np.array(c, dtype=self.dtype)  # (L, B, H) each

    def fetch_state(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.array(state[0], np.float64), np.array(state[1], np.float64)

    def sync(self) -> None:
        pass  # NumPy / iDeep kernels run synchronously on the calling thread

    def value(self, x: Any) -> float:
        return float(x)

    # ---- forward ----------------------------------------------------------------------
    def _mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Inverted-dropout mask, already scaled by 1/(1-p), as F.dropout's `mask` expects."""
        p = self.model.dropout
        return (self.rng.random(shape) >= p).astype(self.dtype) * self.dtype.type(1.0 / (1.0 - p))

    def _set_state(self, state: Any) -> None:
        h, c = state
        for l, lstm in enumerate(self.net.lstms):
            lstm.set_state(chainer.Variable(c[l], requires_grad=False),
                           chainer.Variable(h[l], requires_grad=False))

    def _final_state(self) -> tuple[np.ndarray, np.ndarray]:
        lstms = self.net.lstms
        return (np.stack([np.asarray(s.h.array) for s in lstms]),  # (L, B, H)
                np.stack([np.asarray(s.c.array) for s in lstms]))

    def _window(self, tok: _Tokens, state: Any, train: bool) -> chainer.Variable:
        """Run the window from `state`; returns logits (T*B, V), time-major. The links keep
        the final state. Call under the matching chainer config (train / backprop)."""
        m, net = self.model, self.net
        T, B = tok.ids.shape
        H, p = m.hidden_size, m.dropout
        drop = train and p > 0
        self._set_state(state)
        x0 = net.embed(tok.ids) if m.input == "embedding" else tok.onehot  # (T, B, D0)
        if drop:
            x0 = F.dropout(x0, p, mask=self._mask(x0.shape))
        xs = F.separate(x0, axis=0) if isinstance(x0, chainer.Variable) else x0  # T x (B, D0)
        masks = [self._mask((T, B, H)) if drop else None for _ in range(1, m.num_layers)]
        tops = []
        for t in range(T):
            x = xs[t]
            for l, lstm in enumerate(net.lstms):
                if l > 0 and drop:
                    x = F.dropout(x, p, mask=masks[l - 1][t])
                x = lstm(x)  # (B, H); the link now holds (h_t, c_t)
            tops.append(x)
        y = F.stack(tops, axis=0)  # (T, B, H)
        if drop:
            y = F.dropout(y, p, mask=self._mask(y.shape))
        return net.out(F.reshape(y, (T * B, H)))  # (T*B, V)

    def _logits_bt(self, logits: chainer.Variable, tok: _Tokens) -> np.ndarray:
        T, B = tok.ids.shape
        return np.ascontiguousarray(np.asarray(logits.array).reshape(T, B, -1).transpose(1, 0, 2))

    def forward(self, tokens: _Tokens, state: Any) -> tuple[np.ndarray, Any]:
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            logits = self._window(tokens, state, train=False)
        return self._logits_bt(logits, tokens), self._final_state()  # (B, T, V)

    def eval_step(self, tokens: _Tokens, targets: _Tokens, state: Any) -> tuple[Any, Any]:
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            logits = self._window(tokens, state, train=False)
            loss = F.softmax_cross_entropy(logits, targets.flat)  # mean over T*B
        return loss.array, self._final_state()

    # ---- training ----------------------------------------------------------------------
    def _train_loss(self, tokens: _Tokens, targets: _Tokens, state: Any
                    ) -> tuple[chainer.Variable, chainer.Variable]:
        """Forward in train mode and backward; parameter grads are filled in."""
        self.net.cleargrads()
        with chainer.using_config("train", True):
            logits = self._window(tokens, state, train=True)
            loss = F.softmax_cross_entropy(logits, targets.flat)
            loss.backward()
        return loss, logits

    def loss_and_grads(self, tokens: _Tokens, targets: _Tokens, state: Any
                       ) -> tuple[float, np.ndarray, Any, Params]:
        loss, logits = self._train_loss(tokens, targets, state)
        loss.unchain_backward()
        return (float(loss.array), self._logits_bt(logits, tokens).astype(np.float64),
                self._final_state(), self._grads())

    def train_step(self, tokens: _Tokens, targets: _Tokens, state: Any) -> tuple[Any, Any]:
        loss, _ = self._train_loss(tokens, targets, state)
        self.opt.update()  # hooks clip first, then every parameter's update rule runs
        loss.unchain_backward()  # truncated BPTT: drop the window's graph
        # The final state is plain arrays: the next window wraps them in fresh Variables,
        # so no gradient can flow across windows.
        return loss.array, self._final_state()

    # ---- generation (docs/SPEC.md §5) ----------------------------------------------------------
    def _draw(self, logits: np.ndarray, temperature: float, top_k: int, u: float) -> int:
        """One token id from (V,) logits: impls.sampling's rule, computed with Chainer."""
        if temperature == 0:
            return int(np.argmax(logits))  # first maximum: lowest id on ties
        V = logits.shape[-1]
        z = logits / logits.dtype.type(temperature)
        if 0 < top_k < V:
            kth = np.partition(z, V - top_k)[V - top_k]  # the k-th largest
            z = np.where(z >= kth, z, -np.inf).astype(logits.dtype)  # ties kept
        probs = F.softmax(z[None], axis=1).array[0]  # (V,)
        cdf = np.cumsum(probs, dtype=np.float64)
        i = int(np.searchsorted(cdf, u, side="right"))
        if i >= V:  # rounding left cdf[-1] <= u
            i = int(np.nonzero(probs)[0][-1])
        return i

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        m, net = self.model, self.net
        prefix = prefix_ids(prefix)
        zeros = np.zeros((m.num_layers, 1, m.hidden_size), self.dtype)
        out = np.empty(n, np.int64)
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            self._set_state((zeros, zeros))  # then the links carry the state, as RNNForLM does

            def step(token: int) -> np.ndarray:
                if m.input == "embedding":
                    x = net.embed(np.array([token], np.int32))  # (1, E)
                else:
                    x = self._eye[token:token + 1]  # (1, V)
                for lstm in net.lstms:
                    x = lstm(x)
                return np.asarray(net.out(x).array)[0]  # (V,)

            for token in prefix:
                logits = step(int(token))
            for k in range(n):
                out[k] = self._draw(logits, temperature, top_k, float(uniforms[k]))
                if k + 1 < n:
                    logits = step(int(out[k]))
        return out
