"""The one Keras 3 model definition, engine-neutral (keras.ops only): the `tensorflow` and
`tensorflow-xla` backends (impls/tensorflow_impl.py, KERAS_BACKEND=tensorflow) and `keras-jax` /
`keras-torch` (impls/keras_impl.py) all build their network here, so the layers, their order,
the dropout placement and the layout conversion are written once.

`CharLSTM`: Embedding or one-hot, one `keras.layers.LSTM` per layer, separate
`keras.layers.Dropout` layers in front of each LSTM layer and of the output layer (docs/SPEC.md
§1 places them so; the LSTM's own `dropout` argument reuses one mask at every time step), and
`keras.layers.Dense`. Its `slots()` pair each canonical parameter name with the Keras variable
holding it; `to_keras` / `from_keras` convert gate-axis parameters by the table row
`layouts.KERAS` (Keras' kernel (D, 4H), recurrent_kernel (H, 4H), one bias (4H,): gate blocks
i, f, c, o, with c the canonical g).

Which engine runs the model is the importing module's business: Keras picks it at its first
import (KERAS_BACKEND), and this module works on whichever it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from . import layouts
from .config import ModelConfig
from .params import param_shapes


@dataclass(frozen=True)
class Slot:
    """One canonical parameter and the Keras variable holding it."""
    name: str  # canonical name (docs/SPEC.md §2)
    var: Any  # keras.Variable
    gates: bool  # last axis is 4H gate blocks (reordered between layouts)


def to_keras(w: np.ndarray, H: int) -> np.ndarray:
    """A canonical gate-axis parameter (weight (rows, 4H) or bias (4H,)) -> Keras' layout."""
    return layouts.bias_to_native(layouts.KERAS, w) if w.ndim == 1 else \
        layouts.weight_to_native(layouts.KERAS, w, H)


def from_keras(w: np.ndarray, H: int) -> np.ndarray:
    """Keras' kernel (rows, 4H) / recurrent_kernel (H, 4H) / bias (4H,) -> canonical."""
    return layouts.bias_to_canonical(layouts.KERAS, w, H) if w.ndim == 1 else \
        layouts.weight_to_canonical(layouts.KERAS, w, w.shape[0], H)


class CharLSTM(keras.Model):
    """tokens (B, T) int -> logits (B, T, V) and the final state (h, c), each (L, B, H).

    use_cudnn: Keras' switch. "auto" (Keras' default) lets the engine take its own LSTM path
    (cuDNN on a GPU; on the torch engine's CPU, Keras' torch LSTM); False forces the generic
    per-step cell loop, which XLA can compile whole."""

    def __init__(self, m: ModelConfig, seed: int = 0, use_cudnn: bool | str = "auto",
                 dtype: str = "float32") -> None:
        super().__init__(dtype=dtype)
        self.m = m
        L, H = m.num_layers, m.hidden_size
        self.embed = (keras.layers.Embedding(m.vocab_size, m.embed_size, dtype=dtype)
                      if m.input == "embedding" else None)
        self.lstms = [keras.layers.LSTM(H, return_sequences=True, return_state=True,
                                        use_cudnn=use_cudnn, dtype=dtype) for _ in range(L)]
        self.dense = keras.layers.Dense(m.vocab_size, dtype=dtype)
        # inputs of LSTM layers 0..L-1 and of the output layer; distinct seeds per layer
        self.drops = ([keras.layers.Dropout(m.dropout, seed=seed * (L + 1) + l) for l in range(L + 1)]
                      if m.dropout > 0 else None)
        if self.embed is not None:
            self.embed.build((None, None))
        for l, lstm in enumerate(self.lstms):
            lstm.build((None, None, m.layer_input_size(l)))
        self.dense.build((None, None, H))
        self.built = True
        shapes = param_shapes(m)
        got = [(s.name, tuple(s.var.shape)) for s in self.slots()]
        assert got == list(shapes.items()), (got, shapes)

    def inputs_of(self, tok: Any) -> Any:
        """tok (B, T) int -> layer 0's input: (B, T, E) embedded or (B, T, V) one-hot."""
        return self.embed(tok) if self.embed is not None else \
            ops.one_hot(tok, self.m.vocab_size, dtype=self.dtype)

    def call(self, tok: Any, h0: Any, c0: Any, training: bool = False) -> tuple[Any, Any, Any]:
        x = self.inputs_of(tok)
        hs, cs = [], []
        drop = training and self.drops is not None
        for l, lstm in enumerate(self.lstms):
            if drop:
                x = self.drops[l](x, training=True)
            x, h, c = lstm(x, initial_state=[h0[l], c0[l]], training=training)  # (B, T, H)
            hs.append(h)
            cs.append(c)
        if drop:
            x = self.drops[-1](x, training=True)
        return self.dense(x), ops.stack(hs), ops.stack(cs)  # (B, T, V), (L, B, H) x 2

    def slots(self) -> list[Slot]:
        """Every parameter in canonical order (docs/SPEC.md §2)."""
        out = [Slot("embed", self.embed.embeddings, False)] if self.embed is not None else []
        for l, lstm in enumerate(self.lstms):
            out += [Slot(f"lstm.{l}.W_x", lstm.cell.kernel, True),
                    Slot(f"lstm.{l}.W_h", lstm.cell.recurrent_kernel, True),
                    Slot(f"lstm.{l}.b", lstm.cell.bias, True)]
        return out + [Slot("out.W", self.dense.kernel, False), Slot("out.b", self.dense.bias, False)]

    def assign(self, params: dict[str, np.ndarray]) -> None:
        """Load canonical float64 parameters into the variables (converted, shapes asserted)."""
        H = self.m.hidden_size
        for s in self.slots():
            w = np.asarray(params[s.name], np.float64)
            if s.gates:
                w = to_keras(w, H)
            assert w.shape == tuple(s.var.shape), (s.name, w.shape, s.var.shape)
            s.var.assign(w.astype(self.dtype))

    def canonical(self, s: Slot, w: Any) -> np.ndarray:
        """A value of slot `s` (a Keras-layout array: the variable's, or its gradient) -> the
        canonical float64 array."""
        w = np.array(ops.convert_to_numpy(w), np.float64)
        assert w.shape == tuple(s.var.shape), (s.name, w.shape, s.var.shape)
        return from_keras(w, self.m.hidden_size) if s.gates else w
