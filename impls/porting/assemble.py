"""What every reader shares: one LSTM layer from a file's native arrays (through its
impls/layouts.py row, with the checks that name a GRU, a plain RNN or a transposed matrix),
and the whole model from the pieces found (the chain of layers, the input layer, the
decoder), every size checked against the others with the file's own names in the message.

A matrix stored transposed is a fault: a lenient reader (crosscheck's) transposes it back and
records it, so that the diagnosis can say so and still compare the rest; a strict one
(convert's) refuses the file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import layouts
from ..config import ConfigError, ModelConfig
from . import PortError
from .model import Ported, ported


@dataclass
class Layer:
    """One LSTM layer in canonical form, and the file's names for its tensors."""
    W_x: np.ndarray  # (D, 4H), gate blocks i, f, g, o
    W_h: np.ndarray  # (H, 4H)
    b: np.ndarray  # (4H,): the bias the gates see (the sum of two, where there are two)
    names: dict[str, list[str]]  # "W_x", "W_h", "b" -> the file's keys
    parts: tuple[np.ndarray, np.ndarray] | None = None  # (input-side, recurrent-side) biases, canonical order


@dataclass
class Faults:
    """What a reader found wrong but could work around; strict readers refuse at the first."""
    path: str
    lenient: bool
    found: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        if not self.lenient:
            raise PortError(f"{self.path}: {what}; fix the file (`lstmbench crosscheck` against a "
                            "good copy says what else differs)")
        self.found.append(what)


def gate_blocks(rows: int, cols: int, key: str, path: str) -> int:
    """H of a recurrent weight (4H, H) or (H, 4H), whichever it is; PortError for a GRU
    (3 blocks), a plain RNN (1) or anything else."""
    big, small = max(rows, cols), min(rows, cols)
    if small and big == 4 * small:
        return small
    if small and big == 3 * small:
        raise PortError(f"{path}: {key} is {rows} x {cols}: 3 gate blocks, a GRU; lstmbench ports "
                        "the LSTM of docs/SPEC.md (4 gate blocks) only")
    if rows == cols:
        raise PortError(f"{path}: {key} is {rows} x {cols}: 1 gate block, a plain RNN; lstmbench "
                        "ports the LSTM of docs/SPEC.md (4 gate blocks) only")
    raise PortError(f"{path}: {key} is {rows} x {cols}, not the (4H, H) recurrent weight of an LSTM")


def oriented(a: np.ndarray, shape: tuple[int, ...], key: str, faults: Faults, want: str) -> np.ndarray:
    """`a` as `shape`; its transpose (a fault) where that fits instead; PortError otherwise.
    `want` says in the fault what the format stores there."""
    a = np.asarray(a)
    if a.shape == tuple(shape):
        return a
    lead = a.shape[:-2]
    if a.ndim >= 2 and lead + a.shape[-2:][::-1] == tuple(shape):
        faults.add(f"{key} is stored transposed: {a.shape}, where {want} is {tuple(shape)}")
        return np.swapaxes(a, -1, -2)
    raise PortError(f"{faults.path}: {key} has shape {a.shape}, expected {tuple(shape)} ({want})")


def lstm_layer(row: layouts.Layout, W: np.ndarray, R: np.ndarray, b: np.ndarray | None,
               b2: np.ndarray | None, keys: dict[str, list[str]], faults: Faults) -> Layer:
    """One layer of a one-array-per-role row (torch, chainer, keras, onnx, flax-optimized) from
    its native arrays: W input weights, R recurrent weights, b the bias (None: no bias), b2 the
    second bias where the row has one. Shapes are checked; a transposed matrix is a fault."""
    lead = len(row.lead)
    R = np.asarray(R)
    if R.ndim != 2 + lead:
        raise PortError(f"{faults.path}: {keys['W_h'][0]} has shape {R.shape}; an LSTM's recurrent "
                        f"weight is {'(4H, H)' if row.out_first else '(H, 4H)'}")
    H = gate_blocks(*R.shape[lead:], keys["W_h"][0], faults.path)
    want = f"{row.name} {'(4H, H)' if row.out_first else '(H, 4H)'}"
    R = oriented(R, layouts.weight_shape(row, H, H), keys["W_h"][0], faults, want)
    W = np.asarray(W)
    if W.ndim != 2 + lead:
        raise PortError(f"{faults.path}: {keys['W_x'][0]} has shape {W.shape}, not an LSTM's input weight")
    d = W.shape[lead:]
    D = (d[1] if d[0] == 4 * H else d[0]) if row.out_first else (d[0] if d[1] == 4 * H else d[1])
    W = oriented(W, layouts.weight_shape(row, D, H), keys["W_x"][0], faults,
                 f"{row.name} {'(4H, D)' if row.out_first else '(D, 4H)'}")
    try:
        W_x = layouts.weight_to_canonical(row, W, D, H)
        W_h = layouts.weight_to_canonical(row, R, H, H)
        parts = None
        if b is None:
            bias = np.zeros(4 * H)
        elif row.packed_bias:  # ONNX's (1, 8H): input half, recurrent half
            v = np.asarray(b).reshape(-1)
            if v.shape != (8 * H,):
                raise layouts.LayoutError(f"{keys['b'][0]}: shape {np.shape(b)}, expected (1, {8 * H})")
            perm = layouts.gate_permutation(row, H)
            first, second = np.empty(4 * H), np.empty(4 * H)
            first[perm], second[perm] = v[:4 * H], v[4 * H:]
            parts, bias = (first, second), first + second
        else:
            first = layouts.bias_to_canonical(row, np.asarray(b).reshape(layouts.bias_shape(row, H)), H)
            if b2 is not None:
                second = layouts.bias_to_canonical(row, np.asarray(b2).reshape(layouts.bias_shape(row, H)), H)
                parts, bias = (first, second), first + second
            else:
                bias = first
    except (layouts.LayoutError, ValueError) as e:
        raise PortError(f"{faults.path}: {e}") from None
    return Layer(W_x, W_h, bias, keys, parts)


