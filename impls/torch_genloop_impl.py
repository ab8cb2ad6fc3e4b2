"""The `torch-genloop` backend: the `torch` model (impls.torch_impl.TorchBackend, nn.LSTM) with
generation compiled whole: the LSTM step written as tensor ops on the nn.LSTM's own weights,
pre-transposed, inside a torch while_loop under torch.compile (inductor, its C++ wrapper); on a
GPU one CUDA graph per sequence shape (written, not measured here). Eval is torch's own step; no
train mode. The module's public names are torch_impl's (the same process setup and hooks), so
the harness treats it as any other backend module. How it got its speed: docs/speed.md."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .config import ModelConfig, TrainConfig
from .params import Params
from .sampling import prefix_ids
from .torch_impl import TorchBackend, _fused_label, configure, device_matmul_peak, device_peak_memory

__all__ = ["TorchGenLoopBackend", "configure", "kernel_info", "device_peak_memory", "device_matmul_peak"]


def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    """The compiled generation loop, and torch's fused kernel for eval."""
    return {"kernel": TorchGenLoopBackend.kernel_label(device)}


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


CPPW = True  # inductor's C++ wrapper: 30 against 53 us a character (docs/speed.md)
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
    one `torch._higher_order_ops.while_loop` over the prefix and the draws, compiled by
    `torch.compile` (inductor, fullgraph, dynamic sizes: one compilation per model shape serves
    every prefix length, n and sampling rule but the top-k filter) with its C++ wrapper
    (`cpp_wrapper`), so the loop runs without returning to Python. Eval is the `torch`
    backend's own nn.LSTM step; no train mode (registry modes=("eval", "generate")).

    Measured at char-rnn's sizes, one thread (docs/speed.md): 30 us a character against
    nn.LSTM per token's 280; the same ops eager per token 74, their per-token step compiled
    98, the loop compiled without the C++ wrapper 53, TorchScript 48, AOTInductor 30 (the
    same program, packaged: no faster). On a GPU (written, not measured: no GPU was lent to this
    project) the same eager step is captured per (P, n, top-k filter) into one CUDA graph of the
    whole decode and replayed, the way to drop per-token launches there.

    Compiling costs 5-12 s on the first call per model shape (the harness's first step); the
    program is shared by every backend object of that shape in the process (_GENLOOP_PROGRAMS),
    which is cleared, and Dynamo reset, before Dynamo's recompile budget would run out and
    fall back to eager, silently."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 precision: str = "float32") -> None:
        self._graphs: dict[tuple[int, int, bool], Any] = {}
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
        prefix = prefix_ids(prefix)
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
