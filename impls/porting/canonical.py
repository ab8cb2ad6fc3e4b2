"""The `canonical` format: lstmbench's own checkpoint .npz (impls.checkpoint, as `train` writes
it): canonical parameters, the model spec and the vocabulary. Its "framework" is docs/SPEC.md
itself, so `run` is the float64 reference (impls.numpy_impl), the oracle every backend is held
to. NumPy only: any environment."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from ..config import ModelConfig, TrainConfig
from . import PortError
from .model import Outputs, Ported, Probe, ported


def can_hold(model: ModelConfig) -> str | None:
    return None


def read(path: str | Path, like: str | Path | None = None, lenient: bool = False) -> Ported:
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        raise PortError(str(e)) from None
    m = ck.model
    return ported("canonical", path, m, ck.params, vocab=ck.vocab, layout="canonical",
                  names={k: [f"param/{k}"] for k in ck.params},
                  describe=f"lstmbench checkpoint (step {ck.info.get('step', '?')}, backend "
                           f"{ck.info.get('backend', '?')})")


def write(p: Ported, path: str | Path, like: str | Path | None = None) -> str:
    if like is not None:
        raise PortError("--like: the canonical format's names are fixed (docs/SPEC.md §2); drop --like")
    if p.vocab is None:
        raise PortError(f"a canonical checkpoint holds the vocabulary, and {p.path} ({p.format}) has "
                        "none: give --vocab FILE (a JSON list of the characters, id order)")
    if list(p.vocab) != sorted(p.vocab):
        raise PortError("a canonical checkpoint's vocabulary is sorted (token id i is the i-th "
                        "character in order, as `lstmbench data` makes it); this one is not, so its "
                        "ids would change: keep the model in its own format")
    m = ModelConfig(p.model.vocab_size, p.model.hidden_size, p.model.num_layers, p.model.input,
                    p.model.embed_size, dropout=0.0)
    ck = Checkpoint(m, TrainConfig(), 1, 1, p.vocab, p.params,
                    {"converted_from": p.path, "source_format": p.format, "backend": f"convert from {p.format}"})
    try:
        save_checkpoint(ck, path)
    except CheckpointError as e:
        raise PortError(str(e)) from None
    return "lstmbench checkpoint (canonical parameters, spec, vocabulary)"


def run(path: str | Path, probe: Probe, like: str | Path | None = None) -> Outputs:
    from ..numpy_impl import NumpyBackend
    ck = load_checkpoint(path)
    be = NumpyBackend(ck.model, TrainConfig(), ck.params, dtype="float64")
    L, B, H = ck.model.num_layers, probe.tokens.shape[0], ck.model.hidden_size
    z = np.zeros((L, B, H))
    logits, (h, c) = be.forward(be.put(probe.tokens), be.state(z, z))
    out = {"logits": logits, "h": h, "c": c}
    if probe.h0 is not None:
        logits, (h, c) = be.forward(be.put(probe.tokens), be.state(probe.h0, probe.c0))
        out.update({"logits@state": logits, "h@state": h, "c@state": c})
    return out
