"""The PyTorch backends.

- `torch` (TorchBackend): `nn.LSTM`, the fused kernel (oneDNN on the CPU, cuDNN on a GPU),
  num_layers = L with its internal dropout (which drops the inputs of layers 1..L-1), plus an
  explicit dropout on the layer-0 input and on the top output: together exactly docs/SPEC.md §1's
  placement. One-hot input is fed as one-hot vectors, as the PyTorch char-LSTM tutorial does.
- `torch-cell` (TorchCellBackend): char-rnn's formulation (Torch7): per layer an `i2h`
  Linear(D, 4H) and an `h2h` Linear(H, 4H), gate blocks in char-rnn's order i, f, o, g, and an
  explicit Python loop over time in eager PyTorch. The whole window's i2h product is hoisted
  out of the loop (one matrix product per layer); the recurrence is one addmm per step.
- `torch-compile` is impls/torch_compile_impl.py: TorchBackend's model under torch.compile;
  `torch-genloop` is impls/torch_genloop_impl.py: generation as one compiled program.

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
