"""The PyTorch backends.

- `torch` (TorchBackend): `nn.LSTM`, the fused kernel (oneDNN on the CPU, cuDNN on a GPU),
  num_layers = L with its internal dropout (which drops the inputs of layers 1..L-1), plus an
  explicit dropout on the layer-0 input and on the top output: together exactly docs/SPEC.md §1's
  placement. One-hot input is fed as one-hot vectors, as the PyTorch char-LSTM tutorial does.
- `torch-genloop` (TorchGenLoopBackend): `torch` with the whole generation loop compiled into one
  program (torch.compile of torch while_loops over the step written as tensor ops).
- `torch-cell` (TorchCellBackend): char-rnn's formulation (Torch7): per layer an `i2h`
  Linear(D, 4H) and an `h2h` Linear(H, 4H), gate blocks in char-rnn's order i, f, o, g, and an
  explicit Python loop over time in eager PyTorch. The whole window's i2h product is hoisted
  out of the loop (one matrix product per layer); the recurrence is one addmm per step.

Both keep the second LSTM bias (`bias_hh_l{k}`, `h2h.bias`) fixed at 0: it is not trained
and not clipped, so it never moves (docs/SPEC.md §2). Internally everything is time-major:
tokens are (T, B), activations (T, B, ...). Canonical <-> native layouts go through the
rows layouts.TORCH and layouts.CHAR_RNN of impls/layouts.py (explicit tables, shape checks).

Dropout masks come from PyTorch's global generator (nn.LSTM's internal dropout can use no
other), seeded with `seed` when a backend is constructed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import layouts
from .config import ModelConfig, TrainConfig
from .params import Params, check_params, param_shapes

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PRECISIONS = ("float32", "tf32")  # strict IEEE float32 matmuls, or TF32 (GPU only)

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (L, B, H) on the backend's device


# ---- process setup ------------------------------------------------------------------

def _gpu_or_raise() -> None:
    if not torch.cuda.is_available():
        raise ValueError("no CUDA GPU visible to torch")


def _torch_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device == "gpu":
        _gpu_or_raise()
        return torch.device("cuda")
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def configure(threads: int | None, device: str) -> dict[str, str]:
    """Set the intra-op thread pool (threads=None keeps PyTorch's default) and report the
    version and the kernel path nn.LSTM runs on."""
    _torch_device(device)  # validates; raises where no GPU is visible
    if threads:
        torch.set_num_threads(threads)
    info = {"version": torch.__version__, "threads": str(torch.get_num_threads())}
    if device == "gpu":
        info["kernel"] = f"cuDNN {torch.backends.cudnn.version()}"
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    else:
        info["kernel"] = "oneDNN" if torch.backends.mkldnn.is_available() else "ATen native"
    return info


# ---- hooks (impls.registry.HOOKS): what the harness asks of this module ------------------

def _cpu_blas() -> str:
    """The BLAS torch's CPU addmm calls (MKL in the PyPI CPU wheel)."""
    return "MKL" if torch.backends.mkl.is_available() else "BLAS"


def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    """The kernel path of THIS variant, from its class's `kernel_label(device)`: `torch` runs
    nn.LSTM's fused kernel (oneDNN on the CPU, cuDNN on a GPU); `torch-cell` never touches
    those: it is a Python loop of Linear layers whose products are addmm calls into the BLAS
    (cuBLAS on a GPU). A new variant class overrides kernel_label."""
    from .registry import get_spec
    cls = globals()[get_spec(backend_name).cls]
    return {"kernel": cls.kernel_label(device)}


def _fused_label(device: str) -> str:
    if device == "gpu":
        return f"cuDNN {torch.backends.cudnn.version()}"
    return "oneDNN" if torch.backends.mkldnn.is_available() else "ATen native"


def device_peak_memory(device: str, reset: bool) -> int | None:
    """torch's CUDA caching allocator peak (bytes) since the last reset; reset=True resets
    it and returns None. None on the CPU (torch keeps no CPU allocator peak)."""
    if device != "gpu" or not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


def device_matmul_peak(device: str) -> float | None:
    """Best strict-float32 (TF32 off) 8192^2 GEMM GFLOP/s on the GPU, measured now; None on
    the CPU (the harness measures NumPy's BLAS there). Restores the TF32 flag afterwards."""
    if device != "gpu" or not torch.cuda.is_available():
        return None
    n, repeats = 8192, 7
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.rand(n, n, device="cuda")
        b = torch.rand(n, n, device="cuda")
        a @ b
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            a @ b
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter_ns() - t0) / 1e9)
        del a, b
        torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n ** 3 / best / 1e9


def _set_precision(device: str, precision: str) -> None:
    """Strict float32 unless TF32 is asked for. The flags are process-wide; PyTorch's own
    default lets cuDNN use TF32, which docs/SPEC.md §8 counts as a separate precision mode."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device != "gpu":
        raise ValueError("precision 'tf32' is a GPU mode; on the CPU use precision='float32'")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


# ---- layouts: canonical <-> native (docs/SPEC.md §2, §3; the tables live in impls.layouts) ----

@dataclass(frozen=True)
class Slot:
    """One row of a backend's conversion table: where a canonical parameter lives natively."""
    canonical: str  # docs/SPEC.md §2 name
    native: str  # nn.Module parameter name
    kind: str  # "same" (identical layout) | "transpose" | "gate_weight" | "gate_bias"
    rows: int = 0  # for "gate_weight": the canonical row count (D for W_x, H for W_h)
    zero_partner: str = ""  # for "gate_bias": the second LSTM bias, held at 0 (added back on read)


