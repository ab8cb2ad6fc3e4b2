"""Every backend and variant, as data. Nothing here imports a framework: `load` imports a
backend module lazily, and a missing framework makes that one backend unavailable with the
reason, never the others."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    name: str  # what users type: --backend NAME
    module: str  # impls.<framework>_impl
    cls: str  # the class implementing impls.base.Backend
    framework: str  # the import name whose absence makes this backend unavailable
    env: str  # the environment it lives in: "main" (NumPy 2) or "chainer" (NumPy < 2)
    dtype: str  # the dtype it computes in by default
    devices: tuple[str, ...]  # where it can run
    description: str  # what it is, honestly: fused kernel, per-step loop, ...
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra constructor arguments
    # optimiser name -> how the framework's native formula differs from SPEC §4
    deviations: dict[str, "Deviation"] = field(default_factory=dict)


@dataclass(frozen=True)
class Deviation:
    """A native optimiser formula that differs from SPEC §4 by design. `eps_form` names the
    NumpyBackend variant that computes the native formula exactly, so the check can prove
    that the measured difference has this cause and no other."""
    eps_form: str  # "eps_hat" | "eps_inside" (impls.numpy_impl.EPS_FORMS)
    cause: str  # one line, shown by `lstmbench backends` and `case diff`


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

BACKENDS: dict[str, BackendSpec] = {b.name: b for b in (
    BackendSpec("numpy", "impls.numpy_impl", "NumpyBackend", "numpy", "main", "float64", ("cpu",),
                "the float64 reference: hand-written BPTT, the oracle"),
    BackendSpec("numpy-f32", "impls.numpy_impl", "NumpyBackend", "numpy", "main", "float32",
                ("cpu",), "the reference in float32: what you get with no framework"),
    BackendSpec("torch", "impls.torch_impl", "TorchBackend", "torch", "main", "float32",
                ("cpu", "gpu"), "nn.LSTM: fused kernel (oneDNN on CPU, cuDNN on GPU)"),
    BackendSpec("torch-cell", "impls.torch_impl", "TorchCellBackend", "torch", "main", "float32",
                ("cpu", "gpu"), "char-rnn's cell: per-step loop of i2h + h2h Linear layers"),
    BackendSpec("tensorflow", "impls.tensorflow_impl", "TensorflowBackend", "tensorflow", "main",
                "float32", ("cpu", "gpu"), "Keras 3 layers.LSTM, train step in tf.function",
                deviations=KERAS_DEVIATIONS),
    BackendSpec("tensorflow-xla", "impls.tensorflow_impl", "TensorflowBackend", "tensorflow",
                "main", "float32", ("cpu", "gpu"), "as tensorflow, tf.function(jit_compile=True)",
                kwargs={"jit_compile": True},
                deviations=KERAS_DEVIATIONS),
    BackendSpec("jax", "impls.jax_impl", "JaxBackend", "jax", "main", "float32", ("cpu", "gpu"),
                "pure functions, lax.scan over time, whole step under jax.jit"),
    BackendSpec("chainer", "impls.chainer_impl", "ChainerBackend", "chainer", "chainer", "float32",
                ("cpu",), "RNNForLM shape: one L.LSTM per layer called per time step",
                deviations=CHAINER_DEVIATIONS),
)}


class BackendError(Exception):
    """A backend cannot be used here; the message says why and how to fix it."""


def get_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}") from None


def load_module(spec: BackendSpec) -> ModuleType:
    """Import the backend module, turning a missing framework into a BackendError."""
    try:
        return importlib.import_module(spec.module)
    except ImportError as e:
        hint = ("it lives in its own environment (NumPy < 2): run `lstmbench setup chainer`"
                if spec.env == "chainer" else f"install it: pip install -e '.[{spec.framework}]'")
        raise BackendError(f"backend {spec.name} is unavailable here ({e}); {hint}") from None


def create(name: str, model: Any, train: Any, params: Any, *, device: str = "cpu",
           dtype: str | None = None, seed: int = 0, **extra: Any) -> Any:
    """Construct backend `name` (module imported lazily); `extra` goes to the constructor."""
    spec = get_spec(name)
    if device not in spec.devices:
        raise BackendError(f"backend {name} does not run on {device}; it runs on {', '.join(spec.devices)}")
    cls = getattr(load_module(spec), spec.cls)
    return cls(model, train, params, device=device, dtype=dtype or spec.dtype, seed=seed, **spec.kwargs, **extra)


def availability(name: str) -> tuple[bool, str]:
    """(available, version or reason), importing the framework in this process."""
    spec = get_spec(name)
    try:
        mod = importlib.import_module(spec.framework)
    except ImportError as e:
        return False, str(e)
    return True, str(getattr(mod, "__version__", "?"))
