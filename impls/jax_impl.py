"""The JAX backend: the model as pure functions over a parameter pytree, compiled by XLA.

- The params pytree is the canonical layout (docs/SPEC.md §2 is already JAX's natural layout:
  x @ W_x with W_x (D, 4H), column blocks [i | f | g | o], one bias), grouped per layer.
  `_to_native`/`_to_canonical` map names to pytree paths through an explicit table with
  shape asserts, so a load/params round trip is exact.
- Time runs in `lax.scan` (time-major, (T, B, ...)). Per layer, the window's input
  projection is either hoisted out of the scan (one (T*B, D) @ (D, 4H) matmul, or a row
  gather of W_x for one-hot layer 0) or done per step beside h @ W_h, whichever XLA:CPU ran
  faster at that size (_forward, docs/speed.md).
- The whole train step (forward, loss, value_and_grad, clip, optimiser update, next dropout
  key) is one `jax.jit` program; parameters and optimiser state are donated, so the update
  reuses their buffers. Optimisers are written out to docs/SPEC.md §4's formulas (no optax: its
  rmsprop/adagrad put eps inside the root).
- Generation is one compiled program: a scan feeds the prefix, a second scan over the
  caller's uniforms draws the n tokens with docs/SPEC.md §5's rule (impls.sampling).
- Strict float32: every matmul passes Precision.HIGHEST (on a GPU XLA would otherwise use
  TF32); the constructor's precision="tf32" selects XLA's default precision instead.

Compiled programs are cached per static configuration (model, optimiser, dtype, precision),
so two backends built for the same configuration share their compilations.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import jax  # importing jax does not initialise the XLA backend: configure() can still set flags
import jax.numpy as jnp
import numpy as np
from jax import lax

from .config import ModelConfig, TrainConfig
from .params import Params, check_params, param_shapes

State = tuple[jax.Array, jax.Array]  # (h, c), each (L, B, H), on the backend's device

# constructor precision name -> lax precision for every matmul (forward and, through the
# transpose rules, backward)
PRECISIONS = {"float32": lax.Precision.HIGHEST, "highest": lax.Precision.HIGHEST,
              "tf32": lax.Precision.DEFAULT}


# ---- process setup ------------------------------------------------------------------

def _cpu_thread_setup(threads: int) -> str:
    """Limit XLA:CPU to `threads` threads; returns how, for the results file.

    XLA reads XLA_FLAGS when its backend initialises (the first device or array), so this
    runs before that. jaxlib's CPU client sizes its intra-op pool from the CPUs the process
    may be scheduled on (tsl::port::MaxParallelism reads the affinity mask) and has no
    thread-count option, so the affinity mask of the calling thread (inherited by the pool
    threads XLA starts later) is what limits it. For threads == 1 XLA_FLAGS also gets
    `--xla_cpu_multi_thread_eigen=false` (single-threaded Eigen matmuls); on jaxlib 0.10 that
    flag alone did not stop a 1500^2 matmul from using 2 cores (measured), the mask does.
    For threads > 1 only the mask is set (the often-quoted `intra_op_parallelism_threads`
    is a TensorFlow option, not an XLA flag)."""
    how = []
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
        how.append("XLA_FLAGS=--xla_cpu_multi_thread_eigen=false")
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        keep = cpus[:threads]
        os.sched_setaffinity(0, keep)
        how.append(f"CPU affinity {','.join(map(str, keep))}"
                   + (f" (only {len(cpus)} CPUs available)" if threads > len(cpus) else ""))
    else:
        how.append("no affinity control on this OS: XLA picks its own pool size")
    return "; ".join(how)


def _gpu() -> Any:
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:  # jax raises RuntimeError when no GPU platform is present
        raise ValueError("no GPU visible to JAX") from None


def configure(threads: int | None, device: str) -> dict[str, str]:
    """Set CPU threads (before XLA initialises), then report versions and the kernel path."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be cpu or gpu, got {device!r}")
    try:  # private API, used only to warn when the flags come too late to matter
        from jax._src import xla_bridge
        late = bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        late = False
    info: dict[str, str] = {"version": jax.__version__}
    try:
        import jaxlib
        info["jaxlib"] = str(jaxlib.__version__)
    except (ImportError, AttributeError):
        info["jaxlib"] = "?"
    if threads is not None and device == "cpu":
        info["threads"] = f"{threads}: {_cpu_thread_setup(threads)}"
        if late:
            info["threads"] += " (XLA was already initialised: the pool size may not follow)"
    dev = _gpu() if device == "gpu" else jax.devices("cpu")[0]  # initialises XLA
    info["kernel"] = "XLA:GPU" if device == "gpu" else "XLA:CPU"
    info["platform"] = f"{dev.platform} ({dev.device_kind})"
    return info


