"""The `chainer` format: chainer.serializers.save_npz of RNNForLM as Chainer's ptb example
defines it: `embed` (L.EmbedID(n_vocab, n_units)), one L.LSTM(n_units, n_units) per layer
named l1, l2, ..., and the L.Linear(n_units, n_vocab) after them (l3 for the example's two
layers), so that `chainer.serializers.load_npz(DST, RNNForLM(n_vocab, n_units))` loads it.
RNNForLM can hold only embedding input with E == H: anything else is a one-line refusal.

Read: the save_npz of any Chain (np.load, allow_pickle=False: no pickle) holding an EmbedID,
L.LSTM links (upward/W (4H, D), upward/b, lateral/W (4H, H): gates interleaved per unit, a, i,
f, o: the row layouts.CHAINER) in name order (l1 < l2 < l10; ChainList 0, 1, ...), and one
Linear; under any prefix (L.Classifier saves predictor/..., a trainer snapshot
updater/model:main/predictor/...). The file is NumPy's; writing and running need Chainer
(its own environment, NumPy < 2, reached through a worker).

`run` builds the Chain from the file's own link paths (for RNNForLM's file: RNNForLM's links),
loads it with chainer.serializers.load_npz (strict) and calls it one time step at a time, as
the example does, each L.LSTM's state set with set_state(c0, h0)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import layouts
from ..config import ModelConfig
from . import PortError
from .assemble import Faults, Layer, assemble, check_template, lstm_layer, natural_key, oriented
from .model import Outputs, Ported, Probe

INSTALL = "`lstmbench setup chainer` (Chainer 7.8.1 needs NumPy < 2: its own environment)"


def can_hold(model: ModelConfig) -> str | None:
    if model.input != "embedding":
        return ("Chainer's RNNForLM starts with EmbedID(n_vocab, n_units): it cannot hold one-hot "
                "input; convert to torch, keras, onnx or flax instead")
    if model.embed_size != model.hidden_size:
        return (f"Chainer's RNNForLM uses one n_units for EmbedID and every L.LSTM: it cannot hold "
                f"E = {model.embed_size} != H = {model.hidden_size}")
    return None


@dataclass
class Link:
    path: str  # e.g. "predictor/l1"
    kind: str  # "lstm" | "linear" | "embed"
    shapes: dict[str, tuple[int, ...]]  # leaf ("upward/W", "W", ...) -> shape

    def key(self, leaf: str) -> str:
        return f"{self.path}/{leaf}" if self.path else leaf


def links(shapes: dict[str, tuple[int, ...]], path: str) -> tuple[list[Link], Link, Link | None]:
    """(the L.LSTM links in order, the decoder Linear, the EmbedID or None) by structure."""
    left = dict(shapes)
    lstms = []
    for k in sorted(shapes):
        if k.endswith("upward/W"):
            p = k[:-len("upward/W")].rstrip("/")
            leaf = {n: left.pop(f"{p}/{n}" if p else n, None) for n in ("upward/W", "upward/b", "lateral/W")}
            if leaf["lateral/W"] is None or leaf["upward/b"] is None:
                raise PortError(f"{path}: {p}/upward/W without upward/b and lateral/W: not an L.LSTM link")
            if (f"{p}/lateral/b" if p else "lateral/b") in left:
                raise PortError(f"{path}: {p} has a lateral/b: not Chainer's L.LSTM (its lateral has no bias)")
            lstms.append(Link(p, "lstm", leaf))
    lstms.sort(key=lambda x: natural_key(x.path.split("/")))
    by: dict[str, dict[str, tuple[int, ...]]] = {}
    for k, s in left.items():
        parent, _, leaf = k.rpartition("/")
        by.setdefault(parent, {})[leaf] = s
    flat = []
    for p, leaves in by.items():
        if set(leaves) in ({"W", "b"}, {"W"}) and len(leaves["W"]) == 2:
            flat.append(Link(p, "linear" if "b" in leaves else "embed", leaves))
        else:
            raise PortError(f"{path}: {p or '(top)'} holds {', '.join(sorted(leaves))}: not an EmbedID, "
                            "L.LSTM or Linear (a GRU? L.NStepLSTM?): another model than RNNForLM")
    if not lstms:
        raise PortError(f"{path}: no L.LSTM link in it (an upward/W, upward/b, lateral/W triple); "
                        "another model than RNNForLM")
    H = lstms[-1].shapes["lateral/W"][1] if lstms[-1].shapes["lateral/W"][0] == 4 * lstms[-1].shapes["lateral/W"][1] \
        else lstms[-1].shapes["lateral/W"][0]
    dec = [x for x in flat if x.kind == "linear" and H in x.shapes["W"]]
    emb = [x for x in flat if x.kind == "embed"]
    if len(dec) != 1 or len(emb) > 1 or len(flat) != len(dec) + len(emb):
        raise PortError(f"{path}: links {', '.join(x.path for x in flat)}: expected one EmbedID and "
                        f"one Linear taking the top L.LSTM's {H} outputs")
    return lstms, dec[0], emb[0] if emb else None


def _arrays(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k], np.float64) for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise PortError(f"{path}: np.load cannot read it ({str(e).splitlines()[0][:100]}); it is "
                        "truncated or corrupt") from None
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile and friends
        raise PortError(f"{path}: not a readable .npz ({type(e).__name__}); it is truncated or corrupt") from None


def read(path: str | Path, like: str | Path | None = None, lenient: bool = False) -> Ported:
    arrays = _arrays(path)
    lstms, dec, emb = links({k: v.shape for k, v in arrays.items()}, str(path))
    faults = Faults(str(path), lenient)
    layers: list[Layer] = []
    for x in lstms:
        k = {n: x.key(n) for n in ("upward/W", "lateral/W", "upward/b")}
        layers.append(lstm_layer(layouts.CHAINER, arrays[k["upward/W"]], arrays[k["lateral/W"]],
                                 arrays[k["upward/b"]], None,
                                 {"W_x": [k["upward/W"]], "W_h": [k["lateral/W"]], "b": [k["upward/b"]]}, faults))
    H = layers[-1].W_h.shape[0]
    b = arrays[dec.key("b")]
    W = oriented(arrays[dec.key("W")], (b.shape[0], H), dec.key("W"), faults, "L.Linear's W (out, in)")
    common = lstms[0].path.rpartition("/")[0]
    ours = {k[len(common) + 1 if common else 0:] for k in arrays} == {n for v in default_names(
        _sizes(len(lstms))).values() for n in v}
    return assemble("chainer", path, "chainer", layers, W.T, b,
                    {"out.W": [dec.key("W")], "out.b": [dec.key("b")]}, faults,
                    embed=arrays[emb.key("W")] if emb else None, embed_name=emb.key("W") if emb else None,
                    describe=f"save_npz of {'RNNForLM' if ours else 'a Chain'}{f' under {common}/' if common else ''}: "
                             f"{'EmbedID ' + emb.path + ', ' if emb else ''}L.LSTM "
                             f"{', '.join(x.path.rpartition('/')[2] for x in lstms)}, Linear {dec.path.rpartition('/')[2]}")


def _sizes(layers: int) -> ModelConfig:
    """A model of `layers` layers (default_names needs only the count)."""
    return ModelConfig(1, 1, layers, "embedding", 1)


def default_names(m: ModelConfig) -> dict[str, list[str]]:
    """RNNForLM's: embed, l1..lL (L.LSTM), l{L+1} (L.Linear)."""
    names = {"embed": ["embed/W"]}
    for l in range(m.num_layers):
        names.update({f"lstm.{l}.W_x": [f"l{l + 1}/upward/W"], f"lstm.{l}.W_h": [f"l{l + 1}/lateral/W"],
                      f"lstm.{l}.b": [f"l{l + 1}/upward/b"]})
    out = f"l{m.num_layers + 1}"
    return {**names, "out.W": [f"{out}/W"], "out.b": [f"{out}/b"]}


