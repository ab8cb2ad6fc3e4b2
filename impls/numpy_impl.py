"""The NumPy backend: the float64 reference (the oracle every other backend is checked
against) and, in float32, the "no framework" benchmark entry.

Hand-written forward and BPTT. Internally time-major: a window is (T, B, ...). Per layer,
the whole window's input projection is one matrix product (or a row gather for one-hot
input); the time loop only does the recurrent (B, H) @ (H, 4H) product and elementwise
gate arithmetic into preallocated buffers, so nothing is allocated per time step.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .config import ModelConfig, TrainConfig
from .params import Params, check_params, param_shapes
from .sampling import draw


def configure(threads: int | None, device: str) -> dict[str, str]:
    if device != "cpu":
        raise ValueError("the numpy backend runs on the CPU only; use --device cpu")
    info = {"version": np.__version__}
    try:  # BLAS threads are fixed at import by OMP/OPENBLAS_NUM_THREADS; report what runs
        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["kernel"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy has no dict mode
        info["kernel"] = "blas"
    return info


EPS_FORMS = ("spec", "eps_hat", "eps_inside")


def _sigmoid_(x: np.ndarray) -> None:
    """In-place logistic function."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)


class _Buffers:
    """Every array one window of shape (T, B) needs, allocated once and reused."""

    def __init__(self, m: ModelConfig, T: int, B: int, dtype: np.dtype) -> None:
        H, L = m.hidden_size, m.num_layers
        z = lambda *s: np.zeros(s, dtype)  # noqa: E731
        self.X = [z(T, B, m.layer_input_size(l)) if (l > 0 or m.input == "embedding") else None
                  for l in range(L)]  # layer inputs after dropout (None: one-hot gather)
        self.G = [z(T, B, 4 * H) for _ in range(L)]  # activated gates [i f g o]
        self.Hs = [z(T + 1, B, H) for _ in range(L)]  # h_{-1..T-1}; Hs[l][0] = h0
        self.Cs = [z(T + 1, B, H) for _ in range(L)]  # c_{-1..T-1}
        self.TC = [z(T, B, H) for _ in range(L)]  # tanh(c_t)
        self.Y = z(T, B, H)  # output-layer input after dropout
        self.logits = z(T, B, m.vocab_size)
        self.dZ = z(T, B, 4 * H)
        self.dH = z(T, B, H)  # gradient arriving at a layer's outputs
        self.dh = z(B, H)
        self.dc = z(B, H)
        self.tmp = z(B, H)
        self.zh = z(B, 4 * H)  # h_{t-1} @ W_h for one step
        self.masks: list[np.ndarray | None] = [None] * (L + 1)  # dropout masks, scaled


