"""Every backend and variant, as data, and what each can do. Nothing here imports a framework:
`load_module` imports a backend module lazily, and a missing framework makes that one backend
unavailable with the reason, never the others.

The contract (docs/SPEC.md §10):
- `BackendSpec` says what a backend is and what it supports (modes, devices, precisions) and
  which environment variables its process needs set before its framework is imported.
- `unsupported(name, mode=, device=, precision=)` gives the reason a combination cannot run,
  or None; the harness records such a cell as "unsupported" with that reason, never an error.
- `hook(name, hook_name)` returns one of a backend module's optional module-level functions
  (HOOKS), so the harness never switches on framework names.
- `create(...)` returns an object satisfying `impls.base.Backend`.

A new backend is one module `impls/<x>_impl.py` plus one `BackendSpec` entry in BACKENDS (its
baseline for `lstmbench baselines` included), and its tox environment: nothing in harness/.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .base import Backend

MODES: tuple[str, ...] = ("train", "eval", "generate")  # what a cell can measure
# The libraries a user writes the model in: every backend belongs to one (BackendSpec.framework),
# so that the backends of one framework can be grouped ("Each framework at its fastest").
FRAMEWORKS: tuple[str, ...] = ("torch", "tensorflow", "keras", "jax", "flax", "onnxruntime",
                               "chainer", "numpy")
DEVICES: tuple[str, ...] = ("cpu", "gpu")
# tf32: TensorFloat-32 matmuls, a GPU mode; float64: the reference oracle's only precision
# (never timed: `run --precision` offers float32 and tf32)
PRECISIONS: tuple[str, ...] = ("float32", "tf32", "float64")

# The optional module-level functions a backend module may define, with their signatures:
#   kernel_info(backend_name: str, device: str) -> dict[str, str]
#       the kernel path THIS variant runs on, e.g. {"kernel": "oneDNN"}; merged over configure()'s
#       facts for the results file. Call after configure().
#   device_peak_memory(device: str, reset: bool) -> int | None
#       the framework allocator's peak bytes on a GPU since the last reset; reset=True resets
#       the counter and returns None. None where the framework has no such counter.
#   device_matmul_peak(device: str) -> float | None
#       best strict-float32 GEMM GFLOP/s measured now on `device` with this framework (the
#       efficiency denominator on a GPU); None where it cannot measure there.
HOOKS: tuple[str, ...] = ("kernel_info", "device_peak_memory", "device_matmul_peak")


@dataclass(frozen=True)
class Deviation:
    """A native optimiser formula that differs from docs/SPEC.md §4 by design. `eps_form` names
    the NumpyBackend variant that computes the native formula exactly, so the check can prove
    that the measured difference has this cause and no other."""
    eps_form: str  # "eps_hat" | "eps_inside" (impls.numpy_impl.EPS_FORMS)
    cause: str  # one line, shown by `lstmbench backends` and `case diff`


@dataclass(frozen=True)
class BackendSpec:
    name: str  # what users type: --backend NAME
    module: str  # impls.<framework>_impl
    cls: str  # the class implementing impls.base.Backend
    framework: str  # the library a user writes it in: one of FRAMEWORKS (keras-jax is keras)
    env: str  # the environment it lives in: "main" (NumPy 2) or "chainer" (NumPy < 2)
    dtype: str  # the dtype it computes in by default
    description: str  # what it is, honestly: fused kernel, per-step loop, ...
    devices: tuple[str, ...] = ("cpu",)  # where it can run
    modes: tuple[str, ...] = MODES  # what it can run: a subset of MODES
    precisions: tuple[str, ...] = ("float32",)  # "tf32" too where a GPU TF32 path exists
    # set in the worker's environment BEFORE the framework is imported (KERAS_BACKEND=jax):
    # such a backend cannot be created in a process whose environment differs
    env_vars: dict[str, str] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra constructor arguments
    # optimiser name -> how the framework's native formula differs from docs/SPEC.md §4
    deviations: dict[str, Deviation] = field(default_factory=dict)
    # the hand-written step of this framework that `lstmbench baselines` times it against:
    # benchmarks/baselines/<baseline>_baseline.py, or None where there is none
    baseline: str | None = None
    baseline_note: str = ""  # why that baseline is the fair one, or why there is none
    # the import names whose absence makes it unavailable here (default: the framework's own);
    # a framework on another engine needs both (keras-jax: keras and jax)
    requires: tuple[str, ...] = ()
    # mode ("*": every mode) -> the measured cause of this backend being more than the threshold
    # slower than its baseline (`lstmbench baselines` prints it; measured causes only)
    baseline_slower: dict[str, str] = field(default_factory=dict)
    # the modes in which it is in the `default` matrix: its framework's fastest there
    # (docs/speed.md: the interleaved runs at char-rnn's sizes, one thread)
    default_matrix: tuple[str, ...] = ()
    # median seconds of one train step at char-rnn's sizes with one thread (30-step probes, 2
    # December 2026, two other jobs on the cores): the quality matrix's lanes take the slowest first
    train_step_s: float | None = None

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"backend {self.name}: framework {self.framework!r} must be one of "
                             f"{FRAMEWORKS!r}: the library a user writes the model in")
        if not self.requires:
            object.__setattr__(self, "requires", (self.framework,))
        # a typo in an entry must fail at import, not as a silently skipped cell
        for what, got, allowed in (("modes", self.modes, MODES), ("devices", self.devices, DEVICES),
                                   ("precisions", self.precisions, PRECISIONS)):
            bad = [x for x in got if x not in allowed]
            if bad or not got:
                raise ValueError(f"backend {self.name}: {what} {got!r} must be a non-empty subset "
                                 f"of {allowed!r}")
        if self.dtype not in self.precisions:  # what `backends` lists must be what it computes in
            raise ValueError(f"backend {self.name}: precisions {self.precisions!r} must include its "
                             f"dtype {self.dtype!r}")
        if not self.baseline_note:
            raise ValueError(f"backend {self.name}: baseline_note must say why its baseline "
                             f"({self.baseline}) is the fair one, or why it has none")


KERAS_DEVIATIONS = {
    "adam": Deviation("eps_hat", "Keras Adam adds epsilon to sqrt(v) before bias correction "
                                 "(Kingma & Ba's epsilon-hat): effective eps = eps*sqrt(1-beta2^t); "
                                 "its beta powers are float32 (sqrt(1-beta2^t) off by ~6e-6)"),
    "rmsprop": Deviation("eps_inside", "Keras RMSprop adds epsilon inside the root: lr*g/sqrt(v+eps)"),
    "adagrad": Deviation("eps_inside", "Keras Adagrad adds epsilon inside the root: lr*g/sqrt(s+eps)"),
}
CHAINER_DEVIATIONS = {
    "adam": Deviation("eps_hat", "Chainer Adam adds eps to sqrt(v) before bias correction: "
                                 "effective eps = eps*sqrt(1-beta2^t)"),
}

_GPU = ("cpu", "gpu")
_TF32 = ("float32", "tf32")

# The environments other than "main" that backends live in (BackendSpec.env), as `lstmbench setup
# ENV` builds them: environment name -> pip arguments in order, each list one `pip install` call.
ENVIRONMENTS: dict[str, list[list[str]]] = {
    "chainer": [
        # setuptools < 81 keeps pkg_resources (chainer's setup.py); < 70 keeps
        # distutils.msvccompiler, which numpy.distutils imports when chainer loads
        ["numpy<2", "setuptools<70", "wheel"],
        # Chainer 7.8.1's sdist imports pkg_resources in setup.py: build without isolation
        ["--no-build-isolation", "chainer==7.8.1"],
    ],
}

ORACLE = "numpy"  # the float64 reference every check compares against; never timed
REFERENCE = "numpy-f32"  # the reference in float32: the quality matrix's calibration, evaluate's default

BACKENDS: dict[str, BackendSpec] = {b.name: b for b in (
    BackendSpec("numpy", "impls.numpy_impl", "NumpyBackend", "numpy", "main", "float64",
                "the float64 reference: hand-written BPTT, the oracle", precisions=("float64",),
                baseline=None,
                baseline_note="the float64 oracle: hand-written NumPy itself, never timed"),
    BackendSpec("numpy-f32", "impls.numpy_impl", "NumpyBackend", "numpy", "main", "float32",
                "the reference in float32: what you get with no framework",
                baseline=None,
                baseline_note="the backend is itself hand-written NumPy: it is what a user writes",
                default_matrix=('train', 'eval', 'generate'),
                train_step_s=0.14),
    BackendSpec("torch", "impls.torch_impl", "TorchBackend", "torch", "main", "float32",
                "nn.LSTM: fused kernel (oneDNN on CPU, cuDNN on GPU)",
                devices=_GPU, precisions=_TF32,
                baseline="torch",
                baseline_note="nn.LSTM with torch.optim: the baseline's own layers",
                default_matrix=('train', 'eval'),
                train_step_s=0.09),
    BackendSpec("torch-cell", "impls.torch_impl", "TorchCellBackend", "torch", "main", "float32",
                "char-rnn's cell: per-step loop of i2h + h2h Linear layers",
                devices=_GPU, precisions=_TF32,
                baseline="torch", baseline_note="the same model a torch user writes with nn.LSTM",
                baseline_slower={
                    '*': ("char-rnn's cell by design: a Python loop of i2h + h2h Linear calls "
                          'per time step, where nn.LSTM runs one fused oneDNN kernel per layer')},
                train_step_s=0.14),
    BackendSpec("tensorflow", "impls.tensorflow_impl", "TensorflowBackend", "tensorflow", "main",
                "float32", "Keras 3 layers.LSTM, train step in tf.function",
                devices=_GPU, precisions=_TF32, deviations=KERAS_DEVIATIONS,
                baseline="tensorflow",
                baseline_note="Keras layers + GradientTape in a tf.function",
                requires=('tensorflow', 'keras'),
                default_matrix=('train',),
                train_step_s=0.13),
    BackendSpec("tensorflow-xla", "impls.tensorflow_impl", "TensorflowBackend", "tensorflow",
                "main", "float32", "as tensorflow, tf.function(jit_compile=True)",
                devices=_GPU, precisions=_TF32, kwargs={"jit_compile": True},
                deviations=KERAS_DEVIATIONS,
                baseline="tensorflow", baseline_note="the same step without jit_compile",
                requires=('tensorflow', 'keras'),
                baseline_slower={
                    'train': ('jit_compile=True by design, and thread-bound: at one thread '
                              "XLA:CPU trains in tensorflow's time (1.02x, 0.99x in the run of "
                              'docs/speed.md); at two it took 77 against its own 65 ms a step '
                              '(its pool splits each small op of the backward loop across '
                              "threads) while TF's kernels stayed at 63 ms: 1.23x (5 December: "
                              '1.49x)')},
                default_matrix=('eval',),
                train_step_s=0.12),
    BackendSpec("jax", "impls.jax_impl", "JaxBackend", "jax", "main", "float32",
                "pure functions, lax.scan over time, whole step under jax.jit",
                devices=_GPU, precisions=_TF32,
                baseline="jax", baseline_note="lax.scan LSTM cell, optax, jax.jit",
                default_matrix=('train', 'eval', 'generate'),
                train_step_s=0.16),
    BackendSpec("chainer", "impls.chainer_impl", "ChainerBackend", "chainer", "chainer", "float32",
                "RNNForLM shape: one L.LSTM per layer called per time step",
                deviations=CHAINER_DEVIATIONS,
                baseline="chainer",
                baseline_note="RNNForLM and BPTTUpdater of Chainer's ptb example",
                default_matrix=('train', 'eval', 'generate'),
                train_step_s=0.37),
    BackendSpec("torch-compile", "impls.torch_compile_impl", "TorchCompileBackend", "torch", "main",
                "float32", "torch's nn.LSTM model under torch.compile (inductor): the LSTM itself "
                "stays eager (Dynamo graph-breaks on it), input/output layers, loss, clip and "
                "optimiser step compiled; generation a compiled one-token step",
                baseline="torch", baseline_note="the eager nn.LSTM step it compiles",
                baseline_slower={
                    'generate': ('Dynamo graph-breaks at nn.LSTM, so each token runs the '
                                 'compiled step as three frames around the eager LSTM: three '
                                 'guard checks and ~70 us of compiled-region overhead a token '
                                 '(torch.profiler, char-rnn sizes: 16% of the loop) where the '
                                 'baseline makes one eager call; the loop compiled whole is '
                                 'torch-genloop (docs/speed.md)'),
                    'train': ("glibc's allocator, not its code: the same oneDNN RNN kernels "
                              '(torch.profiler: 93% of both steps; compiled regions under 3%) '
                              'run in one of two speeds, 44 or 59 ms a step at char-rnn sizes, '
                              "and in the slow one some of the step's large buffers come from "
                              "fresh mmap'd pages (glibc's dynamic mmap and trim thresholds; "
                              "every buffer over 64 KiB mmap'd: 73-84 ms); "
                              "torch-compile's allocations land there in most rounds, the "
                              "baseline's in some processes. With MALLOC_MMAP_THRESHOLD_ and "
                              'MALLOC_TRIM_THRESHOLD_ fixed at 256 MiB it trains 1.01 [0.99, '
                              '1.03] its baseline, interleaved, where the same run without '
                              'them read 1.19 [1.06, 1.34] (7 December; docs/speed.md)')},
                train_step_s=0.1),
    BackendSpec("torch-genloop", "impls.torch_genloop_impl", "TorchGenLoopBackend", "torch", "main",
                "float32", "torch with the whole generation loop (prefix, steps, draws) in one "
                "torch.compile'd program: one torch while_loop over the LSTM step written as "
                "tensor ops on the nn.LSTM's weights, pre-transposed; inductor's C++ wrapper; "
                "on a GPU one CUDA graph per (prefix, n) (written, not measured here); eval is "
                "torch's own nn.LSTM step; no train mode",
                devices=_GPU, precisions=_TF32, modes=("eval", "generate"),
                baseline="torch",
                baseline_note="its compiled generation loop against the plain PyTorch loop a "
                              "user writes (one nn.LSTM call and one torch.multinomial per "
                              "character); its eval step is torch's own, and it has no train mode",
                default_matrix=('generate',)),
    BackendSpec("onnxruntime", "impls.onnx_impl", "OnnxBackend", "onnxruntime", "main", "float32",
                "an ONNX graph built from the canonical parameters (LSTM operator, gate order "
                "i,o,f,c) run by ONNX Runtime's CPU provider; generation one graph (the prefix, "
                "then a Loop drawing each token in float64 ONNX ops and feeding it back)",
                modes=("eval", "generate"),
                baseline=None,
                baseline_note="the exported graph is what a user runs; no train mode",
                requires=('onnxruntime', 'onnx')),
    BackendSpec("keras-jax", "impls.keras_impl", "KerasBackend", "keras", "main", "float32",
                "the tensorflow backend's Keras 3 model on the JAX engine: stateless_call + "
                "jax.grad + optimizer.stateless_apply, the step under jax.jit; generation one "
                "jitted program (lax.scan of one-token stateless_calls)",
                env_vars={"KERAS_BACKEND": "jax"}, kwargs={"engine": "jax"},
                deviations=KERAS_DEVIATIONS,
                baseline="keras",
                baseline_note="Sequential, compile, train_on_batch/test_on_batch (KERAS_BACKEND=jax)",
                requires=('keras', 'jax'),
                train_step_s=0.15),
    BackendSpec("keras-torch", "impls.keras_impl", "KerasBackend", "keras", "main", "float32",
                "the tensorflow backend's Keras 3 model on the PyTorch engine: eager, "
                "loss.backward(), optimizer.apply; Keras' torch LSTM (use_cudnn='auto'): the input "
                "projection one matmul per window, the recurrent step a loop of torch ops; "
                "generation the layers' LSTMCells per token, eager",
                env_vars={"KERAS_BACKEND": "torch"}, kwargs={"engine": "torch"},
                deviations=KERAS_DEVIATIONS,
                baseline="keras",
                baseline_note="Sequential, compile, train_on_batch/test_on_batch (KERAS_BACKEND=torch)",
                requires=('keras', 'torch'),
                train_step_s=0.32),
    BackendSpec("flax", "impls.flax_impl", "FlaxBackend", "flax", "main", "float32",
                "Flax NNX: nnx.OptimizedLSTMCell over time by nnx.RNN (scan), optax, the train "
                "step under nnx.jit; generation one compiled program (nnx.split, then nnx.merge "
                "and lax.scan over the cells inside jax.jit)",
                deviations={"adagrad": Deviation(
                    "eps_inside", "optax.adagrad adds eps inside the root: g*rsqrt(s+eps) "
                                  "(no option to move it out)")},
                baseline="jax", baseline_note="the plain-JAX step Flax wraps",
                requires=('flax', 'optax', 'jax'),
                train_step_s=0.14),
    BackendSpec("tensorflow-genloop", "impls.tensorflow_impl", "TensorflowGenLoopBackend",
                "tensorflow", "main", "float32",
                "tensorflow with the whole generation loop (prefix, steps, draws) in one "
                "tf.function (tf.while_loop) compiled by XLA (jit_compile=True on that function); "
                "eval is tensorflow's own step; no train mode",
                modes=("eval", "generate"),
                baseline="tensorflow",
                baseline_note="its compiled generation loop against the plain Keras loop a user "
                              "writes (one model call per character); its eval step is "
                              "tensorflow's own, and it has no train mode",
                requires=('tensorflow', 'keras'),
                default_matrix=('generate',)),
)}


class BackendError(Exception):
    """A backend cannot be used here; the message says why and how to fix it."""


def timed() -> list[str]:
    """Every backend but the oracle, in registry order: what `run`, `check` and `quality` take
    where no --backends is given (a matrix may name its own)."""
    return [b for b in BACKENDS if b != ORACLE]


def default_matrix() -> dict[str, tuple[str, ...]]:
    """The `default` matrix's backends by mode (BackendSpec.default_matrix): one per framework,
    in the order the frameworks first appear here."""
    first: dict[str, int] = {}
    for s in BACKENDS.values():
        first.setdefault(s.framework, len(first))
    out: dict[str, tuple[str, ...]] = {}
    for mode in MODES:
        names = [b for b, s in BACKENDS.items() if mode in s.default_matrix]
        out[mode] = tuple(sorted(names, key=lambda b: first[BACKENDS[b].framework]))
    return out


def get_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}") from None


def unsupported(name: str, *, mode: str | None = None, device: str | None = None,
                precision: str | None = None) -> str | None:
    """Why backend `name` cannot run this mode/device/precision (one line), or None when its
    spec supports it. Arguments left None are not checked. Says nothing about whether the
    framework is installed here: that is `availability`."""
    spec = get_spec(name)
    if mode is not None and mode not in spec.modes:
        return f"backend {name} has no {mode} mode (it runs {', '.join(spec.modes)})"
    if device is not None and device not in spec.devices:
        return f"backend {name} does not run on {device} (it runs on {', '.join(spec.devices)})"
    if precision is not None:
        if precision not in spec.precisions:
            return f"backend {name} has no {precision} precision (it has {', '.join(spec.precisions)})"
        if precision == "tf32" and device is not None and device != "gpu":
            return "precision tf32 exists only on a GPU"
    return None


def env_mismatch(name: str, environ: Any = None) -> str | None:
    """Why this process cannot host backend `name` because its spec's env_vars differ from
    `environ` (default os.environ), or None. Such a backend runs in its own worker, whose
    environment the harness sets (harness.envs)."""
    spec = get_spec(name)
    env = os.environ if environ is None else environ
    wrong = {k: v for k, v in spec.env_vars.items() if env.get(k) != v}
    if not wrong:
        return None
    need = " ".join(f"{k}={v}" for k, v in wrong.items())
    return (f"backend {name} needs {need} set before its framework is imported; run it in its "
            f"own worker (lstmbench case run / check do) or start Python with {need}")


def load_module(spec: BackendSpec) -> ModuleType:
    """Import the backend module, turning a missing framework into a BackendError."""
    try:
        return importlib.import_module(spec.module)
    except ImportError as e:
        hint = ("it lives in its own environment (NumPy < 2): run `lstmbench setup chainer`"
                if spec.env == "chainer" else f"install it: pip install -e '.[{spec.framework}]'")
        raise BackendError(f"backend {spec.name} is unavailable here ({e}); {hint}") from None


def hook(name: str, hook_name: str) -> Callable[..., Any] | None:
    """Backend `name`'s module-level hook `hook_name` (one of HOOKS; signatures above), or
    None when its module does not define it. Imports the module: raises BackendError when
    the backend is unknown or its framework is missing here."""
    if hook_name not in HOOKS:
        raise ValueError(f"unknown hook {hook_name!r}; hooks are: {', '.join(HOOKS)}")
    fn = getattr(load_module(get_spec(name)), hook_name, None)
    return fn if callable(fn) else None


def create(name: str, model: Any, train: Any, params: Any, *, device: str = "cpu",
           dtype: str | None = None, seed: int = 0, **extra: Any) -> "Backend":
    """Construct backend `name` (module imported lazily); `extra` goes to the constructor
    (e.g. precision="tf32"). Raises BackendError when the spec does not support the device or
    precision, when this process's environment lacks the spec's env_vars, or when the
    framework is missing."""
    spec = get_spec(name)
    why = unsupported(name, device=device, precision=extra.get("precision"))
    if why:
        raise BackendError(why)
    why = env_mismatch(name)
    if why:
        raise BackendError(why)
    cls = getattr(load_module(spec), spec.cls)
    return cls(model, train, params, device=device, dtype=dtype or spec.dtype, seed=seed,
               **spec.kwargs, **extra)


def availability(name: str) -> tuple[bool, str]:
    """(available, the framework's version or the reason), importing every module the backend
    requires in this process."""
    spec = get_spec(name)
    mods = {}
    for req in spec.requires:
        try:
            mods[req] = importlib.import_module(req)
        except ImportError as e:
            return False, str(e)
    return True, str(getattr(mods.get(spec.framework), "__version__", "?"))
