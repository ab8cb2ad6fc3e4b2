"""The `torch` format: a state_dict saved by torch.save (.pt, .pth, .bin; legacy or zip
serialisation) or as .safetensors, of any module holding an optional nn.Embedding, one nn.LSTM
(any num_layers; batch_first is not in a state_dict and does not matter), a stack of
single-layer ones or of nn.LSTMCell, and one nn.Linear: found by structure and shape, whatever
the attribute names.

The file's keys are grouped by module (everything before the last "."): a group whose leaves
are nn.LSTM's (weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}) or nn.LSTMCell's
(weight_ih, ...) is an LSTM; {weight, bias} a Linear; {weight} alone an Embedding (or a
decoder without bias). Layers apply in the order their keys come (a state_dict lists modules
in registration order). Anything else is another model and is refused by name (a GRU: 3 gate
blocks; bidirectional: *_reverse; proj_size: weight_hr_l{k}; a convolution: a 4-d weight).

`run` builds a plain nn.Module from those groups, with modules at the file's own key
prefixes, loads the file with load_state_dict(strict=True) and runs it: PyTorch's own nn.LSTM
decides what the numbers mean. Files are read with torch.load(weights_only=True) (no code
runs) or safetensors (data only)."""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import layouts
from ..config import ModelConfig
from . import PortError
from .assemble import Faults, Layer, assemble, check_template, gate_blocks, lstm_layer, oriented
from .detect import is_safetensors
from .model import Outputs, Ported, Probe

_MULTI = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")
_CELL = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
INSTALL = "pip install 'lstmbench[torch]'"


def can_hold(model: ModelConfig) -> str | None:
    return None


# ---- the file -------------------------------------------------------------------------

def load_arrays(path: str | Path, as_torch: bool = False) -> "OrderedDict[str, Any]":
    """The file's tensors in its own order: NumPy float64 arrays (or torch tensors with
    as_torch), never running code from the file."""
    path = Path(path)
    if is_safetensors(path):
        try:
            if as_torch:
                from safetensors.torch import load_file
            else:
                from safetensors.numpy import load_file
        except ImportError:
            raise PortError(f"{path} is a .safetensors file and the safetensors package is not "
                            "installed: pip install 'lstmbench[porting]'") from None
        try:
            raw = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise PortError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0][:120]}); "
                            "it is truncated or corrupt") from None
        return OrderedDict(raw.items()) if as_torch else OrderedDict((k, _float(k, v, path)) for k, v in raw.items())
    try:
        import torch
    except ImportError:
        raise PortError(f"reading {path} (a torch file) needs PyTorch: {INSTALL}") from None
    import pickle
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PortError(f"{path}: holds Python objects besides tensors (a whole pickled module? "
                        f"{str(e).splitlines()[-1][:80]}); lstmbench loads with torch.load(weights_only=True) "
                        "and will not run a file's code: save model.state_dict() instead") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise PortError(f"{path}: torch.load cannot read it ({str(e).splitlines()[0][:100]}); it is "
                        "truncated or corrupt") from None
    sd = _state_dict(obj, path)
    if as_torch:
        return OrderedDict(sd.items())
    return OrderedDict((k, _float(k, v.detach().to(torch.float64).numpy() if v.is_floating_point()
                                   else v.numpy(), path)) for k, v in sd.items())


def _state_dict(obj: Any, path: Path) -> "dict[str, Any]":
    """The dict of tensors in what torch.load returned: itself, or the one value of a
    checkpoint dict ({"model": state_dict, "epoch": ...}) that is one."""
    import torch

    def tensors(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())
    if tensors(obj):
        return obj
    if isinstance(obj, dict):
        inner = [k for k, v in obj.items() if tensors(v)]
        if len(inner) == 1:
            return obj[inner[0]]
        if len(inner) > 1:
            raise PortError(f"{path}: a checkpoint dict with several state_dicts ({', '.join(map(str, inner))}); "
                            "save the model's own state_dict alone")
    raise PortError(f"{path}: not a state_dict (torch.load gave a {type(obj).__name__}); save "
                    "model.state_dict() with torch.save")


def _float(key: str, a: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating):
        raise PortError(f"{path}: {key} is {a.dtype}, not a float tensor (a BatchNorm's counter?): "
                        "another model than embedding -> LSTM -> Linear")
    return np.asarray(a, np.float64)


# ---- structure --------------------------------------------------------------------------

