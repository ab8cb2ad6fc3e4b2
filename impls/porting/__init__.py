"""Porting the docs/SPEC.md model between the frameworks' own files: the format table.

Each format is one module of this package with the same public names (Keras's backend
folders' style):

    read(path, like=None, lenient=False) -> Ported   the file, by its structure and shapes, as
                                                     one typed model (impls.porting.model)
    write(ported, path, like=None) -> str            the file (with a --like template's names
                                                     where the format has names); a line saying what
    run(path, probe, like=None) -> Outputs           the file loaded by the framework's OWN public
                                                     loader and run on a probe batch
    can_hold(model) -> str | None                    why the format cannot hold this model, or None

`read` and `write` convert through impls/layouts.py's rows; `run` never does: it is the
framework's own loading API and its own LSTM (torch's nn.LSTM, Keras's load_model, Chainer's
load_npz into L.LSTM links, ONNX Runtime, Orbax into NNX cells), so a conversion is verified by
two independent computations. Each module imports its framework inside its functions: the
package imports with the standard library and NumPy alone (chainer's NumPy < 2 environment
runs it through a worker, harness.engine.worker's "port" op, impls.porting.ops).

Untrusted files are never executed: torch.load(weights_only=True), Keras safe_mode=True,
np.load(allow_pickle=False), ONNX and Orbax files are data; no pickle anywhere."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ..case import CaseError


class PortError(CaseError):
    """A file lstmbench cannot port, or a request it cannot carry out: one line naming the
    problem and the fix (the command line exits 2, nothing written)."""


@dataclass(frozen=True)
class Format:
    name: str  # what users type: --to NAME, --from NAME
    module: str  # impls.porting.<module>: read, write, run, can_hold
    env: str  # where its framework lives: "any" (NumPy only), "main", "chainer" (NumPy < 2)
    needs: tuple[str, ...]  # import names its framework needs (a missing one: `install` says the fix)
    install: str  # what brings the framework
    suffixes: tuple[str, ...]  # file names it writes and recognises ("/" = a folder)
    reads: str  # what it reads (documentation: `convert --help`, README)
    writes: str  # what it writes
    like: str  # what --like TEMPLATE does
    layout: str  # impls.layouts row its LSTM layers are stored in
    vocab: bool  # whether the file has room for the vocabulary
    loader: str  # the framework's own API that `run` loads and computes with


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("canonical", "canonical", "any", (), "nothing (NumPy)", (".npz",),
           "lstmbench's checkpoint .npz, as `train` writes it",
           "a checkpoint .npz (needs a vocabulary: from SRC or --vocab)",
           "none: the canonical names are fixed (docs/SPEC.md §2)", "canonical", True,
           "impls.checkpoint.load_checkpoint and the float64 reference (docs/SPEC.md's oracle)"),
    Format("torch", "torch_format", "main", ("torch",), "pip install 'lstmbench[torch]' (torch)",
           (".pt", ".pth", ".bin", ".safetensors"),
           "a state_dict (torch.save, or .safetensors) of any module holding an optional "
           "nn.Embedding, one nn.LSTM (any num_layers, batch_first either way), a stack of "
           "single-layer ones or of nn.LSTMCell, and one nn.Linear, found by structure and shape",
           "a state_dict .pt/.pth (torch.save) or .safetensors; default names embed.*, lstm.*, out.*",
           "the template state_dict's key names and dtypes: load_state_dict(strict=True) works "
           "in your own module", "torch", False,
           "torch.load(weights_only=True), load_state_dict(strict=True) into nn.LSTM/nn.Linear"),
    Format("keras", "keras_format", "main", ("keras",), "pip install 'lstmbench[porting]' and "
           "one Keras engine (jax, torch or tensorflow)", (".keras", ".weights.h5"),
           "a .keras model (Sequential or Functional: Embedding or CategoryEncoding one_hot, "
           "LSTM layers with return_sequences=True, Dense), loaded with safe_mode=True; "
           ".weights.h5 with --like MODEL.keras",
           "a .keras model tokens (B, T) -> logits (B, T, V) from a zero state, on any Keras "
           "engine; .weights.h5 with --like",
           "the template model (its layer names, Sequential or Functional) takes the weights",
           "keras", True, "keras.models.load_model(safe_mode=True)"),
    Format("chainer", "chainer_format", "chainer", ("chainer",), "`lstmbench setup chainer` "
           "(Chainer 7.8.1 needs NumPy < 2: its own environment)", (".npz",),
           "chainer.serializers.save_npz of a Chain with an EmbedID, one L.LSTM per layer and a "
           "Linear (RNNForLM; under predictor/ as L.Classifier saves it too)",
           "save_npz of RNNForLM as Chainer's ptb example defines it (embed, l1..lL, l{L+1}); "
           "embedding input with E == H only",
           "the template's key names (e.g. predictor/ for L.Classifier)", "chainer", False,
           "chainer.serializers.load_npz into L.LSTM links"),
    Format("onnx", "onnx_format", "main", ("onnx", "onnxruntime"),
           "pip install 'lstmbench[onnxruntime]'", (".onnx",),
           "an ONNX graph with one LSTM operator per layer, Gather or OneHot input and a "
           "MatMul/Gemm decoder: lstmbench's own and torch.onnx.export(..., dynamo=False)'s",
           "inputs tokens int64 (B, T), optional h0, c0 float32 (L, B, H); outputs logits "
           "(B, T, V), h, c; one LSTM operator per layer",
           "the template graph (e.g. your own torch export) with its weights replaced",
           "onnx", True, "onnxruntime.InferenceSession"),
    Format("flax", "flax_format", "main", ("flax", "orbax.checkpoint"),
           "pip install 'lstmbench[flax]'", ("/",),
           "an Orbax checkpoint folder of an NNX state (StandardCheckpointer): nnx.Embed, "
           "nnx.OptimizedLSTMCell or nnx.LSTMCell per layer, nnx.Linear, found by structure",
           "StandardCheckpointer().save of nnx.state of a model with embed, cells.{l} "
           "(nnx.OptimizedLSTMCell), out: restorable into an NNX model of that shape",
           "the template checkpoint's tree (attribute names, cell kind)", "flax-optimized", False,
           "Orbax StandardCheckpointer.restore into an NNX model, its cells stepped over time"),
)}


def get_format(name: str) -> Format:
    """The table's row; PortError naming the formats otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise PortError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}") from None


def module_of(name: str) -> ModuleType:
    """The format's module (importing it imports no framework)."""
    return importlib.import_module(f"{__name__}.{get_format(name).module}")


def table_lines() -> list[str]:
    """The formats as text lines (`convert --help`, README)."""
    out = []
    for f in FORMATS.values():
        out += [f"{f.name}: {', '.join(s if s != '/' else 'a folder' for s in f.suffixes)}"
                f" (gate order {gate_letters(f.layout)}; environment: {f.env})",
                f"    reads: {f.reads}", f"    writes: {f.writes}", f"    --like: {f.like}"]
    return out


def gate_letters(layout: str) -> str:
    """How the layout row spells its gate order (impls/layouts.py native_letters)."""
    from ..layouts import LAYOUTS
    return LAYOUTS[layout].native_letters