def _chainer() -> Any:
    try:
        import chainer
    except ImportError:
        raise PortError(f"the chainer format needs Chainer: {INSTALL}") from None
    return chainer


def build(arrays_or_shapes: dict[str, tuple[int, ...]], path: str) -> tuple[Any, list[Any], Any, Any]:
    """A Chain with links at the file's own paths: (root, the L.LSTM links in order, the
    Linear, the EmbedID or None). Every initialiser is 0: the file gives every value."""
    chainer = _chainer()
    import chainer.links as L
    lstms, dec, emb = links(arrays_or_shapes, path)

    def make(x: Link) -> Any:
        if x.kind == "lstm":
            up = x.shapes["upward/W"]
            H = x.shapes["lateral/W"][1]
            return L.LSTM(up[1], H, lateral_init=0, upward_init=0, bias_init=0, forget_bias_init=0)
        if x.kind == "linear":
            return L.Linear(x.shapes["W"][1], x.shapes["W"][0], initialW=0, initial_bias=0)
        return L.EmbedID(*x.shapes["W"], initialW=0)
    tree: dict[str, Any] = {}
    made = {}
    for x in [*lstms, dec, *([emb] if emb else [])]:
        node = tree
        *up, last = x.path.split("/")
        for name in up:
            node = node.setdefault(name, {})
        made[x.path] = node[last] = make(x)

    def chain(node: dict[str, Any]) -> Any:
        kids = {k: (chain(v) if isinstance(v, dict) else v) for k, v in node.items()}
        if kids and all(k.isdigit() for k in kids) and sorted(map(int, kids)) == list(range(len(kids))):
            return chainer.ChainList(*[kids[str(i)] for i in range(len(kids))])
        c = chainer.Chain()
        with c.init_scope():
            for k, v in kids.items():
                setattr(c, k, v)
        return c
    return chain(tree), [made[x.path] for x in lstms], made[dec.path], made[emb.path] if emb else None