class NumpyBackend:
    """Reference LSTM language model in NumPy (float64 by default for the oracle)."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float64", seed: int = 0,
                 eps_form: str = "spec") -> None:
        if device != "cpu":
            raise ValueError("the numpy backend runs on the CPU only")
        if eps_form not in EPS_FORMS:
            raise ValueError(f"eps_form must be one of {', '.join(EPS_FORMS)}, got {eps_form!r}")
        self.model, self.train = model, train
        # "spec" is docs/SPEC.md §4; the others reproduce a framework's native formula so that a
        # documented deviation can be checked exactly (impls.registry.Deviation).
        self.eps_form = eps_form
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self.load(params)

    # ---- parameters and data ---------------------------------------------------
    def load(self, params: Params) -> None:
        check_params(self.model, params)
        self.p = {k: np.array(params[k], dtype=self.dtype) for k in param_shapes(self.model)}
        self.opt_state: dict[str, dict[str, np.ndarray]] = {k: {} for k in self.p}
        self.t = 0

    def params(self) -> Params:
        return {k: v.astype(np.float64) for k, v in self.p.items()}

    def put(self, tokens: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).T)  # (T, B) time-major

    def state(self, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.array(h, dtype=self.dtype), np.array(c, dtype=self.dtype)

    def fetch_state(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.array(state[0], np.float64), np.array(state[1], np.float64)

    def sync(self) -> None:
        pass

    def value(self, x: Any) -> float:
        return float(x)

    # ---- forward ------------------------------------------------------------------
    def _bufs(self, T: int, B: int) -> _Buffers:
        key = (T, B)
        if key not in self._buffers:
            self._buffers = {key: _Buffers(self.model, T, B, self.dtype)}  # keep one shape
        return self._buffers[key]

    def _mask(self, shape: tuple[int, ...], train: bool) -> np.ndarray | None:
        p = self.model.dropout
        if not train or p == 0:
            return None
        keep = self.rng.random(shape) >= p
        return keep.astype(self.dtype) / (1.0 - p)

    def _forward(self, tok: np.ndarray, h0: np.ndarray, c0: np.ndarray, train: bool) -> _Buffers:
        """Run the window; fills the buffers (logits included). tok is (T, B)."""
        m, p = self.model, self.p
        T, B = tok.shape
        H = m.hidden_size
        bf = self._bufs(T, B)
        for l in range(m.num_layers):
            Wx, Wh, b = p[f"lstm.{l}.W_x"], p[f"lstm.{l}.W_h"], p[f"lstm.{l}.b"]
            G = bf.G[l]  # (T, B, 4H): pre-activations first, activated in place
            if l == 0 and m.input == "onehot":
                mask = self._mask((T, B, 1), train)  # only the hot entry of a one-hot row matters
                np.take(Wx, tok, axis=0, out=G)
                if mask is not None:
                    G *= mask
            else:
                src = p["embed"][tok] if l == 0 else bf.Hs[l - 1][1:]
                mask = self._mask(src.shape, train)
                X = bf.X[l]
                if mask is None:
                    X[...] = src
                else:
                    np.multiply(src, mask, out=X)
                np.matmul(X.reshape(T * B, -1), Wx, out=G.reshape(T * B, 4 * H))
            bf.masks[l] = mask
            G += b
            Hs, Cs, TC = bf.Hs[l], bf.Cs[l], bf.TC[l]
            Hs[0], Cs[0] = h0[l], c0[l]
            for t in range(T):
                z = G[t]  # (B, 4H)
                np.matmul(Hs[t], Wh, out=bf.zh)
                z += bf.zh
                _sigmoid_(z[:, :2 * H])
                np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])
                _sigmoid_(z[:, 3 * H:])
                i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
                c = Cs[t + 1]
                np.multiply(f, Cs[t], out=c)
                np.multiply(i, g, out=bf.tmp)
                c += bf.tmp
                np.tanh(c, out=TC[t])
                np.multiply(o, TC[t], out=Hs[t + 1])
        top = bf.Hs[-1][1:]
        mask = self._mask(top.shape, train)
        bf.masks[-1] = mask
        if mask is None:
            bf.Y[...] = top
        else:
            np.multiply(top, mask, out=bf.Y)
        V = m.vocab_size
        np.matmul(bf.Y.reshape(T * B, H), p["out.W"], out=bf.logits.reshape(T * B, V))
        bf.logits += p["out.b"]
        return bf

    def _final_state(self, bf: _Buffers) -> tuple[np.ndarray, np.ndarray]:
        return (np.stack([Hs[-1] for Hs in bf.Hs]), np.stack([Cs[-1] for Cs in bf.Cs]))

    def _loss(self, bf: _Buffers, tgt: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy and softmax probabilities (T, B, V)."""
        z = bf.logits - bf.logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=-1, keepdims=True)
        logp = z - np.log(s)
        loss = -np.take_along_axis(logp, tgt[..., None], axis=-1).mean()
        return float(loss), e / s

    def forward(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        bf = self._forward(tokens, state[0], state[1], train=False)
        return bf.logits.transpose(1, 0, 2).astype(np.float64), self._final_state(bf)

    def eval_step(self, tokens: np.ndarray, targets: np.ndarray, state: Any) -> tuple[float, Any]:
        bf = self._forward(tokens, state[0], state[1], train=False)
        return self._loss(bf, targets)[0], self._final_state(bf)

    # ---- backward -----------------------------------------------------------------
    def _backward(self, bf: _Buffers, tok: np.ndarray, probs: np.ndarray, tgt: np.ndarray
                  ) -> tuple[Params, np.ndarray, np.ndarray]:
        """BPTT: gradients of the mean loss for every parameter and for (h0, c0)."""
        m, p = self.model, self.p
        T, B = tok.shape
        H, V, L = m.hidden_size, m.vocab_size, m.num_layers
        grads: Params = {}
        dlogits = probs  # (T, B, V), overwritten in place: softmax - onehot, over B*T
        np.subtract.at(dlogits.reshape(T * B, V), (np.arange(T * B), tgt.reshape(-1)), 1.0)
        dlogits /= T * B
        dl2 = dlogits.reshape(T * B, V)
        grads["out.W"] = bf.Y.reshape(T * B, H).T @ dl2
        grads["out.b"] = dl2.sum(axis=0)
        dH = bf.dH  # (T, B, H): gradient at the top layer's outputs
        np.matmul(dl2, p["out.W"].T, out=dH.reshape(T * B, H))
        if bf.masks[-1] is not None:
            dH *= bf.masks[-1]
        dh0 = np.zeros((L, B, H), self.dtype)
        dc0 = np.zeros((L, B, H), self.dtype)
        for l in reversed(range(L)):
            G, Hs, Cs, TC, dZ = bf.G[l], bf.Hs[l], bf.Cs[l], bf.TC[l], bf.dZ
            Wh = p[f"lstm.{l}.W_h"]
            dh, dc, tmp = bf.dh, bf.dc, bf.tmp
            dh[...] = 0
            dc[...] = 0
            for t in reversed(range(T)):
                i, f, g, o = G[t, :, :H], G[t, :, H:2 * H], G[t, :, 2 * H:3 * H], G[t, :, 3 * H:]
                di, df, dg, do = (dZ[t, :, :H], dZ[t, :, H:2 * H], dZ[t, :, 2 * H:3 * H],
                                  dZ[t, :, 3 * H:])
                dh += dH[t]  # total gradient at h_t
                np.multiply(dh, TC[t], out=do)  # d o (activated)
                np.multiply(TC[t], TC[t], out=tmp)  # dc += dh * o * (1 - tanh(c)^2)
                np.subtract(1.0, tmp, out=tmp)
                tmp *= o
                tmp *= dh
                dc += tmp
                np.multiply(dc, g, out=di)
                np.multiply(dc, i, out=dg)
                np.multiply(dc, Cs[t], out=df)
                dc *= f  # carried to c_{t-1}
                # through the nonlinearities: sigmoid' = s(1-s), tanh' = 1-t^2
                for a, s in ((di, i), (df, f), (do, o)):
                    a *= s
                    np.subtract(1.0, s, out=tmp)
                    a *= tmp
                np.multiply(g, g, out=tmp)
                np.subtract(1.0, tmp, out=tmp)
                dg *= tmp
                np.matmul(dZ[t], Wh.T, out=dh)  # carried to h_{t-1}
            dh0[l], dc0[l] = dh, dc
            dZ2 = dZ.reshape(T * B, 4 * H)
            grads[f"lstm.{l}.W_h"] = Hs[:-1].reshape(T * B, H).T @ dZ2
            grads[f"lstm.{l}.b"] = dZ2.sum(axis=0)
            Wx = p[f"lstm.{l}.W_x"]
            mask = bf.masks[l]
            if l == 0 and m.input == "onehot":
                if mask is not None:
                    dZ *= mask
                gWx = np.zeros_like(Wx)
                np.add.at(gWx, tok.reshape(-1), dZ2)
                grads["lstm.0.W_x"] = gWx
                continue
            X = bf.X[l]
            grads[f"lstm.{l}.W_x"] = X.reshape(T * B, -1).T @ dZ2
            dX = (dZ2 @ Wx.T).reshape(T, B, -1)
            if mask is not None:
                dX *= mask
            if l > 0:
                dH[...] = dX
            else:
                gE = np.zeros_like(p["embed"])
                np.add.at(gE, tok.reshape(-1), dX.reshape(T * B, -1))
                grads["embed"] = gE
        return grads, dh0, dc0

    def loss_and_grads_full(self, tokens: np.ndarray, targets: np.ndarray, state: Any
                            ) -> tuple[float, np.ndarray, Any, Params, np.ndarray, np.ndarray]:
        """Like loss_and_grads, plus the gradients for h0 and c0 (the reference only)."""
        bf = self._forward(tokens, state[0], state[1], train=True)
        logits = bf.logits.transpose(1, 0, 2).astype(np.float64)
        loss, probs = self._loss(bf, targets)
        final = self._final_state(bf)
        grads, dh0, dc0 = self._backward(bf, tokens, probs, targets)
        return loss, logits, final, grads, dh0, dc0

    def loss_and_grads(self, tokens: np.ndarray, targets: np.ndarray, state: Any
                       ) -> tuple[float, np.ndarray, Any, Params]:
        loss, logits, final, grads, _, _ = self.loss_and_grads_full(tokens, targets, state)
        return loss, logits, final, {k: v.astype(np.float64) for k, v in grads.items()}

    # ---- optimisation (docs/SPEC.md §4) ----------------------------------------------------
    def _clip(self, grads: Params) -> None:
        clip = self.train.clip
        if clip.kind == "norm":
            norm = np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
            if norm > clip.value:
                for g in grads.values():
                    g *= clip.value / norm
        elif clip.kind == "value":
            for g in grads.values():
                np.clip(g, -clip.value, clip.value, out=g)

    def _root(self, v: np.ndarray, eps: float) -> np.ndarray:
        return np.sqrt(v + eps) if self.eps_form == "eps_inside" else np.sqrt(v) + eps

    def _update(self, grads: Params) -> None:
        o = self.train.optimizer
        self.t += 1
        for k, g in grads.items():
            w, st = self.p[k], self.opt_state[k]
            if o.name == "sgd":
                w -= o.lr * g
            elif o.name == "adam":
                m = st.setdefault("m", np.zeros_like(w))
                v = st.setdefault("v", np.zeros_like(w))
                m *= o.beta1
                m += (1 - o.beta1) * g
                v *= o.beta2
                v += (1 - o.beta2) * g * g
                bc1, bc2 = 1 - o.beta1 ** self.t, 1 - o.beta2 ** self.t
                if self.eps_form == "eps_hat":  # eps added before bias correction
                    w -= o.lr * np.sqrt(bc2) / bc1 * m / (np.sqrt(v) + o.eps)
                else:
                    w -= o.lr * (m / bc1) / (np.sqrt(v / bc2) + o.eps)
            elif o.name == "rmsprop":
                v = st.setdefault("v", np.zeros_like(w))
                v *= o.alpha
                v += (1 - o.alpha) * g * g
                w -= o.lr * g / self._root(v, o.eps)
            elif o.name == "adagrad":
                s = st.setdefault("s", np.zeros_like(w))
                s += g * g
                w -= o.lr * g / self._root(s, o.eps)

    def train_step(self, tokens: np.ndarray, targets: np.ndarray, state: Any) -> tuple[float, Any]:
        bf = self._forward(tokens, state[0], state[1], train=True)
        loss, probs = self._loss(bf, targets)
        final = self._final_state(bf)
        grads, _, _ = self._backward(bf, tokens, probs, targets)
        self._clip(grads)
        self._update(grads)
        return loss, final

    # ---- generation (docs/SPEC.md §5) -------------------------------------------------------
    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        m = self.model
        shape = (m.num_layers, 1, m.hidden_size)
        state: Any = (np.zeros(shape, self.dtype), np.zeros(shape, self.dtype))
        logits, state = self.forward(np.asarray(prefix, np.int64).reshape(-1, 1), state)
        out = np.empty(n, np.int64)
        step = np.empty((1, 1), np.int64)
        for k in range(n):
            out[k] = draw(logits[0, -1], temperature, top_k, float(uniforms[k]))
            step[0, 0] = out[k]
            logits, state = self.forward(step, state)
        return out