# ---- hooks (impls.registry.HOOKS): what the harness asks of this module ------------------

def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    """The whole step is one XLA program on every device."""
    return {"kernel": "XLA:GPU" if device == "gpu" else "XLA:CPU"}


def device_peak_memory(device: str, reset: bool) -> int | None:
    """XLA's peak bytes in use on the first GPU. XLA's counter cannot be reset: reset=True
    returns None and the next read is the process-lifetime peak (one cell per worker keeps
    that honest). None on the CPU."""
    if device != "gpu" or reset:
        return None
    try:
        stats = _gpu().memory_stats() or {}
    except ValueError:
        return None
    return int(stats.get("peak_bytes_in_use", 0)) or None


def device_matmul_peak(device: str) -> float | None:
    """Best strict-float32 (Precision.HIGHEST) 8192^2 GEMM GFLOP/s on the GPU, measured
    now; None on the CPU (the harness measures NumPy's BLAS there)."""
    if device != "gpu":
        return None
    import time
    n, repeats = 8192, 7
    f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=lax.Precision.HIGHEST))
    a = jax.device_put(jnp.ones((n, n), jnp.float32), _gpu())
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        f(a, a).block_until_ready()
        best = min(best, (time.perf_counter_ns() - t0) / 1e9)
    return 2 * n ** 3 / best / 1e9


# ---- the canonical <-> native table ------------------------------------------------------

def _layout(m: ModelConfig) -> list[tuple[str, tuple[Any, ...], tuple[int, ...]]]:
    """(canonical name, path in the native pytree, shape). The layouts coincide (docs/SPEC.md §2, §3:
    x @ W_x, blocks [i, f, g, o], one bias), so every row is the identity on values; the
    table fixes the names and shapes both ways."""
    rows = []
    for name, shape in param_shapes(m).items():
        if name == "embed":
            path: tuple[Any, ...] = ("embed",)
        elif name.startswith("lstm."):
            _, l, w = name.split(".")
            path = ("lstm", int(l), w)  # w in W_x (D_l, 4H), W_h (H, 4H), b (4H,)
        else:
            path = ("out", name.split(".")[1])  # W (H, V), b (V,)
        rows.append((name, path, shape))
    return rows


def _to_native(m: ModelConfig, params: Params, dtype: np.dtype) -> dict[str, Any]:
    """Canonical dict -> pytree {"embed"?, "lstm": ({"W_x", "W_h", "b"}, ...), "out": {"W", "b"}}
    of host arrays in `dtype`."""
    tree: dict[str, Any] = {"lstm": tuple({} for _ in range(m.num_layers)), "out": {}}
    for name, path, shape in _layout(m):
        a = np.array(params[name], dtype=dtype)  # a copy: the device may alias host memory
        assert a.shape == shape, (name, a.shape, shape)
        if path[0] == "embed":
            tree["embed"] = a
        elif path[0] == "lstm":
            tree["lstm"][path[1]][path[2]] = a
        else:
            tree["out"][path[1]] = a
    return tree


def _to_canonical(m: ModelConfig, tree: dict[str, Any]) -> Params:
    out: Params = {}
    for name, path, shape in _layout(m):
        node: Any = tree
        for k in path:
            node = node[k]
        a = np.array(node, dtype=np.float64)
        assert a.shape == shape, (name, a.shape, shape)
        out[name] = a
    return out


# ---- the model as pure functions ------------------------------------------------------------

@dataclass(frozen=True)
class _Static:
    """Everything a compiled program depends on besides array shapes (hashable: cache key)."""
    model: ModelConfig
    train: TrainConfig
    dtype: str
    precision: str  # a PRECISIONS key
    unroll: int  # lax.scan unroll factor of the time loop
    hoist: bool | None = None  # input products before the time loop, inside it, None: by size (_forward)


HOIST_BELOW_B = 8  # one-hot input: the input product inside the time loop from this batch on (_forward)


def _mm(st: _Static, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=PRECISIONS[st.precision])


