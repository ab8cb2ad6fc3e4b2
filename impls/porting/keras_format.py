"""The `keras` format: a Keras 3 `.keras` model from int tokens (B, T) to logits (B, T, V) from
a zero state, loadable with keras.models.load_model on any Keras engine, and `.weights.h5`
(its weights alone, with --like a .keras model that gives the architecture).

Written: a Functional model `tokens` -> `embed` (Embedding) or `onehot` (CategoryEncoding,
output_mode="one_hot": the built-in layer for one-hot input, no Lambda, so safe_mode loads it)
-> `lstm_0` ... (LSTM, return_sequences=True) -> `out` (Dense); the vocabulary, where known, in
an `lstmbench.json` entry of the .keras zip (Keras reads only its own entries). Read: any
Sequential or Functional model whose layers are, in order, that chain (Dropout layers pass:
they do nothing at inference), found by layer type; anything else is another model (GRU,
Bidirectional, Conv1D, a Lambda that safe_mode refuses to run). LSTM kernels are (D, 4H),
recurrent kernels (H, 4H), one bias, gate blocks i, f, c, o: the row layouts.KERAS.

`run` is keras.models.load_model(safe_mode=True) and the model called on the tokens (the
logits from a zero state, the saved graph itself); the final state and the run from (h0, c0)
come from the loaded layers themselves: each loaded LSTM's cell inside keras.layers.RNN with
return_state=True, checked to reproduce the saved graph's logits."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import layouts
from ..config import ModelConfig
from . import PortError
from .assemble import Faults, Layer, assemble, check_template, lstm_layer
from .model import FORWARD, Outputs, Ported, Probe
from ..tolerances import rel_error

EXTRA = "lstmbench.json"  # the vocabulary's entry in the .keras zip


def can_hold(model: ModelConfig) -> str | None:
    return None


def _keras() -> Any:
    try:
        import keras
    except ImportError:
        raise PortError("the keras format needs Keras 3 and an engine: pip install 'lstmbench[porting]' "
                        "jax (or torch, or tensorflow)") from None
    return keras


def load(path: str | Path, like: str | Path | None = None) -> Any:
    """The model, by Keras's own loader (safe_mode: no code from the file runs); .weights.h5
    into the --like model."""
    keras = _keras()
    path = Path(path)
    if path.name.lower().endswith(".weights.h5"):
        if like is None:
            raise PortError(f"{path}: a .weights.h5 file holds weights only; give --like MODEL.keras "
                            "(the architecture they belong to)")
        model = load(like)
        try:
            model.load_weights(str(path))
        except Exception as e:  # noqa: BLE001 - Keras raises ValueError or h5py's errors
            raise PortError(f"{path}: Keras cannot load it into --like {like} "
                            f"({' '.join(str(e).split())[:200]})") from None
        return model
    try:
        return keras.models.load_model(str(path), safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - what Keras raises for a bad file varies by cause
        msg = " ".join(str(e).split())
        if "safe_mode" in msg or "Lambda" in msg:
            raise PortError(f"{path}: holds Python code (a Lambda layer or a custom object) that "
                            "lstmbench will not run (keras safe_mode=True): build the model from "
                            "built-in layers (Embedding or CategoryEncoding one_hot, LSTM, Dense)") from None
        raise PortError(f"{path}: keras.models.load_model cannot read it ({msg[:200]}); it is truncated, "
                        "corrupt or not a Keras 3 model") from None


def _layers(model: Any) -> list[Any]:
    """The model's layers in order, nested models flattened."""
    keras = _keras()
    out = []
    for layer in model.layers:
        out += _layers(layer) if isinstance(layer, keras.Model) else [layer]
    return out