@dataclass
class Group:
    prefix: str  # the module's key prefix ("" for keys without a dot)
    kind: str  # "lstm" (nn.LSTM), "cell" (nn.LSTMCell), "linear" (weight and bias), "weight" (weight only)
    leaves: dict[str, tuple[int, ...]]  # leaf name -> shape
    layers: int = 1

    def key(self, leaf: str) -> str:
        return f"{self.prefix}.{leaf}" if self.prefix else leaf


@dataclass
class Structure:
    lstms: list[Group]  # in the order they apply
    decoder: Group
    embed: Group | None = None
    H: int = 0
    D0: int = 0
    others: list[str] = field(default_factory=list)


def groups(shapes: "OrderedDict[str, tuple[int, ...]]", path: str) -> list[Group]:
    """The file's keys grouped by module, each classified; PortError for another model."""
    by: "OrderedDict[str, dict[str, tuple[int, ...]]]" = OrderedDict()
    for k, shape in shapes.items():
        prefix, _, leaf = k.rpartition(".")
        by.setdefault(prefix, {})[leaf] = tuple(shape)
    out = []
    for prefix, leaves in by.items():
        where = prefix or "(top level)"
        multi = [_MULTI.match(n) for n in leaves]
        if all(multi):
            if any(m.group(4) for m in multi):
                raise PortError(f"{path}: {where} is a bidirectional LSTM (keys *_reverse); docs/SPEC.md's "
                                "model is unidirectional: lstmbench cannot port it")
            if any(m.group(2) == "hr" for m in multi):
                raise PortError(f"{path}: {where} is an LSTM with proj_size (weight_hr_l*): a projection "
                                "docs/SPEC.md's model does not have")
            n = 1 + max(int(m.group(3)) for m in multi)
            for l in range(n):
                if f"weight_ih_l{l}" not in leaves or f"weight_hh_l{l}" not in leaves:
                    raise PortError(f"{path}: {where} lacks weight_ih_l{l} or weight_hh_l{l}")
            out.append(Group(prefix, "lstm", leaves, n))
        elif set(leaves) <= set(_CELL) and {"weight_ih", "weight_hh"} <= set(leaves):
            out.append(Group(prefix, "cell", leaves))
        elif set(leaves) in ({"weight", "bias"}, {"weight"}) and len(leaves["weight"]) == 2:
            if "bias" in leaves and len(leaves["bias"]) != 1:
                raise PortError(f"{path}: {where} has a {len(leaves['bias'])}-d bias: not a Linear layer")
            out.append(Group(prefix, "linear" if "bias" in leaves else "weight", leaves))
        else:
            w = leaves.get("weight", ())
            what = ("a convolution (a 4-d weight)" if len(w) >= 3 else
                    "a normalisation layer (1-d weight and bias)" if len(w) == 1 else
                    f"parameters {', '.join(sorted(leaves))}")
            raise PortError(f"{path}: {where} is {what}: another model than docs/SPEC.md's "
                            "(optional nn.Embedding, nn.LSTM, nn.Linear)")
    return out


def _lstm_sizes(g: Group, l: int, path: str) -> tuple[int, int]:
    """(D, H) of layer l of an LSTM group, from its weights whichever way they are stored."""
    sfx = f"_l{l}" if g.kind == "lstm" else ""
    hh, ih = g.leaves[f"weight_hh{sfx}"], g.leaves[f"weight_ih{sfx}"]
    if len(hh) != 2 or len(ih) != 2:
        raise PortError(f"{path}: {g.key('weight_hh' + sfx)} or weight_ih is not a matrix")
    H = gate_blocks(*hh, g.key(f"weight_hh{sfx}"), path)
    return (ih[1] if ih[0] == 4 * H else ih[0]), H


def structure(shapes: "OrderedDict[str, tuple[int, ...]]", path: str) -> Structure:
    gs = groups(shapes, path)
    lstms = [g for g in gs if g.kind in ("lstm", "cell")]
    if not lstms:
        raise PortError(f"{path}: no nn.LSTM or nn.LSTMCell in it (modules: "
                        f"{', '.join(g.prefix or '(top)' for g in gs)}); another model")
    D0, H = _lstm_sizes(lstms[0], 0, path)
    _, Htop = _lstm_sizes(lstms[-1], lstms[-1].layers - 1, path)
    flat = [g for g in gs if g.kind in ("linear", "weight")]

    def decodes(g: Group) -> bool:
        w = g.leaves["weight"]
        if g.kind == "linear":
            return Htop in w and g.leaves["bias"][0] in w
        return w[1] == Htop or (w[0] == Htop and w[1] != D0)
    dec = [g for g in flat if g.kind == "linear" and decodes(g)] or [g for g in flat if decodes(g)][-1:]
    if len(dec) != 1:
        raise PortError(f"{path}: " + (f"{len(dec)} Linear layers could be the decoder "
                                       f"({', '.join(g.prefix for g in dec)}); lstmbench's model has one"
                                       if dec else f"no Linear layer takes the top LSTM's {Htop} outputs"))
    rest = [g for g in flat if g is not dec[0]]
    emb = [g for g in rest if g.kind == "weight" and g.leaves["weight"][1] == D0]
    if len(emb) > 1 or len(rest) > len(emb):
        extra = [g.prefix for g in rest if g not in emb[:1]]
        raise PortError(f"{path}: modules {', '.join(extra)} are not part of embedding -> LSTM -> "
                        "Linear: another model")
    return Structure(lstms, dec[0], emb[0] if emb else None, H, D0)