def _gates(z: jax.Array, c: jax.Array, H: int) -> tuple[jax.Array, jax.Array]:
    """One LSTM update from pre-activations z (B, 4H) = [i | f | g | o] and c (B, H)."""
    i_f = jax.nn.sigmoid(z[:, :2 * H])  # (B, 2H): i and f share one sigmoid
    i, f = i_f[:, :H], i_f[:, H:]
    g = jnp.tanh(z[:, 2 * H:3 * H])
    o = jax.nn.sigmoid(z[:, 3 * H:])
    c = f * c + i * g
    return o * jnp.tanh(c), c


def _dropout(x: jax.Array, key: jax.Array | None, p: float) -> jax.Array:
    """Inverted dropout: keep with probability 1-p, scale kept values by 1/(1-p)."""
    if key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - p, x.shape)
    return jnp.where(keep, x / (1.0 - p), jnp.zeros((), x.dtype))


def _forward(st: _Static, p: dict[str, Any], tok: jax.Array, h0: jax.Array, c0: jax.Array,
             key: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """tok (T, B) int32, h0/c0 (L, B, H) -> logits (T, B, V), h, c (L, B, H).
    key None: eval mode (no dropout); otherwise train-mode dropout with p from the model.

    Where a layer's input product runs is `st.hoist`: True, one (T*B, D) @ (D, 4H) matmul (a
    row gather for one-hot layer 0) before the time loop; False, inside the loop, per step,
    beside h @ W_h; None (the default) chooses by size, as measured on XLA:CPU (docs/speed.md,
    one thread): inside the loop for one-hot input at B >= 8 (char-rnn B50: eval 0.63x,
    train 0.88x the hoisted time; tutorial B128 eval 0.84x), hoisted otherwise (char-rnn B1
    train 1.32x and chainer-ptb's embedding model 1.39-1.55x slower inside the loop)."""
    m = st.model
    T, B = tok.shape
    H, V, L = m.hidden_size, m.vocab_size, m.num_layers
    keys: list[jax.Array | None] = [None] * (L + 1)
    if key is not None and m.dropout > 0:
        keys = list(jax.random.split(key, L + 1))
    hoist = st.hoist if st.hoist is not None else not (m.input == "onehot" and B >= HOIST_BELOW_B)
    h_out, c_out = [], []
    hs: Any = None  # (T, B, H): the previous layer's outputs, the input of layer l > 0
    for l in range(L):
        lp = p["lstm"][l]
        W_x, W_h, b = lp["W_x"], lp["W_h"], lp["b"]  # (D_l, 4H), (H, 4H), (4H,)
        gather = l == 0 and m.input == "onehot"  # one-hot row times W_x is a row gather
        if gather:
            xs = tok  # (T, B) ids
            if keys[0] is not None:  # only the hot entry of each one-hot row can be dropped
                xs = (tok, _dropout(jnp.ones((T, B, 1), W_x.dtype), keys[0], m.dropout))
        else:
            x = p["embed"][tok] if l == 0 else hs  # (T, B, D_l)
            xs = _dropout(x, keys[l], m.dropout)
        if hoist:  # the whole window's input projection in one product, outside the loop
            if gather:
                xw = W_x[tok] if keys[0] is None else W_x[tok] * xs[1]  # (T, B, 4H)
            else:
                xw = _mm(st, xs.reshape(T * B, -1), W_x).reshape(T, B, 4 * H)
            xs, project = xw + b, None
        else:
            project = ((lambda x: W_x[x] + b) if gather and keys[0] is None else
                       (lambda x: W_x[x[0]] * x[1] + b) if gather else
                       (lambda x: _mm(st, x, W_x) + b))  # (B, 4H)

        def step(carry: tuple[jax.Array, jax.Array], x_t: Any, project: Any = project
                 ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
            h, c = carry  # (B, H) each
            z = (x_t if project is None else project(x_t)) + _mm(st, h, W_h)  # (B, 4H)
            h, c = _gates(z, c, H)
            return (h, c), h

        (h, c), hs = lax.scan(step, (h0[l], c0[l]), xs, unroll=st.unroll)  # hs (T, B, H)
        h_out.append(h)
        c_out.append(c)
    y = _dropout(hs, keys[L], m.dropout)  # (T, B, H)
    logits = _mm(st, y.reshape(T * B, H), p["out"]["W"]) + p["out"]["b"]  # (T*B, V)
    return logits.reshape(T, B, V), jnp.stack(h_out), jnp.stack(c_out)


def _loss(logits: jax.Array, tgt: jax.Array) -> jax.Array:
    """Mean cross-entropy over all T*B positions; logits (T, B, V), tgt (T, B)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tgt[..., None], axis=-1))


def _loss_fn(st: _Static, p: dict[str, Any], tok: jax.Array, tgt: jax.Array, h0: jax.Array,
             c0: jax.Array, key: jax.Array | None
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    logits, h, c = _forward(st, p, tok, h0, c0, key)
    return _loss(logits, tgt), (logits, h, c)


# ---- clipping and optimisers (docs/SPEC.md §4) --------------------------------------------------------

def _clip(st: _Static, g: Any) -> Any:
    clip = st.train.clip
    if clip.kind == "norm":  # g *= min(1, c / ||g||) over all parameters together
        leaves = jax.tree_util.tree_leaves(g)
        norm = jnp.sqrt(sum(jnp.vdot(x, x) for x in leaves))
        scale = jnp.where(norm > clip.value, clip.value / norm, 1.0).astype(leaves[0].dtype)
        return jax.tree_util.tree_map(lambda x: x * scale, g)
    if clip.kind == "value":  # elementwise, char-rnn's grad_clip
        return jax.tree_util.tree_map(lambda x: jnp.clip(x, -clip.value, clip.value), g)
    return g


def _init_opt(st: _Static, p: Any) -> dict[str, Any]:
    """Optimiser state for step count t = 0: moment pytrees of zeros."""
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, p)  # noqa: E731
    slots = {"sgd": (), "adam": ("m", "v"), "rmsprop": ("v",), "adagrad": ("s",)}
    state: dict[str, Any] = {"t": jnp.zeros((), jnp.int32)}
    for k in slots[st.train.optimizer.name]:
        state[k] = zeros()
    return state


def _one_minus_pow(beta: float, t: jax.Array) -> jax.Array:
    """1 - beta**t for a step count t (float, >= 1), accurate in float32."""
    if beta == 0.0:
        return jnp.ones_like(t)
    return -jnp.expm1(t * math.log(beta))


def _update(st: _Static, p: Any, opt: dict[str, Any], g: Any) -> tuple[Any, dict[str, Any]]:
    o = st.train.optimizer
    tm = jax.tree_util.tree_map
    t = opt["t"] + 1  # t counts from 1
    new: dict[str, Any] = {"t": t}
    if o.name == "sgd":
        p = tm(lambda w, g: w - o.lr * g, p, g)
    elif o.name == "adam":
        m = tm(lambda m, g: o.beta1 * m + (1 - o.beta1) * g, opt["m"], g)
        v = tm(lambda v, g: o.beta2 * v + (1 - o.beta2) * g * g, opt["v"], g)
        tf = t.astype(jax.tree_util.tree_leaves(p)[0].dtype)
        # 1 - beta^t as -expm1(t log beta), log taken in float64 on the host: in float32,
        # 1 - 0.999**t cancels (float32(0.999) alone is off by 1.3e-8, i.e. 1.3e-5 of 1e-3)
        bc1, bc2 = _one_minus_pow(o.beta1, tf), _one_minus_pow(o.beta2, tf)
        p = tm(lambda w, m, v: w - o.lr * (m / bc1) / (jnp.sqrt(v / bc2) + o.eps), p, m, v)
        new.update(m=m, v=v)
    elif o.name == "rmsprop":
        v = tm(lambda v, g: o.alpha * v + (1 - o.alpha) * g * g, opt["v"], g)
        p = tm(lambda w, g, v: w - o.lr * g / (jnp.sqrt(v) + o.eps), p, g, v)
        new["v"] = v
    elif o.name == "adagrad":
        s = tm(lambda s, g: s + g * g, opt["s"], g)
        p = tm(lambda w, g, s: w - o.lr * g / (jnp.sqrt(s) + o.eps), p, g, s)
        new["s"] = s
    return p, new


# ---- sampling (docs/SPEC.md §5, impls.sampling) ------------------------------------------------------

def _draw(logits: jax.Array, u: jax.Array, temperature: jax.Array, greedy: bool,
          top_k: int) -> jax.Array:
    """One token id (int32 scalar) from logits (V,) with the caller's uniform u."""
    V = logits.shape[-1]
    if greedy:
        return jnp.argmax(logits).astype(jnp.int32)  # lowest id on ties
    z = logits / temperature
    if 0 < top_k < V:
        kth = lax.top_k(z, top_k)[0][top_k - 1]  # the k-th largest; ties with it are kept
        z = jnp.where(z >= kth, z, -jnp.inf)
    z = z - jnp.max(z)
    prob = jnp.exp(z)
    prob = prob / jnp.sum(prob)
    cdf = jnp.cumsum(prob)
    i = jnp.sum(cdf <= u)  # the first id with u < cdf
    last = V - 1 - jnp.argmax((prob > 0)[::-1])  # last id with non-zero probability
    return jnp.where(i >= V, last, i).astype(jnp.int32)


def _step1(st: _Static, p: dict[str, Any], tok: jax.Array, h: jax.Array, c: jax.Array
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One token (int32 scalar) through every layer from (h, c) (L, 1, H) in eval mode:
    logits (V,) and the new state."""
    m = st.model
    H = m.hidden_size
    hs, cs = [], []
    x: Any = None  # (1, D_l): layer l's input, then its output h (1, H)
    for l in range(m.num_layers):
        lp = p["lstm"][l]
        if l == 0 and m.input == "onehot":
            z = lp["W_x"][tok][None, :]  # (1, 4H) row gather
        else:
            if l == 0:
                x = p["embed"][tok][None, :]  # (1, E)
            z = _mm(st, x, lp["W_x"])  # (1, 4H)
        z = z + lp["b"] + _mm(st, h[l], lp["W_h"])  # (1, 4H)
        x, c_l = _gates(z, c[l], H)
        hs.append(x)
        cs.append(c_l)
    logits = _mm(st, x, p["out"]["W"])[0] + p["out"]["b"]  # (V,)
    return logits, jnp.stack(hs), jnp.stack(cs)


def _generate(st: _Static, p: dict[str, Any], prefix: jax.Array, uniforms: jax.Array,
              temperature: jax.Array, greedy: bool, top_k: int) -> jax.Array:
    """prefix (P,) int32, uniforms (n,) -> (n,) int32, all in one program."""
    m = st.model
    dt = jnp.dtype(st.dtype)
    shape = (m.num_layers, 1, m.hidden_size)
    zero = jnp.zeros(shape, dt)

    def feed(carry: tuple[jax.Array, jax.Array], tok: jax.Array):
        _, h, c = _step1(st, p, tok, *carry)
        return (h, c), None

    # all but the last prefix token only advance the state; the last one is fed by the
    # first draw step, so exactly P - 1 + n steps run
    (h, c), _ = lax.scan(feed, (zero, zero), prefix[:-1])

    def draw(carry: tuple[jax.Array, jax.Array, jax.Array], u: jax.Array):
        tok, h, c = carry
        logits, h, c = _step1(st, p, tok, h, c)
        nxt = _draw(logits, u, temperature, greedy, top_k)
        return (nxt, h, c), nxt

    _, toks = lax.scan(draw, (prefix[-1], h, c), uniforms)
    return toks


# ---- compiled programs, cached per static configuration ------------------------------------

@dataclass(frozen=True)
class _Programs:
    forward: Callable[..., Any]
    eval_step: Callable[..., Any]
    loss_and_grads: Callable[..., Any]
    train_step: Callable[..., Any]
    generate: Callable[..., Any]
    init_opt: Callable[..., Any]


@functools.lru_cache(maxsize=None)
def _programs(st: _Static) -> _Programs:
    def forward(p, tok, h0, c0):
        return _forward(st, p, tok, h0, c0, None)

    def eval_step(p, tok, tgt, h0, c0):
        loss, (_, h, c) = _loss_fn(st, p, tok, tgt, h0, c0, None)
        return loss, h, c

    grad_fn = jax.value_and_grad(functools.partial(_loss_fn, st), has_aux=True)

    def loss_and_grads(p, tok, tgt, h0, c0, key):
        key, sub = jax.random.split(key)
        (loss, (logits, h, c)), g = grad_fn(p, tok, tgt, h0, c0, sub)
        return loss, logits, h, c, g, key

    def train_step(p, opt, tok, tgt, h0, c0, key):
        key, sub = jax.random.split(key)
        (loss, (_, h, c)), g = grad_fn(p, tok, tgt, h0, c0, sub)
        p, opt = _update(st, p, opt, _clip(st, g))
        return p, opt, loss, h, c, key

    def generate(p, prefix, uniforms, temperature, greedy, top_k):
        return _generate(st, p, prefix, uniforms, temperature, greedy, top_k)

    return _Programs(
        forward=jax.jit(forward),
        eval_step=jax.jit(eval_step),
        loss_and_grads=jax.jit(loss_and_grads),
        # params and optimiser state are replaced by the step's outputs: donate their buffers
        train_step=jax.jit(train_step, donate_argnums=(0, 1)),
        generate=jax.jit(generate, static_argnames=("greedy", "top_k")),
        init_opt=jax.jit(functools.partial(_init_opt, st)),
    )


# ---- the backend ------------------------------------------------------------------------------

class JaxBackend:
    """Char-LSTM LM as jitted pure functions: lax.scan over time, one XLA program per step."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 precision: str = "float32", unroll: int = 1, hoist: bool | None = None) -> None:
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
            raise ValueError(f"unroll must be a positive integer, got {unroll!r}")
        if dtype == "float64":
            # must precede the arrays it affects; float32 leaves the flag alone (another
            # backend in this process may rely on it) and names every dtype explicitly
            jax.config.update("jax_enable_x64", True)
        if device == "gpu":
            self.device = _gpu()
        elif device == "cpu":
            self.device = jax.devices("cpu")[0]
        else:
            raise ValueError(f"device must be cpu or gpu, got {device!r}")
        self.model, self.train = model, train
        self.dtype = np.dtype(dtype)
        self._st = _Static(model, train, dtype, precision, unroll, hoist)
        self._fn = _programs(self._st)
        self._key = jax.device_put(jax.random.key(seed), self.device)  # dropout masks
        self._last: Any = None  # the latest outputs, for sync()
        self.load(params)

    # ---- parameters and data ---------------------------------------------------------------
    def load(self, params: Params) -> None:
        check_params(self.model, params)
        self.p = jax.device_put(_to_native(self.model, params, self.dtype), self.device)
        # t = 0 and zero moments; committed to the device like p, so the first and later
        # train steps see the same argument placement and share one compilation
        self.opt = jax.device_put(self._fn.init_opt(self.p), self.device)

    def params(self) -> Params:
        return _to_canonical(self.model, self.p)

    def put(self, tokens: np.ndarray) -> jax.Array:
        tok = np.ascontiguousarray(np.asarray(tokens).T, dtype=np.int32)  # (T, B) time-major
        return jax.device_put(tok, self.device)

    def state(self, h: np.ndarray, c: np.ndarray) -> State:
        return (jax.device_put(np.array(h, dtype=self.dtype), self.device),
                jax.device_put(np.array(c, dtype=self.dtype), self.device))

    def fetch_state(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        return np.array(state[0], np.float64), np.array(state[1], np.float64)

    def sync(self) -> None:
        jax.block_until_ready((self._last, self.p, self.opt))

    def value(self, x: Any) -> float:
        return float(x)

    # ---- compute -------------------------------------------------------------------------------
    def forward(self, tokens: jax.Array, state: State) -> tuple[np.ndarray, State]:
        logits, h, c = self._fn.forward(self.p, tokens, state[0], state[1])
        self._last = (h, c)
        return np.asarray(logits, np.float64).transpose(1, 0, 2), (h, c)  # (B, T, V)

    def loss_and_grads(self, tokens: jax.Array, targets: jax.Array, state: State
                       ) -> tuple[float, np.ndarray, State, Params]:
        loss, logits, h, c, g, self._key = self._fn.loss_and_grads(
            self.p, tokens, targets, state[0], state[1], self._key)
        self._last = (h, c)
        return (float(loss), np.asarray(logits, np.float64).transpose(1, 0, 2), (h, c),
                _to_canonical(self.model, g))

    def eval_step(self, tokens: jax.Array, targets: jax.Array, state: State
                  ) -> tuple[jax.Array, State]:
        loss, h, c = self._fn.eval_step(self.p, tokens, targets, state[0], state[1])
        self._last = (loss, h, c)
        return loss, (h, c)

    def train_step(self, tokens: jax.Array, targets: jax.Array, state: State
                   ) -> tuple[jax.Array, State]:
        self.p, self.opt, loss, h, c, self._key = self._fn.train_step(
            self.p, self.opt, tokens, targets, state[0], state[1], self._key)
        self._last = (loss, h, c)
        return loss, (h, c)

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        pre = jax.device_put(np.asarray(prefix, np.int32).reshape(-1), self.device)  # (P,)
        u = jax.device_put(np.asarray(uniforms[:n], self.dtype), self.device)  # (n,)
        temp = jax.device_put(np.asarray(temperature, self.dtype), self.device)
        toks = self._fn.generate(self.p, pre, u, temp, greedy=temperature == 0,
                                 top_k=int(top_k))
        return np.asarray(toks, np.int64)