def chain(model: Any, path: str | Path) -> tuple[Any, list[Any], Any]:
    """(the input layer: Embedding, CategoryEncoding or None; the LSTM layers; the Dense) of a
    model that is docs/SPEC.md's; PortError naming the first layer that is not."""
    keras = _keras()
    first, lstms, dense = None, [], None
    for layer in _layers(model):
        kind = type(layer).__name__
        if isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout)):
            continue
        if dense is not None:
            raise PortError(f"{path}: layer {layer.name} ({kind}) comes after the Dense decoder: another model")
        if isinstance(layer, keras.layers.Embedding) and first is None and not lstms:
            if layer.mask_zero:
                raise PortError(f"{path}: Embedding {layer.name} has mask_zero=True: its LSTM layers skip "
                                "token 0's steps, which docs/SPEC.md's model does not; save it with mask_zero=False")
            first = layer
        elif (isinstance(layer, keras.layers.CategoryEncoding) and first is None and not lstms
              and layer.output_mode == "one_hot"):
            first = layer
        elif type(layer) is keras.layers.LSTM:
            bad = [f"{a}={getattr(layer, a)!r}" for a, want in (("go_backwards", False), ("return_sequences", True),
                                                                ("use_bias", True)) if getattr(layer, a) != want]
            act = [f"{a}={getattr(layer.cell, a).__name__}" for a, want in (("activation", "tanh"),
                   ("recurrent_activation", "sigmoid")) if getattr(getattr(layer.cell, a), "__name__", "") != want]
            if bad or act:
                raise PortError(f"{path}: LSTM layer {layer.name} has {', '.join(bad + act)}: docs/SPEC.md's "
                                "LSTM returns every step, forwards, with a bias, sigmoid gates and tanh")
            lstms.append(layer)
        elif isinstance(layer, keras.layers.Dense) and lstms:
            if getattr(layer.activation, "__name__", "") != "linear":
                raise PortError(f"{path}: the Dense layer {layer.name} applies {layer.activation.__name__}: "
                                "lstmbench compares logits; save the model with a linear Dense")
            dense = layer
        else:
            raise PortError(f"{path}: layer {layer.name} is a {kind}: another model than docs/SPEC.md's "
                            "(Embedding or CategoryEncoding one_hot, LSTM layers, Dense)")
    if not lstms or dense is None:
        raise PortError(f"{path}: no {'LSTM layer' if not lstms else 'Dense decoder after the LSTM layers'}: "
                        "another model than docs/SPEC.md's")
    return first, lstms, dense


def read(path: str | Path, like: str | Path | None = None, lenient: bool = False) -> Ported:
    keras = _keras()
    model = load(path, like)
    first, lstms, dense = chain(model, path)
    faults = Faults(str(path), lenient)
    layers: list[Layer] = []
    for lstm in lstms:
        c = lstm.cell
        layers.append(lstm_layer(layouts.KERAS, np.asarray(c.kernel.numpy(), np.float64),
                                 np.asarray(c.recurrent_kernel.numpy(), np.float64),
                                 np.asarray(c.bias.numpy(), np.float64), None,
                                 {"W_x": [c.kernel.path], "W_h": [c.recurrent_kernel.path], "b": [c.bias.path]},
                                 faults))
    W = np.asarray(dense.kernel.numpy(), np.float64)  # (H, V)
    b = np.asarray(dense.bias.numpy(), np.float64) if dense.use_bias else None
    embed = None
    if isinstance(first, keras.layers.Embedding):
        embed = np.asarray(first.embeddings.numpy(), np.float64)
    elif first is None:
        raise PortError(f"{path}: the first LSTM takes float inputs directly; lstmbench's model starts "
                        "from int tokens (an Embedding, or CategoryEncoding output_mode='one_hot')")
    what = (f"embedding {first.name} {embed.shape[0]} x {embed.shape[1]}" if embed is not None else
            f"one-hot {first.name} ({first.num_tokens})")
    return assemble("keras", path, "keras", layers, W, b,
                    {"out.W": [dense.kernel.path], "out.b": [dense.bias.path] if b is not None else []},
                    faults, embed=embed, embed_name=first.embeddings.path if embed is not None else None,
                    vocab=_vocab(path),
                    describe=f"{type(model).__name__} model: {what}, "
                             f"{', '.join(x.name for x in lstms)} (LSTM), {dense.name} (Dense)")


def _vocab(path: str | Path) -> str | None:
    if not str(path).lower().endswith(".keras"):
        return None
    with zipfile.ZipFile(path) as z:
        if EXTRA not in z.namelist():
            return None
        try:
            v = json.loads(z.read(EXTRA)).get("vocab")
        except ValueError:
            return None
    return "".join(v) if isinstance(v, list) else None