# ---- read ---------------------------------------------------------------------------------

def read(path: str | Path, like: str | Path | None = None, lenient: bool = False) -> Ported:
    arrays = load_arrays(path)
    st = structure(OrderedDict((k, v.shape) for k, v in arrays.items()), str(path))
    faults = Faults(str(path), lenient)
    layers: list[Layer] = []
    for g in st.lstms:
        for l in range(g.layers):
            sfx = f"_l{l}" if g.kind == "lstm" else ""
            k = {r: g.key(f"{r}{sfx}") for r in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            biases = [k["bias_ih"], k["bias_hh"]] if k["bias_ih"] in arrays else []
            layers.append(lstm_layer(layouts.TORCH, arrays[k["weight_ih"]], arrays[k["weight_hh"]],
                                     arrays.get(k["bias_ih"]), arrays.get(k["bias_hh"]),
                                     {"W_x": [k["weight_ih"]], "W_h": [k["weight_hh"]], "b": biases}, faults))
    d = st.decoder
    H = layers[-1].W_h.shape[0]
    b = arrays.get(d.key("bias"))
    w = d.leaves["weight"]
    V = b.shape[0] if b is not None else (w[0] if w[1] == H else w[1])
    W = oriented(arrays[d.key("weight")], (V, H), d.key("weight"), faults, "nn.Linear's (out, in)")
    names = {"out.W": [d.key("weight")], "out.b": [d.key("bias")] if b is not None else []}
    e = st.embed
    what = [f"embedding {e.prefix} {e.leaves['weight'][0]} x {e.leaves['weight'][1]}" if e else "one-hot input"]
    what += [f"{'nn.LSTM' if g.kind == 'lstm' else 'nn.LSTMCell'} {g.prefix or '(top)'}"
             + (f" ({g.layers} layers)" if g.layers > 1 else "") for g in st.lstms]
    what.append(f"nn.Linear {d.prefix} ({H} -> {V})")
    return assemble("torch", path, "torch", layers, W.T, b, names, faults,
                    embed=arrays[e.key("weight")] if e else None, embed_name=e.key("weight") if e else None,
                    describe="state_dict: " + ", ".join(what))


# ---- write --------------------------------------------------------------------------------

def default_names(m: ModelConfig) -> dict[str, list[str]]:
    """The documented names: a module with `embed` (nn.Embedding), `lstm` (nn.LSTM with
    num_layers = L) and `out` (nn.Linear)."""
    names = {"embed": ["embed.weight"]} if m.input == "embedding" else {}
    for l in range(m.num_layers):
        names.update({f"lstm.{l}.W_x": [f"lstm.weight_ih_l{l}"], f"lstm.{l}.W_h": [f"lstm.weight_hh_l{l}"],
                      f"lstm.{l}.b": [f"lstm.bias_ih_l{l}", f"lstm.bias_hh_l{l}"]})
    return {**names, "out.W": ["out.weight"], "out.b": ["out.bias"]}


def write(p: Ported, path: str | Path, like: str | Path | None = None) -> str:
    m, H = p.model, p.model.hidden_size
    dtypes: dict[str, Any] = {}
    if like is not None:
        names = check_template(read(like), m, like).names
        dtypes = {k: v.dtype for k, v in load_arrays(like, as_torch=True).items()}  # the template's own
    else:
        names = default_names(m)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, keys in names.items():
        v = p.params[name]
        if name.endswith((".W_x", ".W_h")):
            out[keys[0]] = layouts.weight_to_native(layouts.TORCH, v, H)  # (4H, D)
        elif name.endswith(".b") and name.startswith("lstm."):
            if not keys:
                if np.any(v):
                    raise PortError(f"--like {like}: the template's LSTM has no biases (bias=False) but "
                                    f"the model's {name} is not zero")
                continue
            out[keys[0]] = layouts.bias_to_native(layouts.TORCH, v)  # the sum in bias_ih (docs/SPEC.md §2)
            out[keys[1]] = np.zeros(4 * H)  # bias_hh held at zero
        elif name == "out.W":
            out[keys[0]] = v.T  # nn.Linear's (V, H)
        elif name == "out.b" and not keys:
            if np.any(v):
                raise PortError(f"--like {like}: the template's decoder has no bias but the model's is not zero")
        else:
            out[keys[0]] = v
    if like is not None:  # the template's key order, as load_state_dict lists them
        order = list(dtypes)
        out = OrderedDict(sorted(out.items(), key=lambda kv: order.index(kv[0])))
    if str(path).endswith(".safetensors"):
        _save_safetensors(out, dtypes, path)
        kind = "safetensors"
    else:
        import torch
        torch.save(OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v, np.float32)).to(
            dtypes.get(k, torch.float32))) for k, v in out.items()), str(path))
        kind = "state_dict (torch.save)"
    return f"{kind}: " + ", ".join(out)


