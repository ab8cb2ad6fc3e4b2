"""The PyTorch train, eval and generate steps a user would write by hand (the two-layer PyTorch
char-LSTM tutorial's shape): one-hot by scatter (or nn.Embedding), nn.Dropout, nn.LSTM,
nn.Linear, F.cross_entropy; train: backward, clip_grad_norm_/clip_grad_value_, a torch.optim
step; eval: net.eval() under torch.no_grad(); generate: the tutorial's sampling loop, net.eval()
under torch.no_grad(), the prefix through nn.LSTM, then one token at a time F.softmax and
torch.multinomial, each token to the host with .item() and fed back. The yardstick of the
torch, torch-cell and torch-compile backends (harness/commands/baselines.py).

    make_step(model_config, batch, seq_len, train=None, seed=0) -> step       # one train step
    make_eval(model_config, batch, seq_len, train=None, seed=0) -> step       # one eval step
    make_generate(model_config, 1, seq_len, train=None, seed=0) -> step   # seq_len tokens

Train and eval's step() returns the mean cross-entropy as a 0-d tensor; float() on it waits
for it. Generate's returns the sum of the drawn ids as an int, its `tokens` the ids
(_common.GenerateStep)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import (DEFAULT_TRAIN, TEMPERATURE, GenerateStep, ModelConfig, TrainConfig,  # noqa: E402
                     check_generate, demo, prefix, window)

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (L, B, H)


class Net(nn.Module):
    """tokens (T, B) -> logits (T, B, V) and the final (h, c)."""

    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.V, self.onehot = m.vocab_size, m.input == "onehot"
        self.embed = None if self.onehot else nn.Embedding(m.vocab_size, m.embed_size)
        self.drop = nn.Dropout(m.dropout)
        self.lstm = nn.LSTM(m.layer_input_size(0), m.hidden_size, m.num_layers,
                            dropout=m.dropout if m.num_layers > 1 else 0.0)
        self.out = nn.Linear(m.hidden_size, m.vocab_size)

    def forward(self, tok: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if self.onehot:  # (T, B) -> (T, B, V)
            x = torch.zeros(*tok.shape, self.V).scatter_(-1, tok.unsqueeze(-1), 1.0)
        else:
            x = self.embed(tok)  # (T, B, E)
        y, state = self.lstm(self.drop(x), state)  # (T, B, H)
        return self.out(self.drop(y)), state  # (T, B, V)


def _setup(m: ModelConfig, batch: int, seq_len: int, seed: int
           ) -> tuple[Net, torch.Tensor, torch.Tensor, State]:
    torch.manual_seed(seed)
    net = Net(m)
    tok, tgt = (torch.from_numpy(a) for a in window(m, batch, seq_len, seed))  # (T, B) each
    zeros = torch.zeros(m.num_layers, batch, m.hidden_size)  # (L, B, H)
    return net, tok, tgt, (zeros, zeros.clone())


def make_step(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], torch.Tensor]:
    """One train step: forward from the carried state, mean cross-entropy, backward, clip,
    optimiser step; the state carried on detached (truncated BPTT)."""
    m, tc = model_config, train or DEFAULT_TRAIN
    net, tok, tgt, state = _setup(m, batch, seq_len, seed)
    net.train()
    o = tc.optimizer
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=o.lr),
           "adam": lambda p: torch.optim.Adam(p, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps),
           "rmsprop": lambda p: torch.optim.RMSprop(p, lr=o.lr, alpha=o.alpha, eps=o.eps),
           "adagrad": lambda p: torch.optim.Adagrad(p, lr=o.lr, eps=o.eps)}[o.name](net.parameters())

    def step() -> torch.Tensor:
        nonlocal state
        opt.zero_grad()
        logits, (h, c) = net(tok, state)  # (T, B, V)
        loss = F.cross_entropy(logits.reshape(-1, m.vocab_size), tgt.reshape(-1))
        loss.backward()
        if tc.clip.kind == "norm":
            nn.utils.clip_grad_norm_(net.parameters(), tc.clip.value)
        elif tc.clip.kind == "value":
            nn.utils.clip_grad_value_(net.parameters(), tc.clip.value)
        opt.step()
        state = (h.detach(), c.detach())
        return loss.detach()

    return step


def make_eval(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], torch.Tensor]:
    """One eval step: net.eval() (no dropout), forward from the carried state under
    torch.no_grad(), mean cross-entropy."""
    m = model_config
    net, tok, tgt, state = _setup(m, batch, seq_len, seed)
    net.eval()

    def step() -> torch.Tensor:
        nonlocal state
        with torch.no_grad():
            logits, state = net(tok, state)  # (T, B, V)
            return F.cross_entropy(logits.reshape(-1, m.vocab_size), tgt.reshape(-1))

    return step


def make_generate(model_config: ModelConfig, batch: int, seq_len: int,
                  train: TrainConfig | None = None, seed: int = 0) -> GenerateStep:
    """One generate step (batch 1): from a zero state the 8-token prefix through the net in one
    call, then seq_len times: softmax of the last logits at temperature 1, torch.multinomial
    (a torch.Generator seeded with `seed`, so a seed gives the same text), the id to the host
    with .item(), the drawn (1, 1) tensor fed back (all but the last)."""
    m = model_config
    check_generate(batch, seq_len)
    torch.manual_seed(seed)
    net = Net(m).eval()
    pre = torch.from_numpy(prefix(m, seed)).reshape(-1, 1)  # (P, 1)
    gen = torch.Generator().manual_seed(seed)

    def draw() -> list[int]:
        out: list[int] = []
        with torch.no_grad():
            zeros = torch.zeros(m.num_layers, 1, m.hidden_size)  # (L, 1, H)
            logits, state = net(pre, (zeros, zeros.clone()))  # (P, 1, V)
            for k in range(seq_len):
                probs = F.softmax(logits[-1] / TEMPERATURE, dim=-1)  # (1, V)
                nxt = torch.multinomial(probs, 1, generator=gen)  # (1, 1)
                out.append(nxt.item())
                if k + 1 < seq_len:
                    logits, state = net(nxt, state)  # (1, 1, V)
        return out

    return GenerateStep(draw)


if __name__ == "__main__":
    demo(make_step, "torch baseline", make_eval, make_generate)
