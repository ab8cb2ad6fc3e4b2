"""The TensorFlow backend: the one Keras 3 model (impls/keras_model.py: Embedding or one-hot,
one `keras.layers.LSTM` per layer, Dense output; keras-jax and keras-torch build the same)
driven by `tf.function`s, with Keras' native optimisers.

Two registry variants share the class `TensorflowBackend`:
- `tensorflow`: graph-mode `tf.function`s. On the CPU the LSTM runs Keras' generic
  `tf.while_loop` over `LSTMCell` (matmuls by Eigen, or oneDNN where TF enables it); on a GPU
  the layers are built with `use_cudnn=True`, so Keras takes the fused cuDNN kernel
  (CudnnRNNV3) or fails loudly rather than silently falling back.
- `tensorflow-xla`: the same functions with `jit_compile=True`. cuDNN ops are not XLA
  compatible (Keras itself turns `jit_compile` off for cuDNN LSTMs), so this variant always
  uses the while-loop cell, which XLA compiles whole.

Everything the harness times (train step: forward, loss, tf.GradientTape, clip, update; eval
step; the per-token generation step, sampling included) is one `tf.function` call. Every
argument is a tensor, so a function traces once per distinct (B, T) and never per call.
Generation calls each layer's `LSTMCell` (the LSTM layer's own weights) once per token: one
step needs no time loop, and the drawn token stays on the device to be fed straight back.

Dropout is done by separate `keras.layers.Dropout` layers in front of each LSTM layer and of
the output layer (docs/SPEC.md §1), not by the LSTM's own `dropout` argument: that one draws one mask
per sequence and reuses it at every time step (on both the cuDNN and the cell path), where
docs/SPEC.md §1 (like the reference and Chainer's RNNForLM) drops each element independently.

Optimisers are Keras' own (SGD, Adam, RMSprop, Adagrad with initial_accumulator_value=0) with
native clipping (`global_clipnorm`, `clipvalue`); Adam's epsilon-hat and RMSprop/Adagrad's
epsilon inside the root are the registry's documented deviations (KERAS_DEVIATIONS).
"""
from __future__ import annotations

import os

# Before TensorFlow and Keras are imported: Keras picks its backend at import time, and TF's
# C++ logging level is read once when the library loads.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TF's oneDNN CPU kernels: off by default in this wheel (tensorflow-cpu 2.21 on x86-64), and
# about twice as fast as Eigen on the char-rnn train step here. Read once, at TF's import: if
# TF was imported before this module, whatever was set then holds (configure() reports it).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from .config import ModelConfig, TrainConfig  # noqa: E402
from .keras_model import CharLSTM  # noqa: E402
from .keras_optimizers import make_optimizer  # noqa: E402
from .params import Params, check_params, init_params  # noqa: E402
from .registry import BackendError  # noqa: E402
from .sampling import prefix_ids  # noqa: E402

if keras.backend.backend() != "tensorflow":  # Keras was imported earlier with another backend
    raise ImportError(f"Keras is running on the {keras.backend.backend()!r} backend in this process; "
                      "the tensorflow backend needs KERAS_BACKEND=tensorflow before Keras is imported")

DTYPES = ("float32", "float64")
PRECISIONS = ("float32", "tf32")  # float32: strict (TF32 off); tf32: TensorFloat-32 matmuls on GPU