def build(m: ModelConfig) -> Any:
    """The model lstmbench writes (module docstring)."""
    keras = _keras()
    tok = keras.Input((None,), dtype="int32", name="tokens")
    x = (keras.layers.Embedding(m.vocab_size, m.embed_size, name="embed")(tok) if m.input == "embedding"
         else keras.layers.CategoryEncoding(m.vocab_size, output_mode="one_hot", name="onehot")(tok))
    for l in range(m.num_layers):
        x = keras.layers.LSTM(m.hidden_size, return_sequences=True, name=f"lstm_{l}")(x)
    return keras.Model(tok, keras.layers.Dense(m.vocab_size, name="out")(x), name="char_lstm")


def write(p: Ported, path: str | Path, like: str | Path | None = None) -> str:
    m, H = p.model, p.model.hidden_size
    weights_only = str(path).lower().endswith(".weights.h5")
    if like is not None:
        check_template(read(like), m, like)
        model = load(like)
    elif weights_only:
        raise PortError(f"--out {path}: a .weights.h5 file is weights for a model you have: give --like "
                        "MODEL.keras (or write a .keras file)")
    else:
        model = build(m)
    first, lstms, dense = chain(model, like or path)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    if m.input == "embedding":
        first.embeddings.assign(f32(p.params["embed"]))
    for l, lstm in enumerate(lstms):
        c = lstm.cell
        c.kernel.assign(f32(layouts.weight_to_native(layouts.KERAS, p.params[f"lstm.{l}.W_x"], H)))
        c.recurrent_kernel.assign(f32(layouts.weight_to_native(layouts.KERAS, p.params[f"lstm.{l}.W_h"], H)))
        c.bias.assign(f32(layouts.bias_to_native(layouts.KERAS, p.params[f"lstm.{l}.b"])))
    dense.kernel.assign(f32(p.params["out.W"]))
    dense.bias.assign(f32(p.params["out.b"]))
    if weights_only:
        model.save_weights(str(path))
        return f"Keras weights ({', '.join(x.name for x in lstms)}, {dense.name}) for --like {like}"
    model.save(str(path))
    with zipfile.ZipFile(path, "a") as z:  # Keras reads only its own entries
        z.writestr(EXTRA, json.dumps({"vocab": list(p.vocab) if p.vocab else None,
                                      "converted_from": p.format}))
    return (f"Keras 3 {type(model).__name__} model tokens (B, T) -> logits (B, T, V): "
            f"{first.name}, {', '.join(x.name for x in lstms)}, {dense.name}"
            + ("" if p.vocab else " (no vocabulary)"))


def run(path: str | Path, probe: Probe, like: str | Path | None = None) -> Outputs:
    keras = _keras()
    from keras import ops
    model = load(path, like)
    first, lstms, dense = chain(model, path)
    tok = probe.tokens.astype("int32")
    npy = lambda x: np.asarray(ops.convert_to_numpy(x), np.float64)  # noqa: E731
    saved = npy(model(tok))  # the saved graph, from a zero state: (B, T, V)
    rnns = [keras.layers.RNN(x.cell, return_sequences=True, return_state=True) for x in lstms]

    def layers(h0: np.ndarray, c0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = first(tok)
        hs, cs = [], []
        for l, rnn in enumerate(rnns):
            x, h, c = rnn(x, initial_state=[ops.convert_to_tensor(h0[l].astype("float32")),
                                            ops.convert_to_tensor(c0[l].astype("float32"))])
            hs.append(npy(h))
            cs.append(npy(c))
        return npy(dense(x)), np.stack(hs), np.stack(cs)
    z = np.zeros((len(lstms), tok.shape[0], lstms[0].units))
    logits, h, c = layers(z, z)
    if not rel_error(logits, saved)[0] <= FORWARD.rel:
        raise PortError(f"{path}: its loaded layers, run one after the other, do not reproduce the saved "
                        "model's logits: the model is not a plain chain of its layers")
    out = {"logits": saved, "h": h, "c": c}
    if probe.h0 is not None:
        out.update(zip(("logits@state", "h@state", "c@state"), layers(probe.h0, probe.c0)))
    return out