def to_native(slot: Slot, value: np.ndarray, H: int, layout: layouts.Layout) -> np.ndarray:
    if slot.kind == "same":
        return value
    if slot.kind == "transpose":  # out.W (H, V) -> nn.Linear weight (V, H)
        assert value.ndim == 2
        return value.T
    if slot.kind == "gate_weight":  # (rows, 4H) -> (4H, rows), gate blocks in the layout's order
        return layouts.weight_to_native(layout, value, H)
    if slot.kind == "gate_bias":
        return layouts.bias_to_native(layout, value)
    raise AssertionError(slot.kind)


def from_native(slot: Slot, value: np.ndarray, H: int, layout: layouts.Layout,
                zero: np.ndarray | None = None) -> np.ndarray:
    """Native -> canonical; for a "gate_bias" slot, `zero` is its partner's value (summed)."""
    if slot.kind == "same":
        return value
    if slot.kind == "transpose":
        assert value.ndim == 2
        return value.T
    if slot.kind == "gate_weight":
        return layouts.weight_to_canonical(layout, value, slot.rows, H)
    if slot.kind == "gate_bias":
        return layouts.bias_to_canonical(layout, value, H, zero)
    raise AssertionError(slot.kind)


# ---- the networks (time-major: tokens (T, B) -> logits (T, B, V)) ---------------------

class _Net(nn.Module):
    """Input layer and output layer shared by both formulations."""
    LAYOUT: layouts.Layout = layouts.TORCH  # how this network stores each LSTM layer

    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.m = m
        self.p = float(m.dropout)
        if m.input == "embedding":
            self.embed = nn.Embedding(m.vocab_size, m.embed_size)  # weight (V, E) = canonical
        self.out = nn.Linear(m.hidden_size, m.vocab_size)  # weight (V, H) = out.W^T

    def _inputs(self, tok: torch.Tensor) -> torch.Tensor:
        """(T, B) ids -> layer-0 input (T, B, D0), dropout applied in train mode."""
        if self.m.input == "onehot":
            # One-hot vectors, as the PyTorch char-LSTM tutorial feeds them; a scatter into
            # zeros gives the same tensor as F.one_hot(tok, V).to(dtype) in one pass, with
            # no int64 (T, B, V) intermediate and no host-side range check (3x faster).
            x = torch.zeros((*tok.shape, self.m.vocab_size), dtype=self.out.weight.dtype,
                            device=tok.device).scatter_(-1, tok.unsqueeze(-1), 1.0)  # (T, B, V)
        else:
            x = self.embed(tok)  # (T, B, E)
        return self._drop(x)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training) if self.p > 0 else x

    def _common_slots(self) -> tuple[list[Slot], list[Slot]]:
        head = [Slot("embed", "embed.weight", "same")] if self.m.input == "embedding" else []
        tail = [Slot("out.W", "out.weight", "transpose"), Slot("out.b", "out.bias", "same")]
        return head, tail

    def slots(self) -> list[Slot]:
        raise NotImplementedError


class FusedNet(_Net):
    """nn.Embedding or one-hot -> nn.LSTM (fused, L layers) -> nn.Linear."""
    LAYOUT = layouts.TORCH

    def __init__(self, m: ModelConfig) -> None:
        super().__init__(m)
        # nn.LSTM's dropout drops the outputs of layers 0..L-2 = inputs of layers 1..L-1
        # (it warns when given p > 0 with L = 1, where it would do nothing).
        self.lstm = nn.LSTM(m.layer_input_size(0), m.hidden_size, m.num_layers,
                            dropout=self.p if m.num_layers > 1 else 0.0)

    def forward(self, tok: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
                ) -> tuple[torch.Tensor, State]:
        y, (h, c) = self.lstm(self._inputs(tok), (h0, c0))  # y (T, B, H); h, c (L, B, H)
        return self.out(self._drop(y)), (h, c)  # (T, B, V)

    def slots(self) -> list[Slot]:
        head, tail = self._common_slots()
        mid = []
        for l in range(self.m.num_layers):
            D, H = self.m.layer_input_size(l), self.m.hidden_size
            mid += [Slot(f"lstm.{l}.W_x", f"lstm.weight_ih_l{l}", "gate_weight", rows=D),
                    Slot(f"lstm.{l}.W_h", f"lstm.weight_hh_l{l}", "gate_weight", rows=H),
                    Slot(f"lstm.{l}.b", f"lstm.bias_ih_l{l}", "gate_bias",
                         zero_partner=f"lstm.bias_hh_l{l}")]
        return head + mid + tail


