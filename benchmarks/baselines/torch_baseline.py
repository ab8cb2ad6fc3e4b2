"""The PyTorch training step a user would write by hand (the PyTorch char-LSTM tutorial's
shape): one-hot by scatter (or nn.Embedding), nn.LSTM, nn.Linear, cross-entropy, backward,
clip, step. `make_step(model_config, batch, seq_len) -> step`."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import DEFAULT_TRAIN, demo, window  # noqa: E402


class Net(nn.Module):
    def __init__(self, m) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.V, self.onehot = m.vocab_size, m.input == "onehot"
        self.embed = None if self.onehot else nn.Embedding(m.vocab_size, m.embed_size)
        self.drop = nn.Dropout(m.dropout)
        self.lstm = nn.LSTM(m.layer_input_size(0), m.hidden_size, m.num_layers,
                            dropout=m.dropout if m.num_layers > 1 else 0.0)
        self.out = nn.Linear(m.hidden_size, m.vocab_size)

    def forward(self, tok, state):  # type: ignore[no-untyped-def]
        if self.onehot:  # (T, B) -> (T, B, V)
            x = torch.zeros(*tok.shape, self.V).scatter_(-1, tok.unsqueeze(-1), 1.0)
        else:
            x = self.embed(tok)
        y, state = self.lstm(self.drop(x), state)
        return self.out(self.drop(y)), state


def make_step(model_config, batch: int, seq_len: int, train=None, seed: int = 0):  # type: ignore[no-untyped-def]
    m, tc = model_config, train or DEFAULT_TRAIN
    torch.manual_seed(seed)
    net = Net(m)
    net.train()
    o = tc.optimizer
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=o.lr),
           "adam": lambda p: torch.optim.Adam(p, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps),
           "rmsprop": lambda p: torch.optim.RMSprop(p, lr=o.lr, alpha=o.alpha, eps=o.eps),
           "adagrad": lambda p: torch.optim.Adagrad(p, lr=o.lr, eps=o.eps)}[o.name](net.parameters())
    tok, tgt = (torch.from_numpy(a) for a in window(m, batch, seq_len, seed))
    zeros = torch.zeros(m.num_layers, batch, m.hidden_size)
    state = (zeros, zeros.clone())

    def step() -> torch.Tensor:
        nonlocal state
        opt.zero_grad()
        logits, (h, c) = net(tok, state)
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


if __name__ == "__main__":
    demo(make_step, "torch baseline")
