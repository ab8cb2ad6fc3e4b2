"""The `torch-compile` backend: the `torch` model (impls.torch_impl.TorchBackend, nn.LSTM) with
its steps under `torch.compile` (inductor). The module's public names are torch_impl's (the same
process setup and hooks), so the harness treats it as any other backend module."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, TrainConfig
from .params import Params
from .sampling import prefix_ids
from .torch_impl import State, TorchBackend, configure, device_matmul_peak, device_peak_memory

__all__ = ["TorchCompileBackend", "configure", "kernel_info", "device_peak_memory", "device_matmul_peak"]


def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    """The fused nn.LSTM kernel, as `torch`'s: Dynamo leaves nn.LSTM to eager PyTorch."""
    return {"kernel": TorchCompileBackend.kernel_label(device)}


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
        prefix = prefix_ids(prefix)
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