class CellNet(_Net):
    """char-rnn's LSTM: per layer i2h Linear(D, 4H) and h2h Linear(H, 4H), gate blocks
    [i f o g], one Python loop step per character."""
    LAYOUT = layouts.CHAR_RNN

    def __init__(self, m: ModelConfig) -> None:
        super().__init__(m)
        H = m.hidden_size
        self.i2h = nn.ModuleList(nn.Linear(m.layer_input_size(l), 4 * H) for l in range(m.num_layers))
        self.h2h = nn.ModuleList(nn.Linear(H, 4 * H) for _ in range(m.num_layers))

    def forward(self, tok: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
                ) -> tuple[torch.Tensor, State]:
        H = self.m.hidden_size
        x = self._inputs(tok)  # (T, B, D0)
        hs, cs = [], []
        for l in range(self.m.num_layers):
            if l > 0:
                x = self._drop(x)
            i2h, h2h = self.i2h[l], self.h2h[l]
            # The whole window's input product, both biases summed once: (T, B, 4H)
            zx = F.linear(x, i2h.weight, i2h.bias + h2h.bias)
            wh = h2h.weight.t()  # (H, 4H)
            h, c = h0[l], c0[l]  # (B, H)
            outs = []
            # unbind/split/chunk rather than indexing: each has one backward node that
            # assembles the pieces once, where zx[t] would scatter into a zero (T, B, 4H)
            # tensor per step (quadratic in T).
            for zx_t in zx.unbind(0):  # (B, 4H)
                z = torch.addmm(zx_t, h, wh)  # (B, 4H): [i | f | o | g]
                z_ifo, z_g = z.split((3 * H, H), dim=1)
                i, f, o = torch.sigmoid(z_ifo).chunk(3, dim=1)  # char-rnn: one sigmoid, one tanh
                g = torch.tanh(z_g)
                c = torch.addcmul(f * c, i, g)
                h = o * torch.tanh(c)
                outs.append(h)
            x = torch.stack(outs)  # (T, B, H)
            hs.append(h)
            cs.append(c)
        return self.out(self._drop(x)), (torch.stack(hs), torch.stack(cs))

    def slots(self) -> list[Slot]:
        head, tail = self._common_slots()
        mid = []
        for l in range(self.m.num_layers):
            D, H = self.m.layer_input_size(l), self.m.hidden_size
            mid += [Slot(f"lstm.{l}.W_x", f"i2h.{l}.weight", "gate_weight", rows=D),
                    Slot(f"lstm.{l}.W_h", f"h2h.{l}.weight", "gate_weight", rows=H),
                    Slot(f"lstm.{l}.b", f"i2h.{l}.bias", "gate_bias", zero_partner=f"h2h.{l}.bias")]
        return head + mid + tail


# ---- the backends ----------------------------------------------------------------------

