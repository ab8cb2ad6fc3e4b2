"""The `flax` format: a Flax NNX model's state saved the way Flax's documentation recommends,
with Orbax: `_, state = nnx.split(model)`, `ocp.StandardCheckpointer().save(FOLDER, state)`;
restored with `checkpointer.restore(FOLDER, abstract_state)` into an NNX model of the same
shape (`nnx.eval_shape` of its constructor) and `nnx.merge`.

Written: a model with `embed` (nnx.Embed, embedding input only), `cells` (an nnx.List of
nnx.OptimizedLSTMCell: dense_i kernel (D, 4H), dense_h kernel (H, 4H) and bias, gates i, f,
g, o: the row layouts.FLAX_OPTIMIZED) and `out` (nnx.Linear), as the README shows. Read: any
NNX state tree, by structure: nnx.Embed ({embedding}), nnx.OptimizedLSTMCell or nnx.LSTMCell
(per-gate ii ... ho: the row layouts.FLAX_CELL) per layer, in path order (cells.0 < cells.1 <
cells.10), one nnx.Linear; Dropout's random-number streams pass. A GRU cell or anything else is
another model. --like TEMPLATE: the template's tree (its attribute names and cell kind).

`run` rebuilds an NNX model with the file's tree (nnx.Embed, the cells, nnx.Linear where the
file has them), restores the checkpoint into it with Orbax, and runs each cell over time with
nnx.RNN from the given carry (Flax's carry is (c, h))."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import layouts
from ..config import ModelConfig
from . import PortError
from .assemble import Faults, Layer, assemble, check_template, gate_blocks, lstm_layer, natural_key, oriented
from .model import Outputs, Ported, Probe

INSTALL = "pip install 'lstmbench[flax]'"
GATE_KERNELS = layouts.FLAX_CELL.W_x + layouts.FLAX_CELL.W_h  # ii.kernel ... ho.kernel
Path_ = tuple[str, ...]


def can_hold(model: ModelConfig) -> str | None:
    return None


def _libs() -> tuple[Any, Any, Any]:
    try:
        import jax
        import orbax.checkpoint as ocp
        from flax import nnx
    except ImportError:
        raise PortError(f"the flax format needs Flax and Orbax: {INSTALL}") from None
    return jax, nnx, ocp


def restore_raw(path: str | Path) -> dict[Path_, np.ndarray]:
    """The checkpoint's leaves by path (Orbax without a target: the tree as saved; the
    "value" level of each nnx variable dropped)."""
    jax, _, ocp = _libs()
    path = Path(path).resolve()
    try:
        tree = ocp.StandardCheckpointer().restore(str(path))
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many kinds
        raise PortError(f"{path}: Orbax cannot restore it ({' '.join(str(e).split())[:160]}); it is "
                        "not a StandardCheckpointer checkpoint, or truncated") from None
    out: dict[Path_, np.ndarray] = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        p = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
        if p and p[-1] == "value":
            p = p[:-1]
        out[p] = leaf
    return out


@dataclass
class Node:
    path: Path_
    kind: str  # "optimized" | "cell" | "embed" | "linear" | "rng"
    shapes: dict[str, tuple[int, ...]]  # leaf path below the node ("dense_i.kernel") -> shape


def nodes(leaves: dict[Path_, Any], path: str) -> tuple[list[Node], Node, Node | None, list[Node]]:
    """(the cells in order, the decoder Linear, the Embed or None, the rng streams)."""
    left = dict(leaves)
    shp = lambda p: tuple(np.shape(leaves[p]))  # noqa: E731
    if any("backward_rnn" in p for p in leaves):
        raise PortError(f"{path}: a bidirectional RNN (backward_rnn): docs/SPEC.md's model is unidirectional")
    cells, rngs = [], []
    for p in sorted(leaves, key=natural_key):
        if p[-2:] == ("dense_h", "kernel") and p[:-2] + ("dense_i", "kernel") in leaves:
            P = p[:-2]
            keys = [("dense_i", "kernel"), ("dense_h", "kernel"), ("dense_h", "bias")]
            cells.append(Node(P, "optimized", {".".join(k): shp(P + k) for k in keys if P + k in leaves}))
            for k in keys:
                left.pop(P + k, None)
        elif p[-2:] == ("hi", "kernel"):
            P = p[:-2]
            keys = [tuple(n.split(".")) for n in GATE_KERNELS + layouts.FLAX_CELL.b]
            missing = [".".join(k) for k in keys if P + k not in leaves]
            if missing:
                raise PortError(f"{path}: {'.'.join(P)} looks like an nnx.LSTMCell but lacks {', '.join(missing)}")
            cells.append(Node(P, "cell", {".".join(k): shp(P + k) for k in keys}))
            for k in keys:
                left.pop(P + k)
        elif p[-1] in ("count", "key") and p[:-1] + ("count",) in leaves and p[:-1] + ("key",) in leaves:
            if p[-1] == "count":
                rngs.append(Node(p[:-1], "rng", {}))
            left.pop(p)
    by: dict[Path_, dict[str, tuple[int, ...]]] = {}
    for p in left:
        by.setdefault(p[:-1], {})[p[-1]] = shp(p)
    flat = []
    for P, ls in by.items():
        if set(ls) == {"embedding"} and len(ls["embedding"]) == 2:
            flat.append(Node(P, "embed", ls))
        elif set(ls) in ({"kernel", "bias"}, {"kernel"}) and len(ls["kernel"]) == 2:
            flat.append(Node(P, "linear", ls))
        else:
            raise PortError(f"{path}: {'.'.join(P) or '(top)'} holds {', '.join(sorted(ls))}: not an nnx.Embed, "
                            "LSTM cell or nnx.Linear: another model than docs/SPEC.md's")
    if not cells:
        raise PortError(f"{path}: no LSTM cell in the state (nnx.OptimizedLSTMCell's dense_i/dense_h or "
                        "nnx.LSTMCell's ii ... ho); another model")
    lin = [n for n in flat if n.kind == "linear"]
    emb = [n for n in flat if n.kind == "embed"]
    if len(lin) != 1 or len(emb) > 1:
        raise PortError(f"{path}: {len(lin)} nnx.Linear and {len(emb)} nnx.Embed; docs/SPEC.md's model has "
                        "one decoder and at most one embedding")
    return cells, lin[0], emb[0] if emb else None, rngs


def _layer(n: Node, leaves: dict[Path_, Any], faults: Faults) -> Layer:
    a = lambda k: np.asarray(leaves[n.path + tuple(k.split("."))], np.float64)  # noqa: E731
    name = lambda k: ".".join(n.path + (k,))  # noqa: E731
    if n.kind == "optimized":
        if "dense_h.bias" not in n.shapes:
            raise PortError(f"{faults.path}: {'.'.join(n.path)}.dense_h has no bias: not nnx.OptimizedLSTMCell")
        return lstm_layer(layouts.FLAX_OPTIMIZED, a("dense_i.kernel"), a("dense_h.kernel"), a("dense_h.bias"), None,
                          {"W_x": [name("dense_i.kernel")], "W_h": [name("dense_h.kernel")],
                           "b": [name("dense_h.bias")]}, faults)
    hi = n.shapes["hi.kernel"]
    H = hi[1]
    if hi != (H, H):
        raise PortError(f"{faults.path}: {name('hi.kernel')} is {hi}, an nnx.LSTMCell's is (H, H)")
    native = {k: oriented(a(k), (n.shapes["ii.kernel"][0] if k[0] == "i" else H, H) if k.endswith("kernel") else (H,),
                          name(k), faults, "nnx.LSTMCell's (in, H)") for k in n.shapes}
    W_x, W_h, b = layouts.layer_to_canonical(layouts.FLAX_CELL, native, n.shapes["ii.kernel"][0], H)
    return Layer(W_x, W_h, b, {"W_x": [name(k) for k in layouts.FLAX_CELL.W_x],
                               "W_h": [name(k) for k in layouts.FLAX_CELL.W_h],
                               "b": [name(k) for k in layouts.FLAX_CELL.b]})


def read(path: str | Path, like: str | Path | None = None, lenient: bool = False) -> Ported:
    leaves = restore_raw(path)
    cells, lin, emb, _ = nodes(leaves, str(path))
    faults = Faults(str(path), lenient)
    layers = [_layer(n, leaves, faults) for n in cells]
    for n in cells:
        if n.kind == "optimized":
            gate_blocks(*n.shapes["dense_h.kernel"], ".".join(n.path) + ".dense_h.kernel", str(path))
    H = layers[-1].W_h.shape[0]
    k = lin.path + ("kernel",)
    W = np.asarray(leaves[k], np.float64)
    b = np.asarray(leaves[lin.path + ("bias",)], np.float64) if "bias" in lin.shapes else None
    V = b.shape[0] if b is not None else (W.shape[1] if W.shape[0] == H else W.shape[0])
    W = oriented(W, (H, V), ".".join(k), faults, "nnx.Linear's kernel (in, out)")
    kinds = {"optimized": "nnx.OptimizedLSTMCell", "cell": "nnx.LSTMCell"}
    return assemble("flax", path, "flax-optimized" if cells[0].kind == "optimized" else "flax-cell", layers, W, b,
                    {"out.W": [".".join(k)], "out.b": [".".join(lin.path + ("bias",))] if b is not None else []},
                    faults, embed=np.asarray(leaves[emb.path + ("embedding",)], np.float64) if emb else None,
                    embed_name=".".join(emb.path + ("embedding",)) if emb else None,
                    describe=f"Orbax checkpoint of an NNX state: {'nnx.Embed ' + '.'.join(emb.path) + ', ' if emb else ''}"
                             f"{len(cells)} x {kinds[cells[0].kind]} ({', '.join('.'.join(n.path) for n in cells)}), "
                             f"nnx.Linear {'.'.join(lin.path)}")


# ---- an NNX model with a file's tree ---------------------------------------------------------

def default_tree(m: ModelConfig) -> tuple[list[Node], Node, Node | None, list[Node]]:
    H, V = m.hidden_size, m.vocab_size
    cells = [Node(("cells", str(l)), "optimized", {"dense_i.kernel": (m.layer_input_size(l), 4 * H),
                                                   "dense_h.kernel": (H, 4 * H), "dense_h.bias": (4 * H,)})
             for l in range(m.num_layers)]
    emb = Node(("embed",), "embed", {"embedding": (V, m.embed_size)}) if m.input == "embedding" else None
    return cells, Node(("out",), "linear", {"kernel": (H, V), "bias": (V,)}), emb, []


def write(p: Ported, path: str | Path, like: str | Path | None = None) -> str:
    from . import flax_nnx
    if like is not None:
        check_template(read(like), p.model, like)
        tree = nodes(restore_raw(like), str(like))
    else:
        tree = default_tree(p.model)
    flax_nnx.save(p, tree, Path(path).resolve())
    cells, lin, emb, _ = tree
    return (f"Orbax checkpoint (StandardCheckpointer) of an NNX state: "
            f"{'.'.join(emb.path) + ' (nnx.Embed), ' if emb else ''}"
            f"{', '.join('.'.join(n.path) for n in cells)} "
            f"({'nnx.OptimizedLSTMCell' if cells[0].kind == 'optimized' else 'nnx.LSTMCell'}), "
            f"{'.'.join(lin.path)} (nnx.Linear)")


def run(path: str | Path, probe: Probe, like: str | Path | None = None) -> Outputs:
    from . import flax_nnx
    tree = nodes(restore_raw(path), str(path))
    return flax_nnx.run(Path(path).resolve(), tree, probe)
