"""Benchmark matrices: named ones (smoke, default, gpu) and ones read from a TOML or YAML file.

A matrix is a list of groups, each a preset (or explicit sizes) with the modes to run and
optional batch sizes; it expands to cells for each chosen backend. File form (TOML):

    min_time = 1.0          # seconds of timed rounds per cell (at least min_rounds rounds)
    min_rounds = 5
    [[group]]
    preset = "char-rnn"     # or: vocab_size, hidden_size, num_layers, input, embed_size, ...
    modes = ["train", "eval"]
    batch = [1, 50]         # optional sweep; default: the preset's B
    seq_len = 50            # optional; for generate, characters drawn per sample
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impls.config import ConfigError, ModelConfig, Preset, TrainConfig, get_preset

from .bench import MODES, Cell
from .envs import UsageError


@dataclass(frozen=True)
class Matrix:
    name: str  # matrix name, stored in the results
    groups: list[dict[str, Any]]  # each: preset or sizes, modes, batch sweep, seq_len
    min_time: float = 1.0  # timed seconds per cell
    min_rounds: int = 5  # timed rounds per cell, at least
    max_rounds: int = 30  # timed rounds per cell, at most
    timeout: float = 600.0  # seconds before a cell is recorded as hung and its worker killed
    default_backends: tuple[str, ...] = field(default=())  # () = every benchmarkable backend

    def cells(self, backends: list[str], device: str, precision: str) -> list[Cell]:
        out: list[Cell] = []
        for g in self.groups:  # group-major: one preset's backends side by side in time
            preset = _group_preset(g)
            for mode in g.get("modes", list(MODES)):
                if mode not in MODES:
                    raise UsageError(f"matrix {self.name}: unknown mode {mode!r}; choose from {', '.join(MODES)}")
                batches = [1] if mode == "generate" else g.get("batch", [preset.batch_size])
                for b in batches:
                    for be in backends:
                        out.append(Cell.from_preset(preset, be, mode, batch=b,
                                                    seq_len=g.get("gen_len" if mode == "generate" else "seq_len"),
                                                    device=device, precision=precision))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "groups": self.groups, "min_time": self.min_time,
                "min_rounds": self.min_rounds, "max_rounds": self.max_rounds, "timeout": self.timeout}


def _group_preset(g: dict[str, Any]) -> Preset:
    try:
        if "preset" in g:
            p = get_preset(g["preset"])
            if "vocab_size" in g:
                p = Preset(p.name, ModelConfig(**{**p.model.__dict__, "vocab_size": g["vocab_size"]}),
                           p.train, p.seq_len, p.batch_size, p.source)
            return p
        sizes = {k: g[k] for k in ("vocab_size", "hidden_size", "num_layers", "input",
                                   "embed_size", "dropout") if k in g}
        return Preset(g.get("name", "custom"), ModelConfig(**sizes), TrainConfig(),
                      int(g.get("seq_len", 50)), int(g.get("batch", [1])[0]), "matrix file")
    except (TypeError, KeyError) as e:
        raise ConfigError(f"matrix group {g!r} is incomplete ({e})") from None


SMOKE_SIZES = {"vocab_size": 65, "hidden_size": 32, "num_layers": 1}

MATRICES: dict[str, Matrix] = {
    "smoke": Matrix("smoke", [{"name": "smoke", **SMOKE_SIZES, "seq_len": 16, "batch": [8],
                               "gen_len": 30, "modes": list(MODES)}],
                    min_time=0.2, min_rounds=3, max_rounds=10, timeout=180),
    "default": Matrix("default", [
        {"preset": "polstm", "modes": list(MODES)},
        {"preset": "char-rnn", "modes": list(MODES)},
        {"preset": "chainer-ptb", "modes": ["train", "eval"]},
        {"preset": "tutorial", "modes": ["train", "eval"]},
        # the batch sweep: char-rnn's sizes, B from 1 to 128 (B = 50 is in its group above)
        {"preset": "char-rnn", "modes": ["train"], "batch": [1, 8, 128]},
    ], min_time=1.0, min_rounds=3, max_rounds=20, timeout=300),
    "gpu": Matrix("gpu", [
        {"preset": "polstm", "modes": list(MODES)},
        {"preset": "char-rnn", "modes": list(MODES)},
        {"preset": "chainer-ptb", "modes": ["train", "eval"]},
        {"preset": "tutorial", "modes": ["train", "eval"]},
        {"preset": "tutorial", "modes": ["train"], "batch": [32, 512, 1024]},
    ], min_time=1.0, min_rounds=5, max_rounds=30, timeout=300),
}


def load_matrix(name_or_path: str) -> Matrix:
    if name_or_path in MATRICES:
        return MATRICES[name_or_path]
    p = Path(name_or_path)
    if p.suffix.lower() not in (".toml", ".yaml", ".yml", ".json"):
        raise UsageError(f"unknown matrix {name_or_path!r}; choose one of {', '.join(MATRICES)} "
                         "or give a .toml/.yaml file")
    if not p.is_file():
        raise UsageError(f"matrix file {p} does not exist")
    try:
        text = p.read_text()
        if p.suffix.lower() == ".toml":
            import tomllib
            d = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise UsageError("reading a YAML matrix needs PyYAML: pip install pyyaml") from None
            d = yaml.safe_load(text)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
        raise UsageError(f"matrix file {p} cannot be parsed ({type(e).__name__}: {e})".splitlines()[0]) from None
    if not isinstance(d, dict) or not isinstance(d.get("group"), list) or not d["group"]:
        raise UsageError(f"matrix file {p} needs at least one [[group]] table")
    known = {"min_time", "min_rounds", "max_rounds", "timeout"}
    return Matrix(d.get("name", p.stem), d["group"], **{k: v for k, v in d.items() if k in known})