def write(p: Ported, path: str | Path, like: str | Path | None = None) -> str:
    why = can_hold(p.model)
    if why:
        raise PortError(why)
    chainer = _chainer()
    m, H = p.model, p.model.hidden_size
    names = check_template(read(like), m, like).names if like is not None else default_names(m)
    arrays = {names["embed"][0]: p.params["embed"], names["out.W"][0]: p.params["out.W"].T,
              names["out.b"][0]: p.params["out.b"]}
    for l in range(m.num_layers):
        arrays[names[f"lstm.{l}.W_x"][0]] = layouts.weight_to_native(layouts.CHAINER, p.params[f"lstm.{l}.W_x"], H)
        arrays[names[f"lstm.{l}.W_h"][0]] = layouts.weight_to_native(layouts.CHAINER, p.params[f"lstm.{l}.W_h"], H)
        arrays[names[f"lstm.{l}.b"][0]] = layouts.bias_to_native(layouts.CHAINER, p.params[f"lstm.{l}.b"])
    root, _, _, _ = build({k: v.shape for k, v in arrays.items()}, str(path))
    for name, param in root.namedparams():
        param.array[...] = arrays[name.lstrip("/")].astype(np.float32)
    chainer.serializers.save_npz(str(path), root)
    lstms, dec, emb = links({k: v.shape for k, v in arrays.items()}, str(path))
    return (f"save_npz of {'RNNForLM' if like is None else 'the --like Chain'}: EmbedID {emb.path}, "
            f"L.LSTM {', '.join(x.path for x in lstms)}, Linear {dec.path}")


def run(path: str | Path, probe: Probe, like: str | Path | None = None) -> Outputs:
    chainer = _chainer()
    import chainer.functions as F
    with np.load(path, allow_pickle=False) as z:
        shapes = {k: z[k].shape for k in z.files}
    root, lstms, dec, emb = build(shapes, str(path))
    try:
        chainer.serializers.load_npz(str(path), root, strict=True)
    except Exception as e:  # noqa: BLE001 - KeyError, ValueError (shape) from the deserializer
        raise PortError(f"{path}: chainer.serializers.load_npz refuses it: {' '.join(str(e).split())[:200]}") from None
    tok = probe.tokens.astype(np.int32)  # (B, T)
    B, T = tok.shape
    H = lstms[0].state_size

    def forward(h0: np.ndarray, c0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for l, lstm in enumerate(lstms):
            lstm.set_state(chainer.Variable(c0[l].astype(np.float32)), chainer.Variable(h0[l].astype(np.float32)))
        ys = []
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            for t in range(T):
                x = emb(tok[:, t]) if emb is not None else F.embed_id(tok[:, t], np.eye(dec.W.shape[0], dtype=np.float32))
                for lstm in lstms:
                    x = lstm(x)
                ys.append(dec(x).array)
        h = np.stack([np.asarray(x.h.array, np.float64) for x in lstms])
        c = np.stack([np.asarray(x.c.array, np.float64) for x in lstms])
        return np.stack(ys, 1).astype(np.float64), h, c
    z = np.zeros((len(lstms), B, H))
    out = dict(zip(("logits", "h", "c"), forward(z, z)))
    if probe.h0 is not None:
        out.update(zip(("logits@state", "h@state", "c@state"), forward(probe.h0, probe.c0)))
    return out
