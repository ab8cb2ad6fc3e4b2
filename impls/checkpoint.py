"""Portable checkpoints: a trained model as one `.npz` that every backend loads.

Layout (canonical, docs/SPEC.md §2, with the case file's names, impls/case.py):
    format      JSON: {"format": "lstmbench.checkpoint", "version": 1, "step": ..., "backend": ...,
                "corpus": {...}, "seed": ..., ...} (facts about the run that wrote it)
    spec        JSON: the model (vocab_size, input, embed_size, hidden_size, num_layers, dropout),
                the optimiser and clip (as case files write them), seq_len and batch_size
    vocab       JSON: the list of characters; token id i is vocab[i]
    param/NAME  float64, every canonical parameter (float32 values are held exactly)

Written atomically by impls.files.write_atomic (temporary file, fsync, rename over the
previous checkpoint), so an interrupted write leaves the previous one intact. Only NumPy and the standard library are
used: chainer's environment loads checkpoints too."""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .case import CaseError
from .config import ClipConfig, ConfigError, ModelConfig, OptimizerConfig, TrainConfig
from .files import write_atomic
from .params import Params, check_params, param_shapes

FORMAT = "lstmbench.checkpoint"
VERSION = 1


class CheckpointError(CaseError):
    """A checkpoint is missing, unreadable, or does not fit what it is used with."""


@dataclass(frozen=True)
class Checkpoint:
    model: ModelConfig  # the network (vocab_size = len(vocab))
    train: TrainConfig  # the optimiser and clip it was trained with
    seq_len: int  # T of its training windows
    batch_size: int  # B of its training windows
    vocab: str  # characters; id i is vocab[i]
    params: Params  # canonical float64
    info: dict[str, Any]  # step, backend, corpus, seed, ...

    def spec_json(self) -> str:
        m = self.model
        return json.dumps({
            "vocab_size": m.vocab_size, "input": m.input, "embed_size": m.embed_size,
            "hidden_size": m.hidden_size, "num_layers": m.num_layers, "dropout": m.dropout,
            "optimizer": self.train.optimizer.to_json(), "clip": dataclasses.asdict(self.train.clip),
            "seq_len": self.seq_len, "batch_size": self.batch_size}, sort_keys=True)


def save_checkpoint(ck: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write (or replace) `path` atomically."""
    path = Path(path)
    check_params(ck.model, ck.params)
    if len(ck.vocab) != ck.model.vocab_size:
        raise CheckpointError(f"vocabulary has {len(ck.vocab)} characters but the model's "
                              f"vocab_size is {ck.model.vocab_size}")
    arrays: dict[str, Any] = {
        "format": np.array(json.dumps({"format": FORMAT, "version": VERSION, **ck.info}, sort_keys=True)),
        "spec": np.array(ck.spec_json()),
        "vocab": np.array(json.dumps(list(ck.vocab))),
    }
    arrays.update({f"param/{k}": np.asarray(v, np.float64) for k, v in ck.params.items()})
    write_atomic(path, lambda f: np.savez(f, **arrays), replace=True)
    return path


def _text(a: np.ndarray) -> str:
    v = a.reshape(-1)[0] if a.size == 1 else a
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate; CheckpointError (one line) on anything wrong."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoint.npz").is_file():
        path = path / "checkpoint.npz"  # `train --out DIR` names the folder; accept it
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; give the checkpoint.npz that "
                              "`lstmbench train --out DIR` wrote")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); "
                              "train again to write a new one") from None
    try:
        info = json.loads(_text(arrays["format"]))
        if info.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not an lstmbench checkpoint (format "
                                  f"{info.get('format')!r}); is it a case file?")
        if info.get("version") != VERSION:
            raise CheckpointError(f"{path}: checkpoint version {info.get('version')!r}; this "
                                  f"lstmbench reads version {VERSION}")
        d = json.loads(_text(arrays["spec"]))
        model = ModelConfig(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                            num_layers=d["num_layers"], input=d["input"],
                            embed_size=d["embed_size"], dropout=d["dropout"])
        train = TrainConfig(OptimizerConfig(**d["optimizer"]), ClipConfig(**d["clip"]))
        vocab = "".join(json.loads(_text(arrays["vocab"])))
        params = {k: arrays[f"param/{k}"].astype(np.float64) for k in param_shapes(model)}
        check_params(model, params)
    except CheckpointError:
        raise
    except KeyError as e:
        raise CheckpointError(f"{path}: not an lstmbench checkpoint (missing {e.args[0]!r})") from None
    except (json.JSONDecodeError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint ({str(e).splitlines()[0]})") from None
    if len(vocab) != model.vocab_size or len(set(vocab)) != len(vocab) or list(vocab) != sorted(vocab):
        raise CheckpointError(f"{path}: its vocabulary ({len(vocab)} characters) does not fit its "
                              f"model (vocab_size {model.vocab_size}) or is not sorted and unique")
    for k, v in params.items():
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"{path}: parameter {k} holds NaN or infinity (training diverged)")
    return Checkpoint(model, train, int(d.get("seq_len", 1)), int(d.get("batch_size", 1)),
                      vocab, params, info)