class _TorchBase:
    """Everything but the network: parameters, data, optimiser, clipping, generation."""
    NET: type[_Net] = _Net

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 precision: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model, self.train = model, train
        self.device = _torch_device(device)
        self.dtype = DTYPES[dtype]
        self.precision = precision
        _set_precision(device, precision)
        self.net = self.NET(model).to(self.device, self.dtype)
        self.slots = self.net.slots()
        assert [s.canonical for s in self.slots] == list(param_shapes(model)), "slot table incomplete"
        # The second biases: held at 0, never trained, so neither the optimiser nor the clip
        # norm sees them.
        self._zero = [self.net.get_parameter(s.zero_partner) for s in self.slots if s.zero_partner]
        for p in self._zero:
            p.requires_grad_(False)
        self._trainable = [p for p in self.net.parameters() if p.requires_grad]
        self._training: bool | None = None
        self._mode(False)
        self.load(params)
        torch.manual_seed(seed)  # dropout masks (also seeds CUDA)

    # ---- parameters and data ---------------------------------------------------
    def _mode(self, training: bool) -> None:
        if self._training is not training:
            self.net.train(training)
            self._training = training

    def load(self, params: Params) -> None:
        check_params(self.model, params)
        H = self.model.hidden_size
        with torch.no_grad():
            for s in self.slots:
                p = self.net.get_parameter(s.native)
                v = np.ascontiguousarray(to_native(s, np.asarray(params[s.canonical]), H, self.net.LAYOUT))
                assert tuple(p.shape) == v.shape, f"{s.native}: {tuple(p.shape)} vs {v.shape}"
                p.copy_(torch.from_numpy(v))  # in place: cuDNN's flattened weight buffer stays valid
            for p in self._zero:
                p.zero_()
        self.opt = self._make_optimizer()  # fresh state, step count 0

    def params(self) -> Params:
        H = self.model.hidden_size
        out: Params = {}
        with torch.no_grad():
            for s in self.slots:
                v = self.net.get_parameter(s.native).detach().to("cpu", torch.float64).numpy()
                zero = (self.net.get_parameter(s.zero_partner).detach().to("cpu", torch.float64).numpy()
                        if s.zero_partner else None)  # the summed bias: b + 0
                out[s.canonical] = np.ascontiguousarray(from_native(s, v, H, self.net.LAYOUT, zero))
        return out

    def _grads(self) -> Params:
        """Canonical gradients from the native .grad fields (zeros where none arrived)."""
        H = self.model.hidden_size
        out: Params = {}
        for s in self.slots:
            p = self.net.get_parameter(s.native)
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            v = g.detach().to("cpu", torch.float64).numpy()
            out[s.canonical] = np.ascontiguousarray(from_native(s, v, H, self.net.LAYOUT))
        return out

    def put(self, tokens: np.ndarray) -> torch.Tensor:
        t = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).T)  # (T, B) time-major
        return torch.from_numpy(t).to(self.device)

    def state(self, h: np.ndarray, c: np.ndarray) -> State:
        return (torch.tensor(np.asarray(h), dtype=self.dtype, device=self.device).contiguous(),
                torch.tensor(np.asarray(c), dtype=self.dtype, device=self.device).contiguous())

    def fetch_state(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        return (state[0].detach().to("cpu", torch.float64).numpy(),
                state[1].detach().to("cpu", torch.float64).numpy())

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def value(self, x: Any) -> float:
        return float(x)

    # ---- compute --------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        V = self.model.vocab_size
        return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))  # mean over T*B

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[np.ndarray, State]:
        self._mode(False)
        with torch.no_grad():
            logits, final = self.net(tokens, *state)  # (T, B, V)
        return logits.transpose(0, 1).to("cpu", torch.float64).numpy(), final

    def eval_step(self, tokens: torch.Tensor, targets: torch.Tensor, state: State
                  ) -> tuple[torch.Tensor, State]:
        self._mode(False)
        with torch.no_grad():
            logits, final = self.net(tokens, *state)
            return self._loss(logits, targets), final

    def loss_and_grads(self, tokens: torch.Tensor, targets: torch.Tensor, state: State
                       ) -> tuple[float, np.ndarray, State, Params]:
        self._mode(True)
        self.opt.zero_grad(set_to_none=True)
        logits, (h, c) = self.net(tokens, *state)
        loss = self._loss(logits, targets)
        loss.backward()
        grads = self._grads()
        self.opt.zero_grad(set_to_none=True)
        out = logits.detach().transpose(0, 1).to("cpu", torch.float64).numpy()
        return float(loss.detach()), out, (h.detach(), c.detach()), grads

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o, ps = self.train.optimizer, self._trainable
        if o.name == "sgd":
            return torch.optim.SGD(ps, lr=o.lr)
        if o.name == "adam":
            return torch.optim.Adam(ps, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
        if o.name == "rmsprop":
            return torch.optim.RMSprop(ps, lr=o.lr, alpha=o.alpha, eps=o.eps)
        if o.name == "adagrad":
            return torch.optim.Adagrad(ps, lr=o.lr, eps=o.eps, initial_accumulator_value=0.0)
        raise ValueError(f"unknown optimizer {o.name!r}")

    def _clip(self) -> None:
        clip = self.train.clip
        if clip.kind == "norm":  # PyTorch scales by min(1, c / (||g|| + 1e-6)); no host sync
            torch.nn.utils.clip_grad_norm_(self._trainable, clip.value)
        elif clip.kind == "value":
            torch.nn.utils.clip_grad_value_(self._trainable, clip.value)

    def train_step(self, tokens: torch.Tensor, targets: torch.Tensor, state: State
                   ) -> tuple[torch.Tensor, State]:
        self._mode(True)
        self.opt.zero_grad(set_to_none=True)
        logits, (h, c) = self.net(tokens, *state)
        loss = self._loss(logits, targets)
        loss.backward()
        self._clip()
        self.opt.step()
        return loss.detach(), (h.detach(), c.detach())  # truncated BPTT: no graph across windows

    # ---- generation (docs/SPEC.md §5) ---------------------------------------------------------
    def _draw(self, logits: torch.Tensor, temperature: float, top_k: int, u: torch.Tensor,
              ids: torch.Tensor, no_id: torch.Tensor) -> torch.Tensor:
        """impls.sampling.draw on the device: (V,) logits, 0-d uniform -> 0-d int64 id.
        No host round trip, so the next step can be queued at once."""
        if temperature == 0:
            return torch.argmax(logits)  # first maximum on ties
        z = logits.to(torch.float64) / temperature  # (V,)
        V = z.shape[0]
        if 0 < top_k < V:
            kth = torch.topk(z, top_k).values[-1]  # k-th largest, ties counted
            z = z.masked_fill(z < kth, float("-inf"))
        p = torch.softmax(z, dim=0)
        cdf = torch.cumsum(p, dim=0)
        i = torch.searchsorted(cdf, u.reshape(1), right=True)[0]  # first id with u < cdf
        # Rounding can leave u >= cdf[-1] (i == V): take the last non-zero-probability id.
        # cdf is flat after that id, so i is either <= it or V, and min() is the rule.
        last = torch.where(p > 0, ids, no_id).max()
        return torch.minimum(i, last)

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        m = self.model
        self._mode(False)
        shape = (m.num_layers, 1, m.hidden_size)
        with torch.inference_mode():  # nothing made here leaves this method but the ids
            h = torch.zeros(shape, dtype=self.dtype, device=self.device)
            c = torch.zeros(shape, dtype=self.dtype, device=self.device)
            tok = torch.as_tensor(np.asarray(prefix, np.int64).reshape(-1, 1), device=self.device)  # (P, 1)
            u = torch.as_tensor(np.asarray(uniforms, np.float64)[:n], device=self.device)  # (n,)
            ids = torch.arange(m.vocab_size, device=self.device)  # (V,)
            no_id = torch.full_like(ids, -1)
            out = torch.empty(n, dtype=torch.int64, device=self.device)
            logits, (h, c) = self.net(tok, h, c)  # (P, 1, V)
            for k in range(n):
                nxt = self._draw(logits[-1, 0], temperature, top_k, u[k], ids, no_id)
                out[k] = nxt
                if k + 1 < n:
                    logits, (h, c) = self.net(nxt.reshape(1, 1), h, c)  # (1, 1, V)
            return out.cpu().numpy()


class TorchBackend(_TorchBase):
    """nn.LSTM, the fused kernel (oneDNN on the CPU, cuDNN on a GPU)."""
    NET = FusedNet

    @staticmethod
    def kernel_label(device: str) -> str:
        return _fused_label(device)


class TorchCellBackend(_TorchBase):
    """char-rnn's i2h + h2h cell, one eager Python step per character."""
    NET = CellNet

    @staticmethod
    def kernel_label(device: str) -> str:
        return f"per-step addmm ({'cuBLAS' if device == 'gpu' else _cpu_blas()})"


# ---- torch-compile: the same nn.LSTM model under torch.compile (inductor) ------------------

class TorchCompileBackend(TorchBackend):
    """`torch` with its steps under `torch.compile` (the inductor backend; C++ kernels built by
    the system compiler on the CPU), as a PyTorch 2 user would write it.

    What gets compiled, honestly: Dynamo does not trace `nn.LSTM` (it graph-breaks there;
    `torch._dynamo.config.allow_rnn=True` fails in inductor's lowering of the oneDNN RNN op in
    torch 2.13), so the recurrence itself stays the eager fused kernel, and inductor compiles
    what surrounds it: the one-hot scatter or embedding, dropout, the output layer and the loss
    (forward and, through AOTAutograd, backward), plus clipping and the optimiser update as one
    compiled function (the pattern PyTorch's docs give for compiling `optimizer.step`).
    Generation is one compiled single-token step (network + docs/SPEC.md §5 draw) called per token.

    Compilation happens on the first call of each function for a new shape, so it lands in the
    harness's first-step time. Dynamo caches compiled code per Python code object and guards on
    the module it saw; every backend object would otherwise add guard entries until Dynamo's
    recompile limit (8) silently falls back to eager, so construction resets Dynamo's caches
    (`torch.compiler.reset()`): each backend object compiles afresh, which is what its first
    step should measure.
    """

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 precision: str = "float32") -> None:
        torch.compiler.reset()
        super().__init__(model, train, params, device=device, dtype=dtype, seed=seed,
                         precision=precision)
        V = model.vocab_size
        net = self.net

        def train_fwd(tok: torch.Tensor, tgt: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, (h, c) = net(tok, h0, c0)  # (T, B, V), (L, B, H) x 2
            return F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1)), logits, h, c

        def eval_loss(tok: torch.Tensor, tgt: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, (h, c) = net(tok, h0, c0)
            return F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1)), h, c

        self._train_fwd = torch.compile(train_fwd)
        self._eval_loss = torch.compile(eval_loss)
        self._forward = torch.compile(lambda tok, h0, c0: net(tok, h0, c0))
        self._gen_step = torch.compile(self._gen_step_impl)

    def load(self, params: Params) -> None:
        super().load(params)  # a fresh optimiser: the compiled update must capture it
        opt, clip = self.opt, self._clip

        def update() -> None:
            clip()
            opt.step()

        self._update = torch.compile(update)

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[np.ndarray, State]:
        self._mode(False)
        with torch.no_grad():
            logits, final = self._forward(tokens, *state)  # (T, B, V)
        return logits.transpose(0, 1).to("cpu", torch.float64).numpy(), final

    def eval_step(self, tokens: torch.Tensor, targets: torch.Tensor, state: State
                  ) -> tuple[torch.Tensor, State]:
        self._mode(False)
        with torch.no_grad():
            loss, h, c = self._eval_loss(tokens, targets, *state)
        return loss, (h, c)

    def loss_and_grads(self, tokens: torch.Tensor, targets: torch.Tensor, state: State
                       ) -> tuple[float, np.ndarray, State, Params]:
        self._mode(True)
        self.opt.zero_grad(set_to_none=True)
        loss, logits, h, c = self._train_fwd(tokens, targets, *state)
        loss.backward()
        grads = self._grads()
        self.opt.zero_grad(set_to_none=True)
        out = logits.detach().transpose(0, 1).to("cpu", torch.float64).numpy()
        return float(loss.detach()), out, (h.detach(), c.detach()), grads

    def train_step(self, tokens: torch.Tensor, targets: torch.Tensor, state: State
                   ) -> tuple[torch.Tensor, State]:
        self._mode(True)
        self.opt.zero_grad(set_to_none=True)
        loss, _, h, c = self._train_fwd(tokens, targets, *state)
        loss.backward()  # the compiled backward graph (AOTAutograd), plus nn.LSTM's own
        self._update()
        return loss.detach(), (h.detach(), c.detach())

    def _gen_step_impl(self, tok: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                       temperature: float, top_k: int, u: torch.Tensor, ids: torch.Tensor,
                       no_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tok (1, 1) -> the next token (1, 1) drawn with uniform u, and the new state."""
        logits, (h, c) = self.net(tok, h, c)  # (1, 1, V)
        nxt = self._draw(logits[-1, 0], temperature, top_k, u, ids, no_id)
        return nxt.reshape(1, 1), h, c

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        m = self.model
        prefix = np.asarray(prefix, np.int64).reshape(-1)
        if prefix.size == 0:
            raise ValueError("generate needs a prefix of at least one token")
        self._mode(False)
        temperature, top_k = float(temperature), int(top_k)
        shape = (m.num_layers, 1, m.hidden_size)
        with torch.inference_mode():
            h = torch.zeros(shape, dtype=self.dtype, device=self.device)
            c = torch.zeros(shape, dtype=self.dtype, device=self.device)
            u = torch.as_tensor(np.asarray(uniforms, np.float64)[:n], device=self.device)  # (n,)
            ids = torch.arange(m.vocab_size, device=self.device)  # (V,)
            no_id = torch.full_like(ids, -1)
            # the prefix token by token through the same compiled step (one shape, one
            # compilation); the draws of all but the last prefix token are discarded
            u0 = u[0] if n > 0 else torch.zeros((), dtype=torch.float64, device=self.device)
            nxt = torch.empty((1, 1), dtype=torch.int64, device=self.device)
            for t in prefix:
                nxt, h, c = self._gen_step(torch.full((1, 1), int(t), device=self.device), h, c,
                                           temperature, top_k, u0, ids, no_id)
            out = torch.empty(n, dtype=torch.int64, device=self.device)
            for k in range(n):
                out[k] = nxt[0, 0]
                if k + 1 < n:
                    nxt, h, c = self._gen_step(nxt, h, c, temperature, top_k, u[k + 1], ids, no_id)
            return out.cpu().numpy()


# ---- torch-genloop: the whole generation loop as one compiled program ---------------------

def _genloop_step(tok: torch.Tensor, hs: list[torch.Tensor], cs: list[torch.Tensor],
                  w: list[torch.Tensor], L: int, H: int, onehot: bool
                  ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One token (1,) int64 through every layer from hs/cs (each (1, H)) in eval mode, on the
    nn.LSTM's weights pre-transposed (TorchGenLoopBackend._decode_weights: per layer W_ih^T
    (D, 4H), W_hh^T (H, 4H), b_ih + b_hh (4H,); torch's gate order i, f, g, o; for one-hot
    input layer 0's W_ih^T + b as one (V, 4H) table, a row gather). Returns logits (V,) and
    the new state."""
    x: torch.Tensor | None = None  # (1, D_l): the layer's input, then its output h (1, H)
    nh, nc = [], []
    for l in range(L):
        wx, wh, b = w[3 * l], w[3 * l + 1], w[3 * l + 2]
        if l == 0 and onehot:
            z = torch.addmm(wx.index_select(0, tok), hs[l], wh)  # (1, 4H): row gather + h W_hh^T
        else:
            if l == 0:
                x = w[3 * L + 2].index_select(0, tok)  # (1, E): the embedding row
            z = torch.addmm(torch.addmm(b, x, wx), hs[l], wh)  # (1, 4H)
        i_f = torch.sigmoid(z[:, :2 * H])  # i and f
        g = torch.tanh(z[:, 2 * H:3 * H])
        o = torch.sigmoid(z[:, 3 * H:])
        c = torch.addcmul(i_f[:, H:] * cs[l], i_f[:, :H], g)
        x = o * torch.tanh(c)
        nh.append(x)
        nc.append(c)
    logits = torch.addmm(w[3 * L + 1], x, w[3 * L])[0]  # (V,)
    return logits, nh, nc


def _genloop_draw(logits: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor,
                  top_k: torch.Tensor, ids: torch.Tensor, filtered: bool) -> torch.Tensor:
    """impls.sampling.draw inside the compiled loop: (V,) logits, (1,) float64 uniform ->
    (1,) int64 id; the sampling rule is data (temperature 0: greedy; top_k), so one compilation
    serves every rule, but for `filtered` (0 < top_k < V), whose sort of the logits per step
    the unfiltered program leaves out (15% of a step at char-rnn's sizes). The arithmetic of _TorchBase._draw, in ops
    inductor lowers: the k-th largest from a sort (ties counted), and a count of cdf <= u,
    which is searchsorted(cdf, u, right=True) on the non-decreasing cdf."""
    V = logits.shape[0]
    greedy = temperature <= 0
    z = logits.to(torch.float64) / torch.where(greedy, torch.ones_like(temperature), temperature)
    if filtered:  # the caller's 0 < top_k < V
        kth = torch.sort(z, descending=True).values.index_select(0, (top_k - 1).reshape(1))
        z = torch.where(z >= kth, z, torch.full_like(z, float("-inf")))
    p = torch.softmax(z, dim=0)
    i = (torch.cumsum(p, dim=0) <= u).sum()  # the first id with u < cdf
    last = torch.where(p > 0, ids, torch.full_like(ids, -1)).max()  # rounding: u >= cdf[-1]
    return torch.where(greedy, torch.argmax(logits), torch.minimum(i, last)).reshape(1)  # argmax: first max


def _genloop_program(L: int, H: int, onehot: bool, filtered: bool) -> Any:
    """prefix (P,) int64, uniforms (n,) float64, temperature and top_k (0-d), ids (V,) int64 and
    the decode weights -> (n,) int64 tokens, in one torch while_loop over the P - 1 + n steps:
    step k feeds token k of the sequence (the prefix, then the draws) and, from the last prefix
    token on, draws the next (docs/SPEC.md §5). One loop rather than a prefix loop and a draw
    loop: half the tracing, for 7 discarded draws in 207 steps at the harness's sizes."""
    from torch._higher_order_ops.while_loop import while_loop

    def program(prefix: torch.Tensor, uniforms: torch.Tensor, temperature: torch.Tensor,
                top_k: torch.Tensor, ids: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
        P, n = prefix.shape[0], uniforms.shape[0]
        seq = torch.cat([prefix, torch.zeros(n, dtype=prefix.dtype, device=prefix.device)])  # (P + n,)

        def cond(k, seq, *state):  # type: ignore[no-untyped-def]
            return k < P - 1 + n

        def body(k, seq, *state):  # type: ignore[no-untyped-def]
            logits, hs, cs = _genloop_step(seq.index_select(0, k.reshape(1)), list(state[:L]),
                                           list(state[L:]), list(w), L, H, onehot)
            j = (k - (P - 1)).clamp(min=0)  # the draw's index (negative: still in the prefix)
            nxt = _genloop_draw(logits, uniforms.index_select(0, j.reshape(1)), temperature, top_k,
                                ids, filtered)
            keep = seq.index_select(0, (k + 1).reshape(1))  # the prefix's own next token
            seq = seq.index_copy(0, (k + 1).reshape(1), torch.where(k >= P - 1, nxt, keep))
            return (k + 1, seq, *hs, *cs)

        zeros = [torch.zeros(1, H, dtype=w[1].dtype, device=w[1].device) for _ in range(2 * L)]
        k0 = torch.zeros((), dtype=torch.int64, device=prefix.device)
        return while_loop(cond, body, (k0, seq, *zeros))[1][P:]

    return program


CPPW = True
# (L, H, one-hot input, top-k filter) -> the compiled generation program, shared by every backend object of
# that shape in this process (the weights are arguments). Dynamo keeps one cache entry per
# shape on the program's code object and falls back to eager, silently, past its recompile
# limit (8): the cache is cleared, and Dynamo reset, before that.
_GENLOOP_PROGRAMS: dict[tuple[int, int, bool, bool], Any] = {}
_GENLOOP_LIMIT = 6


class TorchGenLoopBackend(TorchBackend):
    """`torch` with generation compiled whole, as `tensorflow-genloop` and `jax` do it: the
    prefix, every step and every draw (docs/SPEC.md §5) in one program, so that one call returns
    all n tokens. On the CPU: the LSTM step written as tensor ops on the nn.LSTM's own weights,
    pre-transposed at load (W_ih^T, W_hh^T, b_ih + b_hh; one-hot input: a row gather), inside
    two `torch._higher_order_ops.while_loop`s, compiled by `torch.compile` (inductor,
    fullgraph, dynamic sizes: one compilation serves every prefix length and n) with its C++
    wrapper (`cpp_wrapper`), so the loop runs without returning to Python. Eval is the `torch`
    backend's own nn.LSTM step; no train mode (registry modes=("eval", "generate")).

    Measured at char-rnn's sizes, one thread (docs/speed.md): 30 us a character against
    nn.LSTM per token's 280; the same ops eager per token 74, their per-token step compiled
    98, the loop compiled without the C++ wrapper 53, TorchScript 48, AOTInductor 30 (the
    same program, packaged: no faster). On a GPU (written, not measured: no GPU was lent to this
    project) the same eager step is captured per (P, n, greedy, top_k) into one CUDA graph of the
    whole decode and replayed, the way to drop per-token launches there.

    Compiling costs seconds on the first call per model and sampling rule (the harness's
    first step); construction resets Dynamo's caches, as torch-compile's does, so that no
    process runs out of Dynamo's recompile budget and silently falls back to eager."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 precision: str = "float32") -> None:
        self._graphs: dict[tuple[int, int, bool, int], Any] = {}
        super().__init__(model, train, params, device=device, dtype=dtype, seed=seed,
                         precision=precision)

    @staticmethod
    def kernel_label(device: str) -> str:
        if device == "gpu":
            return "CUDA graph of the decode loop (cuBLAS); eval: cuDNN"
        return "torch.compile(while_loop), inductor C++ wrapper (MKL addmm); eval: " + _fused_label(device)

    def load(self, params: Params) -> None:
        super().load(params)
        self._w = self._decode_weights()
        self._graphs = {}  # a CUDA graph holds the old weights' addresses: capture again

    def _decode_weights(self) -> list[torch.Tensor]:
        """Per layer W_ih^T (D, 4H) (one-hot layer 0: W_ih^T + b, the (V, 4H) gather table),
        W_hh^T (H, 4H), b_ih + b_hh (4H,); then out.W (H, V), out.b (V,) and, for embedding
        input, the embedding (V, E). Contiguous copies: the loop reads them row-major."""
        lstm, m = self.net.lstm, self.model
        w = []
        with torch.no_grad():
            for l in range(m.num_layers):
                b = getattr(lstm, f"bias_ih_l{l}") + getattr(lstm, f"bias_hh_l{l}")  # (4H,)
                wx = getattr(lstm, f"weight_ih_l{l}").t()  # (D, 4H)
                if l == 0 and m.input == "onehot":
                    wx = wx + b  # one-hot row times W_ih^T, plus the bias: one row of this
                w += [wx.contiguous(), getattr(lstm, f"weight_hh_l{l}").t().contiguous(), b.contiguous()]
            w += [self.net.out.weight.t().contiguous(), self.net.out.bias.detach().clone()]
            if m.input == "embedding":
                w.append(self.net.embed.weight.detach().clone())
        return w

    def train_step(self, tokens: Any, targets: Any, state: Any) -> Any:
        raise NotImplementedError(self._ONLY)

    def loss_and_grads(self, tokens: Any, targets: Any, state: Any) -> Any:
        raise NotImplementedError(self._ONLY)

    _ONLY = ("torch-genloop has no train mode (registry modes=('eval', 'generate')); its train "
             "step would be the `torch` backend's: use that")

    def _program(self, filtered: bool) -> Any:
        m = self.model
        key = (m.num_layers, m.hidden_size, m.input == "onehot", filtered)
        if key not in _GENLOOP_PROGRAMS:
            if len(_GENLOOP_PROGRAMS) >= _GENLOOP_LIMIT:  # before Dynamo's recompile limit (8)
                _GENLOOP_PROGRAMS.clear()
                torch.compiler.reset()
            _GENLOOP_PROGRAMS[key] = torch.compile(_genloop_program(*key), fullgraph=True, dynamic=True,
                                                   options={"cpp_wrapper": CPPW})
        return _GENLOOP_PROGRAMS[key]

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        m = self.model
        prefix = np.asarray(prefix, np.int64).reshape(-1)
        if prefix.size == 0:
            raise ValueError("generate needs a prefix of at least one token")
        if n == 0:
            return np.empty(0, np.int64)
        self._mode(False)
        with torch.inference_mode():
            pre = torch.as_tensor(prefix, device=self.device)  # (P,)
            u = torch.as_tensor(np.asarray(uniforms, np.float64)[:n], device=self.device)  # (n,)
            temp = torch.tensor(float(temperature), dtype=torch.float64, device=self.device)
            k = torch.tensor(int(top_k), dtype=torch.int64, device=self.device)
            ids = torch.arange(m.vocab_size, device=self.device)  # (V,)
            filtered = 0 < int(top_k) < m.vocab_size
            if self.device.type == "cuda":
                return self._cuda_graph_generate(pre, u, temp, k, ids, filtered)
            return self._program(filtered)(pre, u, temp, k, ids, *self._w).cpu().numpy()

    def _cuda_graph_generate(self, pre: torch.Tensor, u: torch.Tensor, temp: torch.Tensor,
                             top_k: torch.Tensor, ids: torch.Tensor, filtered: bool) -> np.ndarray:
        """The GPU path (not measured here): the decode loop's eager ops, unrolled for this
        (P, n), captured once into a CUDA graph with static input buffers and replayed, so one
        generate is one graph launch rather than ~30 kernel launches per token."""
        m = self.model
        L, H, onehot = m.num_layers, m.hidden_size, m.input == "onehot"
        key = (pre.shape[0], u.shape[0], filtered)
        if key not in self._graphs:
            static = {"pre": pre.clone(), "u": u.clone(), "temp": temp.clone(), "k": top_k.clone()}

            def decode() -> torch.Tensor:
                hs = [torch.zeros(1, H, dtype=self.dtype, device=self.device) for _ in range(L)]
                cs = [torch.zeros(1, H, dtype=self.dtype, device=self.device) for _ in range(L)]
                sp, su = static["pre"], static["u"]
                for k in range(sp.shape[0] - 1):
                    _, hs, cs = _genloop_step(sp[k:k + 1], hs, cs, self._w, L, H, onehot)
                tok, out = sp[-1:], []
                for k in range(su.shape[0]):
                    logits, hs, cs = _genloop_step(tok, hs, cs, self._w, L, H, onehot)
                    tok = _genloop_draw(logits, su[k:k + 1], static["temp"], static["k"], ids,
                                        filtered)
                    out.append(tok)
                return torch.cat(out)

            side = torch.cuda.Stream()  # warm-up off the capture stream, as torch.cuda.graphs asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                decode()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static["out"] = decode()
            self._graphs[key] = (graph, static)
        graph, static = self._graphs[key]
        static["pre"].copy_(pre)
        static["u"].copy_(u)
        static["temp"].copy_(temp)
        static["k"].copy_(top_k)
        graph.replay()
        return static["out"].cpu().numpy()
