"""The NNX side of the flax format (impls.porting.flax_format, which imports this module only
when Flax is needed): a model with a checkpoint's tree, saving one, and running one restored
by Orbax."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from .. import layouts
from . import PortError
from .assemble import natural_key
from .flax_format import Node, Path_
from .model import Outputs, Ported, Probe

Tree = tuple[list[Node], Node, "Node | None", list[Node]]  # cells, linear, embed, rng streams


class Box(nnx.Module):
    """A module whose attributes are a checkpoint's subtrees (any names the file has)."""


def build(tree: Tree) -> Box:
    """A model with modules at the tree's paths (nnx.List where the children are 0, 1, ...);
    placeholder values: a checkpoint, or save(), sets them."""
    cells, lin, emb, rngs = tree
    rng = nnx.Rngs(0)
    made: dict[Path_, Any] = {}
    for n in cells:
        if n.kind == "optimized":
            D, H = n.shapes["dense_i.kernel"][0], n.shapes["dense_h.kernel"][0]
            made[n.path] = nnx.OptimizedLSTMCell(D, H, rngs=rng)
        else:
            made[n.path] = nnx.LSTMCell(n.shapes["ii.kernel"][0], n.shapes["hi.kernel"][0], rngs=rng)
    made[lin.path] = nnx.Linear(*lin.shapes["kernel"], use_bias="bias" in lin.shapes, rngs=rng)
    if emb is not None:
        made[emb.path] = nnx.Embed(*emb.shapes["embedding"], rngs=rng)
    for n in rngs:  # a Dropout's stream (drop.rngs.count/key): restored as the file has it
        made[n.path] = nnx.Rngs(0).default
    return _subtree(made, ())


def _subtree(made: dict[Path_, Any], at: Path_) -> Any:
    if at in made:
        return made[at]
    kids = sorted({p[len(at)] for p in made if p[:len(at)] == at and len(p) > len(at)},
                  key=lambda k: natural_key((k,)))
    sub = {k: _subtree(made, at + (k,)) for k in kids}
    if kids and [k for k in kids] == [str(i) for i in range(len(kids))]:
        return nnx.List([sub[k] for k in kids])
    box = Box()
    for k, v in sub.items():
        setattr(box, k, v)
    return box


def at(root: Any, path: Path_) -> Any:
    for k in path:
        root = root[int(k)] if isinstance(root, nnx.List) else getattr(root, k)
    return root


def save(p: Ported, tree: Tree, path: Path) -> None:
    """The model's parameters in a model of `tree`'s shape, saved as Flax's documentation
    saves an NNX state (StandardCheckpointer, nnx.split)."""
    cells, lin, emb, _ = tree
    root = build(tree)
    H = p.model.hidden_size
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    for l, n in enumerate(cells):
        cell = at(root, n.path)
        W_x, W_h, b = (p.params[f"lstm.{l}.{r}"] for r in ("W_x", "W_h", "b"))
        if n.kind == "optimized":  # dense_i (D, 4H), dense_h (H, 4H) + bias: canonical's own blocks
            row = layouts.FLAX_OPTIMIZED
            cell.dense_i.kernel.value = f32(layouts.weight_to_native(row, W_x, H))
            cell.dense_h.kernel.value = f32(layouts.weight_to_native(row, W_h, H))
            cell.dense_h.bias.value = f32(layouts.bias_to_native(row, b))
        else:
            for name, v in layouts.layer_to_native(layouts.FLAX_CELL, W_x, W_h, b).items():
                mod, leaf = name.split(".")
                getattr(getattr(cell, mod), leaf).value = f32(v)
    dec = at(root, lin.path)
    dec.kernel.value = f32(p.params["out.W"])
    if "bias" in lin.shapes:
        dec.bias.value = f32(p.params["out.b"])
    elif np.any(p.params["out.b"]):
        raise PortError("--like: the template's nnx.Linear has no bias but the model's is not zero")
    if emb is not None:
        at(root, emb.path).embedding.value = f32(p.params["embed"])
    _, state = nnx.split(root)
    ck = ocp.StandardCheckpointer()
    ck.save(str(path), state)
    ck.wait_until_finished()
    ck.close()


def run(path: Path, tree: Tree, probe: Probe) -> Outputs:
    """Orbax restores the checkpoint into an NNX model of its tree; each cell is called once
    per time step (what nnx.RNN scans; eagerly, as a tiny probe is fastest: nnx.RNN traced
    its scan anew on every call, 1.2 s a file)."""
    cells, lin, emb, _ = tree
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(tree)))
    ck = ocp.StandardCheckpointer()
    try:
        state = ck.restore(str(path), abstract)
    except Exception as e:  # noqa: BLE001 - Orbax's structure or shape mismatch
        raise PortError(f"{path}: Orbax cannot restore it into an NNX model of its own shape: "
                        f"{' '.join(str(e).split())[:200]}") from None
    finally:
        ck.close()
    model = nnx.merge(graphdef, state)
    mods = [at(model, n.path) for n in cells]
    dec, table = at(model, lin.path), at(model, emb.path) if emb is not None else None
    tok = jnp.asarray(probe.tokens)
    V = lin.shapes["kernel"][1]

    def forward(h0: np.ndarray, c0: np.ndarray) -> tuple[np.ndarray, ...]:
        x = table(tok) if table is not None else jax.nn.one_hot(tok, V)  # (B, T, D0)
        hs, cs = [], []
        for l, cell in enumerate(mods):
            carry, ys = (jnp.asarray(c0[l], jnp.float32), jnp.asarray(h0[l], jnp.float32)), []  # Flax's (c, h)
            for t in range(x.shape[1]):  # the cell, one step at a time (eager: no trace per call)
                carry, y = cell(carry, x[:, t])
                ys.append(y)
            x = jnp.stack(ys, 1)  # (B, T, H)
            hs.append(np.asarray(carry[1], np.float64))
            cs.append(np.asarray(carry[0], np.float64))
        return np.asarray(dec(x), np.float64), np.stack(hs), np.stack(cs)
    B = probe.tokens.shape[0]
    z = np.zeros((len(mods), B, mods[0].hidden_features))
    out = dict(zip(("logits", "h", "c"), forward(z, z)))
    if probe.h0 is not None:
        out.update(zip(("logits@state", "h@state", "c@state"), forward(probe.h0, probe.c0)))
    return out