def assemble(fmt: str, path: str | Path, row: str, layers: Sequence[Layer],
             out_W: np.ndarray, out_b: np.ndarray | None, out_names: dict[str, list[str]],
             faults: Faults, embed: np.ndarray | None = None, embed_name: str | None = None,
             vocab: str | None = None, describe: str = "") -> Ported:
    """The model from its pieces: out_W canonical (H, V); embed (V, E) or None (one-hot).
    Every size is checked against the others, naming the file's keys."""
    path = str(path)
    if not layers:
        raise PortError(f"{path}: no LSTM layer found ({describe or 'nothing recognised'}); lstmbench "
                        "ports embedding or one-hot input -> stacked LSTM -> linear decoder")
    H = layers[0].W_h.shape[0]
    for l, ly in enumerate(layers):
        if ly.W_h.shape[0] != H:
            raise PortError(f"{path}: LSTM layers of different sizes ({ly.names['W_h'][0]}: H = "
                            f"{ly.W_h.shape[0]}, layer 0: H = {H}); docs/SPEC.md's model has one H")
        if l and ly.W_x.shape[0] != H:
            raise PortError(f"{path}: layer {l} ({ly.names['W_x'][0]}) takes {ly.W_x.shape[0]} inputs "
                            f"but layer {l - 1} gives {H}: the layers do not chain")
    out_W = np.asarray(out_W)
    if out_W.ndim != 2 or out_W.shape[0] != H:
        raise PortError(f"{path}: the decoder {out_names['out.W'][0]} maps {out_W.shape[0] if out_W.ndim == 2 else '?'} "
                        f"inputs, but the top LSTM layer gives {H}")
    V = out_W.shape[1]
    D0 = layers[0].W_x.shape[0]
    if embed is not None:
        embed = np.asarray(embed)
        if embed.shape[0] != V:
            raise PortError(f"{path}: the embedding {embed_name} has {embed.shape[0]} rows but the "
                            f"decoder {out_names['out.W'][0]} gives {V} logits: the vocabulary sizes differ")
        if embed.shape[1] != D0:
            raise PortError(f"{path}: the embedding {embed_name} is {embed.shape[1]} wide but layer 0 "
                            f"({layers[0].names['W_x'][0]}) takes {D0} inputs")
    elif D0 != V:
        raise PortError(f"{path}: layer 0 ({layers[0].names['W_x'][0]}) takes {D0} inputs, there is no "
                        f"embedding, and one-hot input would be V = {V} wide")
    if out_b is not None and np.shape(out_b) != (V,):
        raise PortError(f"{path}: the decoder bias {out_names['out.b'][0]} has shape {np.shape(out_b)}, expected ({V},)")
    if vocab is not None and len(vocab) != V:
        raise PortError(f"{path}: its vocabulary has {len(vocab)} entries but the model {V} tokens")
    try:
        model = ModelConfig(vocab_size=V, hidden_size=H, num_layers=len(layers),
                            input="embedding" if embed is not None else "onehot",
                            embed_size=D0 if embed is not None else 0)
    except ConfigError as e:
        raise PortError(f"{path}: {e}") from None
    params: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    parts: dict[str, np.ndarray] = {}
    if embed is not None:
        params["embed"], names["embed"] = embed, [embed_name or "embed"]
    for l, ly in enumerate(layers):
        for role in ("W_x", "W_h", "b"):
            params[f"lstm.{l}.{role}"] = getattr(ly, role)
            names[f"lstm.{l}.{role}"] = ly.names[role]
        if ly.parts is not None:
            parts[f"lstm.{l}.b_ih"], parts[f"lstm.{l}.b_hh"] = ly.parts
    params["out.W"], params["out.b"] = out_W, (np.zeros(V) if out_b is None else np.asarray(out_b))
    names.update(out_names)
    for k, v in params.items():
        if not np.all(np.isfinite(v)):
            raise PortError(f"{path}: {' + '.join(names.get(k, [k]))} holds NaN or infinity")
    return ported(fmt, path, model, params, vocab=vocab, names=names, parts=parts, layout=row,
                  describe=describe, faults=list(faults.found))


def natural_key(path: Sequence[str]) -> tuple:
    """Sort key for module paths: numbers as numbers (layers.10 after layers.9), then names."""
    return tuple((0, int(p), "") if str(p).isdigit() else (1, 0, str(p)) for p in path)


def sizes(m: ModelConfig) -> str:
    """'embedding 65 x 32 -> 2 x LSTM(128) -> 65' for messages."""
    inp = f"embedding {m.vocab_size} x {m.embed_size}" if m.input == "embedding" else f"one-hot {m.vocab_size}"
    return f"{inp} -> {m.num_layers} x LSTM({m.hidden_size}) -> linear {m.vocab_size}"


def same_shapes(t: ModelConfig, m: ModelConfig) -> bool:
    return (t.vocab_size, t.hidden_size, t.num_layers, t.input, t.embed_size) == \
           (m.vocab_size, m.hidden_size, m.num_layers, m.input, m.embed_size)


def check_template(t: Ported, m: ModelConfig, like: str | Path) -> Ported:
    """A --like template (read by its format's reader) whose shapes are the model's;
    PortError otherwise."""
    if not same_shapes(t.model, m):
        raise PortError(f"--like {like}: its shapes ({sizes(t.model)}) do not match the model's "
                        f"({sizes(m)}); give a template of the same sizes")
    return t
