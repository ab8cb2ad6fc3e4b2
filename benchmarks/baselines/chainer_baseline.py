"""The Chainer train, eval and generate steps a user would write by hand: the shape of Chainer's
own ptb example (RNNForLM and its BPTTUpdater; generation as its gentxt.py does it). One
stateful L.LSTM per layer, called once per time step, F.dropout in front of each LSTM layer
and of the output L.Linear, the output layer and F.softmax_cross_entropy applied per time
step and summed over the window (here divided by T: the mean over B*T, like every backend);
train: cleargrads, backward, unchain_backward (truncated BPTT: the links keep the state, the
graph is cut), and a Chainer optimiser with the GradientClipping (norm) or GradientHardClipping
(value) hook; eval: the same forward under using_config('train', False) and
no_backprop_mode(), as the example's evaluator does; generate: reset_state, then under the
same configuration the model once per prefix token and once per drawn token, F.softmax of the
logits, and a NumPy draw from those probabilities (np.random.choice with p, as gentxt.py;
Chainer has no sampler of its own). One-hot input feeds rows of an identity matrix to L.LSTM.
The yardstick of the chainer backend (harness/commands/baselines.py); runs in chainer's NumPy < 2 env.

    make_step(model_config, batch, seq_len, train=None, seed=0) -> step       # one train step
    make_eval(model_config, batch, seq_len, train=None, seed=0) -> step       # one eval step
    make_generate(model_config, 1, seq_len, train=None, seed=0) -> step   # seq_len tokens

Train and eval's step() returns the mean cross-entropy as a 0-d NumPy array (computed
synchronously). Generate's returns the sum of the drawn ids as an int, its `tokens` the ids
(_common.GenerateStep)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
from chainer import optimizer_hooks, optimizers

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from _common import (DEFAULT_TRAIN, TEMPERATURE, GenerateStep, ModelConfig, TrainConfig,  # noqa: E402
                     check_generate, demo, prefix, window)


class RNNForLM(chainer.Chain):
    """One time step: token ids (B,) -> logits (B, V); the L.LSTM links carry (h, c)."""

    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.p = m.dropout
        with self.init_scope():
            self.embed = L.EmbedID(m.vocab_size, m.embed_size) if m.input == "embedding" else None
            self.lstms = chainer.ChainList(*[L.LSTM(m.layer_input_size(l), m.hidden_size)
                                             for l in range(m.num_layers)])
            self.out = L.Linear(m.hidden_size, m.vocab_size)
        for param in self.params():  # as the ptb example initialises
            param.array[...] = np.random.uniform(-0.1, 0.1, param.shape)
        self.eye = np.eye(m.vocab_size, dtype=np.float32) if m.input == "onehot" else None

    def reset_state(self) -> None:
        """Zero every layer's (h, c): the next call starts a new sequence."""
        for lstm in self.lstms:
            lstm.reset_state()

    def forward(self, x: np.ndarray) -> chainer.Variable:
        h = self.embed(x) if self.embed is not None else self.eye[x]  # (B, D)
        for lstm in self.lstms:
            h = lstm(F.dropout(h, self.p) if self.p else h)  # (B, H)
        return self.out(F.dropout(h, self.p) if self.p else h)  # (B, V)


def _setup(m: ModelConfig, batch: int, seq_len: int, seed: int
           ) -> tuple[RNNForLM, np.ndarray, np.ndarray]:
    np.random.seed(seed)  # Chainer draws initial weights and dropout masks from NumPy's RNG
    model = RNNForLM(m)
    tok, tgt = (a.astype(np.int32) for a in window(m, batch, seq_len, seed))  # (T, B) each
    return model, tok, tgt


def make_step(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], np.ndarray]:
    """One train step, BPTTUpdater's: the window's per-step losses summed (then / T),
    cleargrads, backward, unchain_backward, optimizer.update (hooks clip first)."""
    m, tc = model_config, train or DEFAULT_TRAIN
    model, tok, tgt = _setup(m, batch, seq_len, seed)
    o = tc.optimizer
    opt = {"sgd": lambda: optimizers.SGD(lr=o.lr),
           "adam": lambda: optimizers.Adam(alpha=o.lr, beta1=o.beta1, beta2=o.beta2, eps=o.eps),
           "rmsprop": lambda: optimizers.RMSprop(lr=o.lr, alpha=o.alpha, eps=o.eps),
           "adagrad": lambda: optimizers.AdaGrad(lr=o.lr, eps=o.eps)}[o.name]()
    opt.setup(model)
    if tc.clip.kind == "norm":
        opt.add_hook(optimizer_hooks.GradientClipping(tc.clip.value))
    elif tc.clip.kind == "value":
        opt.add_hook(optimizer_hooks.GradientHardClipping(-tc.clip.value, tc.clip.value))
    T = tok.shape[0]

    def step() -> np.ndarray:
        loss = 0
        with chainer.using_config("train", True):
            for t in range(T):
                loss += F.softmax_cross_entropy(model(tok[t]), tgt[t])
            loss /= T
        model.cleargrads()
        loss.backward()
        loss.unchain_backward()
        opt.update()
        return loss.array

    return step


def make_eval(model_config: ModelConfig, batch: int, seq_len: int,
              train: TrainConfig | None = None, seed: int = 0) -> Callable[[], np.ndarray]:
    """One eval step: the window's forward from the carried state without dropout or graph,
    per-step losses summed, / T."""
    m = model_config
    model, tok, tgt = _setup(m, batch, seq_len, seed)
    T = tok.shape[0]

    def step() -> np.ndarray:
        loss = 0
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            for t in range(T):
                loss += F.softmax_cross_entropy(model(tok[t]), tgt[t])
        return (loss / T).array

    return step


def make_generate(model_config: ModelConfig, batch: int, seq_len: int,
                  train: TrainConfig | None = None, seed: int = 0) -> GenerateStep:
    """One generate step (batch 1), gentxt.py's loop: reset_state, the 8 prefix tokens one
    call each, then seq_len times F.softmax of the logits / temperature 1 to a float64 NumPy
    vector, renormalised, a draw with choice(V, p=...) from a np.random.RandomState(seed)
    (a seed gives the same text), the drawn id fed back (all but the last)."""
    m = model_config
    check_generate(batch, seq_len)
    np.random.seed(seed)  # the initial weights, as _setup
    model = RNNForLM(m)
    pre = prefix(m, seed).astype(np.int32)  # (P,)
    rng = np.random.RandomState(seed)

    def draw() -> list[int]:
        out: list[int] = []
        model.reset_state()
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            for t in pre:
                logits = model(np.array([t], np.int32))  # (1, V)
            for k in range(seq_len):
                prob = F.softmax(logits / TEMPERATURE).array[0].astype(np.float64)  # (V,)
                out.append(int(rng.choice(m.vocab_size, p=prob / prob.sum())))
                if k + 1 < seq_len:
                    logits = model(np.array([out[-1]], np.int32))  # (1, V)
        return out

    return GenerateStep(draw)


if __name__ == "__main__":
    demo(make_step, "chainer baseline", make_eval, make_generate)