def _save_safetensors(arrays: "OrderedDict[str, np.ndarray]", dtypes: dict[str, Any], path: str | Path) -> None:
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise PortError("writing .safetensors needs the safetensors package: pip install "
                        "'lstmbench[porting]'") from None
    np_dtype = {"torch.float64": np.float64, "torch.float16": np.float16}
    save_file({k: np.ascontiguousarray(v, np_dtype.get(str(dtypes.get(k)), np.float32))
               for k, v in arrays.items()}, str(path))


# ---- run: the file in a plain nn.Module, by PyTorch --------------------------------------

def run(path: str | Path, probe: Probe, like: str | Path | None = None) -> Outputs:
    import torch
    from torch import nn
    sd = load_arrays(path, as_torch=True)
    st = structure(OrderedDict((k, tuple(v.shape)) for k, v in sd.items()), str(path))
    root = nn.Module()

    def place(prefix: str, module: nn.Module) -> nn.Module:
        parent = root
        *up, last = prefix.split(".") if prefix else [""]
        for name in up:
            if not hasattr(parent, name):
                parent.add_module(name, nn.Module())
            parent = getattr(parent, name)
        parent.add_module(last or "top", module)
        return module
    mods = []
    for g in st.lstms:
        D, H = _lstm_sizes(g, 0, str(path))
        bias = any(n.startswith("bias") for n in g.leaves)
        mods.append(place(g.prefix, nn.LSTM(D, H, g.layers, bias=bias, batch_first=True) if g.kind == "lstm"
                          else nn.LSTMCell(D, H, bias=bias)))
    H = _lstm_sizes(st.lstms[-1], st.lstms[-1].layers - 1, str(path))[1]
    w = st.decoder.leaves["weight"]
    V = st.decoder.leaves["bias"][0] if st.decoder.kind == "linear" else (w[0] if w[1] == H else w[1])
    dec = place(st.decoder.prefix, nn.Linear(H, V, bias=st.decoder.kind == "linear"))
    emb = place(st.embed.prefix, nn.Embedding(*st.embed.leaves["weight"])) if st.embed else None
    root.float()
    try:
        root.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise PortError(f"{path}: torch's load_state_dict refuses it: {msg[:300]}") from None
    root.eval()
    tok = torch.from_numpy(probe.tokens)
    L = sum(g.layers for g in st.lstms)
    B = tok.shape[0]

    def forward(h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = emb(tok) if emb is not None else nn.functional.one_hot(tok, V).float()  # (B, T, D0)
        hs, cs, l = [], [], 0
        for g, m in zip(st.lstms, mods):
            if isinstance(m, nn.LSTM):
                x, (h, c) = m(x, (h0[l:l + g.layers].contiguous(), c0[l:l + g.layers].contiguous()))
                hs += list(h)
                cs += list(c)
            else:  # nn.LSTMCell, one step at a time
                h, c, ys = h0[l], c0[l], []
                for t in range(x.shape[1]):
                    h, c = m(x[:, t], (h, c))
                    ys.append(h)
                x = torch.stack(ys, 1)
                hs.append(h)
                cs.append(c)
            l += g.layers
        return dec(x), torch.stack(hs), torch.stack(cs)
    with torch.no_grad():
        z = torch.zeros(L, B, H)
        out = dict(zip(("logits", "h", "c"), (t.double().numpy() for t in forward(z, z))))
        if probe.h0 is not None:
            given = forward(torch.from_numpy(probe.h0).float(), torch.from_numpy(probe.c0).float())
            out.update(zip(("logits@state", "h@state", "c@state"), (t.double().numpy() for t in given)))
    return out