def _onednn_enabled() -> bool:
    """Whether TF's oneDNN CPU kernels are on (TF_ENABLE_ONEDNN_OPTS or the build default)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except Exception:  # private module moved: report what the flag says
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0") == "1"


def configure(threads: int | None, device: str) -> dict[str, str]:
    """Thread pools (must run before TF initialises its runtime) and facts for the results.
    `kernel` is the `tensorflow` variant's path; kernel_info() gives each variant's own."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            # Inter-op pool = threads too (TF's usual "use N cores" setting): Keras' time loop
            # is a tf.while_loop with parallel_iterations=32, so independent ops (the next
            # step's input projection, the layer above) overlap; measured here 2 vs 1: ~10%
            # faster on char-rnn, within noise on a shared machine.
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as e:
            raise RuntimeError("tensorflow configure() must be called before TensorFlow runs any "
                               f"op (its thread pools are fixed once the runtime starts): {e}") from None
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise ValueError("device 'gpu' requested but TensorFlow sees no GPU "
                             "(tensorflow-cpu installed, or no CUDA device visible)")
        kernel = "cuDNN"
    else:
        kernel = "oneDNN" if _onednn_enabled() else "Eigen"
    return {"version": tf.__version__, "keras": keras.__version__, "kernel": kernel,
            "intra_op_threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
            "inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads())}


# ---- hooks (impls.registry.HOOKS): what the harness asks of this module ------------------

def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    """The kernel path of THIS variant: a variant built with jit_compile=True (its registry
    kwargs) is compiled whole by XLA; the others run Keras' cuDNN LSTM on a GPU and the
    tf.while_loop cell (oneDNN or Eigen matmuls) on the CPU."""
    from .registry import get_spec
    spec = get_spec(backend_name)
    xla = "XLA:GPU" if device == "gpu" else "XLA:CPU"
    if spec.kwargs.get("jit_compile"):
        return {"kernel": xla}
    own = "cuDNN" if device == "gpu" else "oneDNN" if _onednn_enabled() else "Eigen"
    if spec.cls == "TensorflowGenLoopBackend" and spec.kwargs.get("jit_loop", True):
        return {"kernel": f"{xla} (the generation loop); eval: {own}"}
    return {"kernel": own}


def device_peak_memory(device: str, reset: bool) -> int | None:
    """TensorFlow's GPU:0 allocator peak (bytes) since the last reset; reset=True resets it
    and returns None. None on the CPU or where TF keeps no such counter."""
    if device != "gpu" or not tf.config.list_physical_devices("GPU"):
        return None
    if reset:
        tf.config.experimental.reset_memory_stats("GPU:0")
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def device_matmul_peak(device: str) -> float | None:
    """Best strict-float32 (TF32 off) 8192^2 GEMM GFLOP/s on the GPU, measured now; None
    on the CPU (the harness measures NumPy's BLAS there). Restores the TF32 setting."""
    if device != "gpu" or not tf.config.list_physical_devices("GPU"):
        return None
    import time
    n, repeats = 8192, 7
    old = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        with tf.device("/GPU:0"):
            a = tf.random.uniform((n, n))
            f = tf.function(lambda x: tf.matmul(x, x))
            f(a).numpy()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                f(a)[0, 0].numpy()  # fetching one element waits for the product
                best = min(best, (time.perf_counter_ns() - t0) / 1e9)
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(old)
    return 2 * n ** 3 / best / 1e9


class TensorflowBackend:
    """Keras 3 LSTM language model; train/eval/generation steps are `tf.function`s."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 jit_compile: bool = False, precision: str = "float32", _probe: bool = False) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"the tensorflow backend computes in {', '.join(DTYPES)}, got {dtype!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if device == "gpu":
            if not tf.config.list_physical_devices("GPU"):
                raise ValueError("device 'gpu' requested but TensorFlow sees no GPU "
                                 "(tensorflow-cpu installed, or no CUDA device visible)")
            self._dev = "/GPU:0"
        elif device == "cpu":
            self._dev = "/CPU:0"
        else:
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        # Process-wide switch (TF has no per-function one); a no-op on the CPU.
        tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
        self.model, self.train = model, train
        self.device, self.dtype, self.jit_compile = device, dtype, jit_compile
        if jit_compile and not _probe:
            _check_xla(device)  # raises BackendError if XLA cannot compile a train step here
        # cuDNN only where it can run: GPU and not under XLA (cuDNN ops have no XLA lowering).
        use_cudnn = device == "gpu" and not jit_compile
        self.kernel = (f"XLA:{device.upper()}" if jit_compile else
                       "cuDNN" if use_cudnn else "oneDNN" if _onednn_enabled() else "Eigen")
        with tf.device(self._dev):
            # the one Keras model definition (impls/keras_model.py), shapes asserted there
            self._net = CharLSTM(model, seed=seed, use_cudnn=use_cudnn, dtype=dtype)
            self._slots = self._net.slots()  # canonical order
            self._vars = [s.var for s in self._slots]  # every one is trained
            self._opt = make_optimizer(self.train)
            self._opt.build(self._vars)
            # load() resets the optimiser by restoring these (slots, accumulators, iterations=0)
            self._opt_init = [(v, v.numpy()) for v in self._opt.variables]

        jit = bool(jit_compile)
        self._forward_fn = tf.function(self._forward_impl, jit_compile=jit)
        self._eval_fn = tf.function(self._eval_impl, jit_compile=jit)
        self._grads_fn = tf.function(self._grads_impl, jit_compile=jit)
        self._train_fn = tf.function(self._train_impl, jit_compile=jit)
        self._gen_fns: dict[tuple[float, int], Any] = {}  # (temperature, top_k) -> per-token step
        self._last: Any = None  # the latest result tensor, fetched by sync()
        self.load(params)

    # ---- parameters and data ---------------------------------------------------
    def load(self, params: Params) -> None:
        check_params(self.model, params)
        self._net.assign(params)
        for v, init in self._opt_init:
            v.assign(init)

    def params(self) -> Params:
        return {s.name: self._net.canonical(s, s.var.numpy()) for s in self._slots}

    def put(self, tokens: np.ndarray) -> tf.Tensor:
        t = np.asarray(tokens)
        if t.ndim != 2:
            raise ValueError(f"tokens must be (B, T), got shape {t.shape}")
        with tf.device(self._dev):
            return tf.identity(tf.constant(t.astype(np.int32)))  # (B, T) on the device

    def state(self, h: np.ndarray, c: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.device(self._dev):
            return (tf.identity(tf.constant(np.asarray(h, self.dtype))),
                    tf.identity(tf.constant(np.asarray(c, self.dtype))))  # (L, B, H) each

    def fetch_state(self, state: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.array(state[0].numpy(), np.float64), np.array(state[1].numpy(), np.float64)

    def sync(self) -> None:
        if self._last is not None:
            self._last.numpy()  # blocks until the op producing it (and its inputs) is done
        tf.test.experimental.sync_devices()

    def value(self, x: Any) -> float:
        return float(x.numpy())

    # ---- the graph bodies (traced by tf.function) -------------------------------------
    def _run(self, tok: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, training: bool
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """tok (B, T) int32, h0/c0 (L, B, H) -> logits (B, T, V), h, c (L, B, H)."""
        with tf.device(self._dev):
            return self._net(tok, h0, c0, training=training)

    @staticmethod
    def _loss(logits: tf.Tensor, tgt: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tgt, logits=logits))

    def _forward_impl(self, tok, h0, c0):  # type: ignore[no-untyped-def]
        return self._run(tok, h0, c0, training=False)

    def _eval_impl(self, tok, tgt, h0, c0):  # type: ignore[no-untyped-def]
        logits, h, c = self._run(tok, h0, c0, training=False)
        return self._loss(logits, tgt), h, c

    def _grads_impl(self, tok, tgt, h0, c0):  # type: ignore[no-untyped-def]
        with tf.GradientTape() as tape:
            logits, h, c = self._run(tok, h0, c0, training=True)
            loss = self._loss(logits, tgt)
        # dense: the embedding's gradient arrives as IndexedSlices
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, self._vars)]
        return loss, logits, h, c, grads

    def _train_impl(self, tok, tgt, h0, c0):  # type: ignore[no-untyped-def]
        with tf.device(self._dev):
            with tf.GradientTape() as tape:
                logits, h, c = self._run(tok, h0, c0, training=True)
                loss = self._loss(logits, tgt)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, self._vars)]
            self._opt.apply(grads, self._vars)  # native clip (global_clipnorm / clipvalue), update
            return loss, h, c

    def _gen_step_impl(self, tok, h0, c0, temperature, top_k, u):  # type: ignore[no-untyped-def]
        """Feed one token (1, 1), then draw the next with docs/SPEC.md §5's rule (impls.sampling):
        returns next token (1, 1) int32 and the new state. temperature, u: float64 scalars;
        top_k: int32 scalar (0 keeps all)."""
        m = self.model
        with tf.device(self._dev):
            # One step needs no time loop: call each layer's LSTMCell directly (the same
            # kernel, recurrent_kernel and bias as the LSTM layer, the same z = x W + h U + b).
            tok = tok[:, 0]  # (1,)
            x = self._net.inputs_of(tok)  # (1, E) or (1, V)
            hs, cs = [], []
            for l, lstm in enumerate(self._net.lstms):
                x, (h, c) = lstm.cell(x, [h0[l], c0[l]], training=False)  # (1, H)
                hs.append(h)
                cs.append(c)
            logits = self._net.dense(x)  # (1, V)
            h, c = tf.stack(hs), tf.stack(cs)  # (L, 1, H)
            V = m.vocab_size
            z = tf.cast(logits[0], tf.float64)  # (V,)
            greedy = tf.cast(tf.argmax(z, output_type=tf.int32), tf.int32)  # first max on ties
            z = z / tf.where(temperature > 0, temperature, tf.constant(1.0, tf.float64))
            k = tf.clip_by_value(top_k, 1, V)
            kth = tf.sort(z, direction="DESCENDING")[k - 1]
            keep = tf.logical_or(tf.logical_or(top_k <= 0, top_k >= V), z >= kth)  # ties kept
            z = tf.where(keep, z, tf.constant(-np.inf, tf.float64))
            p = tf.exp(z - tf.reduce_max(z))
            p = p / tf.reduce_sum(p)  # (V,)
            cdf = tf.cumsum(p)
            i = tf.reduce_sum(tf.cast(cdf <= u, tf.int32))  # first id with u < cdf
            last_nonzero = tf.reduce_max(tf.where(p > 0, tf.range(V), tf.zeros([V], tf.int32)))
            i = tf.where(i >= V, last_nonzero, i)  # rounding: u >= cdf[-1]
            nxt = tf.where(temperature > 0, i, greedy)
            return tf.reshape(nxt, (1, 1)), h, c

    # ---- the Backend methods ---------------------------------------------------------
    def forward(self, tokens: tf.Tensor, state: Any) -> tuple[np.ndarray, Any]:
        logits, h, c = self._forward_fn(tokens, state[0], state[1])
        return np.array(logits.numpy(), np.float64), (h, c)

    def eval_step(self, tokens: tf.Tensor, targets: tf.Tensor, state: Any) -> tuple[Any, Any]:
        loss, h, c = self._eval_fn(tokens, targets, state[0], state[1])
        self._last = loss
        return loss, (h, c)

    def loss_and_grads(self, tokens: tf.Tensor, targets: tf.Tensor, state: Any
                       ) -> tuple[float, np.ndarray, Any, Params]:
        loss, logits, h, c, grads = self._grads_fn(tokens, targets, state[0], state[1])
        g = {s.name: self._net.canonical(s, gr.numpy()) for s, gr in zip(self._slots, grads)}
        return float(loss.numpy()), np.array(logits.numpy(), np.float64), (h, c), g

    def train_step(self, tokens: tf.Tensor, targets: tf.Tensor, state: Any) -> tuple[Any, Any]:
        loss, h, c = self._train_fn(tokens, targets, state[0], state[1])
        self._last = loss
        return loss, (h, c)

    def _gen_fn(self, temperature: float, top_k: int) -> Any:
        """The per-token tf.function for one sampling rule: (tok (1, 1), (h, c) stacked
        (2, L, 1, H), u) -> (next token (1, 1), the new (h, c)). The rule is a constant of the
        trace and the state one tensor, because a tf.function call costs ~25 us per tensor
        argument here (205 us with 3, 280 with 6: measured), a per-token toll: with the rule and
        h, c as six arguments this loop ran 1.19x the baseline's three-argument step."""
        key = (temperature, top_k)
        if key not in self._gen_fns:
            temp, k = tf.constant(temperature, tf.float64), tf.constant(top_k, tf.int32)

            def step(tok, hc, u):  # type: ignore[no-untyped-def]
                nxt, h, c = self._gen_step_impl(tok, hc[0], hc[1], temp, k, u)
                return nxt, tf.stack([h, c])

            self._gen_fns[key] = tf.function(step, jit_compile=bool(self.jit_compile))
        return self._gen_fns[key]

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        prefix = prefix_ids(prefix)
        m = self.model
        step = self._gen_fn(float(temperature), int(top_k))
        with tf.device(self._dev):
            hc = tf.zeros((2, m.num_layers, 1, m.hidden_size), self.dtype)  # (h, c) stacked
            us = [tf.constant(float(x), tf.float64) for x in np.asarray(uniforms)[:n]]
            toks = [tf.constant(np.full((1, 1), t, np.int32)) for t in prefix]
        # Prefix steps: their draws are discarded, except the last one's (the first token).
        for t in toks[:-1]:
            _, hc = step(t, hc, us[0])
        nxt, hc = step(toks[-1], hc, us[0])
        out = [nxt]
        for j in range(1, n):  # the drawn token stays on the device and is fed straight back
            nxt, hc = step(nxt, hc, us[j])
            out.append(nxt)
        return np.concatenate([o.numpy().reshape(1) for o in out]).astype(np.int64)


# ---- XLA availability: compile and run one train step of a tiny model, once per device ----
_XLA_CHECKED: dict[str, str | None] = {}  # device -> None (works) or the error


def _check_xla(device: str) -> None:
    if device not in _XLA_CHECKED:
        m = ModelConfig(vocab_size=3, hidden_size=2, num_layers=1)
        tc = TrainConfig()
        try:
            be = TensorflowBackend(m, tc, init_params(m, 0), device=device, jit_compile=True, _probe=True)
            tok = be.put(np.zeros((1, 2), np.int64))
            loss, _ = be.train_step(tok, tok, be.state(np.zeros((1, 1, 2)), np.zeros((1, 1, 2))))
            be.value(loss)
            _XLA_CHECKED[device] = None
        except (tf.errors.OpError, ValueError, RuntimeError) as e:
            _XLA_CHECKED[device] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    err = _XLA_CHECKED[device]
    if err is not None:
        raise BackendError(f"tensorflow-xla cannot run on {device} here: XLA failed to compile "
                           f"the train step ({err}); use the `tensorflow` backend instead")


# ---- tensorflow-genloop: the whole generation loop as one tf.function --------------------

class TensorflowGenLoopBackend(TensorflowBackend):
    """`tensorflow` with generation compiled whole: the prefix, every step and every draw
    (the same `_gen_step_impl` body as the per-token variant) inside one `tf.function`, the
    loops autograph-converted to `tf.while_loop`s, compiled by XLA (`jit_compile=True` on that
    function alone: `jit_loop`), so one call returns all n tokens. This is what `jax` does with
    `lax.scan`; the per-token `tensorflow` variant pays one function call and its Python
    dispatch per token instead. Measured at char-rnn's sizes, one thread (docs/speed.md): 20 us
    a character under XLA, 90 without it (TF's executor runs the while loop's ops one by one),
    530 per token. Registry modes=("eval", "generate"): its eval
    step is the `tensorflow` backend's own (kept so that the conformance suite, whose
    no-train path needs eval, checks it whole; matrices need only its generate cells); train
    raises NotImplementedError."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 jit_loop: bool = True, **kw: Any) -> None:
        super().__init__(model, train, params, **kw)
        # any prefix length and n: one trace per backend object; XLA compiles per shape
        sig = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float64),
               tf.TensorSpec([], tf.float64), tf.TensorSpec([], tf.int32)]
        self.jit_loop = bool(jit_loop or self.jit_compile)
        self._gen_loop_fn = tf.function(self._gen_loop_impl, input_signature=sig,
                                        jit_compile=self.jit_loop)

    def _gen_loop_impl(self, prefix, uniforms, temperature, top_k):  # type: ignore[no-untyped-def]
        """prefix (P,) int32 with P >= 1, uniforms (n,) float64 with n >= 1 -> (n,) int32."""
        m = self.model
        zeros = tf.zeros((m.num_layers, 1, m.hidden_size), self.dtype)
        h, c = zeros, zeros
        P, n = tf.shape(prefix)[0], tf.shape(uniforms)[0]
        u0 = uniforms[0]
        # all but the last prefix token only advance the state
        for i in tf.range(P - 1):
            _, h, c = self._gen_step_impl(tf.reshape(prefix[i], (1, 1)), h, c, temperature, top_k, u0)
        nxt, h, c = self._gen_step_impl(tf.reshape(prefix[P - 1], (1, 1)), h, c, temperature, top_k, u0)
        out = tf.TensorArray(tf.int32, size=n)
        out = out.write(0, nxt[0, 0])
        for j in tf.range(1, n):
            nxt, h, c = self._gen_step_impl(nxt, h, c, temperature, top_k, uniforms[j])
            out = out.write(j, nxt[0, 0])
        return out.stack()

    _ONLY = ("tensorflow-genloop has no train mode (registry modes=('eval', 'generate')); "
             "its train step would be the `tensorflow` backend's: use that")

    def train_step(self, tokens: Any, targets: Any, state: Any) -> Any:
        raise NotImplementedError(self._ONLY)

    def loss_and_grads(self, tokens: Any, targets: Any, state: Any) -> Any:
        raise NotImplementedError(self._ONLY)

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        prefix = prefix_ids(prefix)
        if n == 0:
            return np.empty(0, np.int64)
        with tf.device(self._dev):
            toks = self._gen_loop_fn(tf.constant(prefix.astype(np.int32)),
                                     tf.constant(np.asarray(uniforms, np.float64)[:n]),
                                     tf.constant(float(temperature), tf.float64),
                                     tf.constant(int(top_k), tf.int32))
        return np.asarray(toks.numpy(), np.int64)
