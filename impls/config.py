"""The contract's configuration: frozen model/optimiser/clip/generation configs with
validation, the presets of docs/SPEC.md §6 (plus tiny ones for tests) and FLOPs per character
(docs/SPEC.md §7). Defaults are defined here and nowhere else."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

INPUT_KINDS = ("onehot", "embedding")
OPTIMIZERS = ("sgd", "adam", "rmsprop", "adagrad")
CLIP_KINDS = ("none", "norm", "value")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            or value == float("inf")):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _number(value: Any) -> bool:
    """A real number, not a bool (True would pass as 1 silently)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # V: number of token ids (characters of the corpus)
    hidden_size: int  # H: LSTM units per layer
    num_layers: int = 1  # L: stacked LSTM layers
    input: str = "onehot"  # "onehot" (D0 = V, row gather) or "embedding" (table (V, E))
    embed_size: int = 0  # E: embedding width; must be > 0 for "embedding", 0 for "onehot"
    dropout: float = 0.0  # p: inverted dropout on each LSTM input and the output input (train only)

    def __post_init__(self) -> None:
        _positive_int("vocab_size", self.vocab_size)
        _positive_int("hidden_size", self.hidden_size)
        _positive_int("num_layers", self.num_layers)
        if self.input not in INPUT_KINDS:
            raise ConfigError(f"input must be one of {', '.join(INPUT_KINDS)}, got {self.input!r}")
        if self.input == "embedding":
            _positive_int("embed_size", self.embed_size)
        elif self.embed_size != 0:
            raise ConfigError(f"embed_size must be 0 for one-hot input, got {self.embed_size!r}")
        if not _number(self.dropout) or not 0.0 <= self.dropout < 1.0:  # NaN fails too
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def layer_input_size(self, layer: int) -> int:
        """D_l: the input width of LSTM layer `layer`."""
        if layer > 0:
            return self.hidden_size
        return self.embed_size if self.input == "embedding" else self.vocab_size


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"  # sgd | adam | rmsprop | adagrad (formulas: docs/SPEC.md §4)
    lr: float = 0.1  # learning rate
    beta1: float = 0.9  # adam: first-moment decay
    beta2: float = 0.999  # adam: second-moment decay
    alpha: float = 0.99  # rmsprop: decay of the squared-gradient average
    eps: float = 1e-8  # adam, rmsprop, adagrad: added to the root (outside it)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}")
        _positive_float("optimizer lr", self.lr)
        for f in ("beta1", "beta2", "alpha"):
            v = getattr(self, f)
            if not _number(v) or not 0.0 <= v < 1.0:  # NaN fails too
                raise ConfigError(f"optimizer {f} must be in [0, 1), got {v!r}")
        _positive_float("optimizer eps", self.eps)

    def to_json(self) -> dict[str, Any]:
        """The case-file form: only the fields this optimiser uses (docs/SPEC.md §9)."""
        used = {"sgd": (), "adam": ("beta1", "beta2", "eps"), "rmsprop": ("alpha", "eps"),
                "adagrad": ("eps",)}[self.name]
        return {"name": self.name, "lr": self.lr, **{f: getattr(self, f) for f in used}}


@dataclass(frozen=True)
class ClipConfig:
    kind: str = "none"  # none | norm (global L2 norm over all parameters) | value (elementwise)
    value: float = 0.0  # the threshold c; ignored for "none"

    def __post_init__(self) -> None:
        if self.kind not in CLIP_KINDS:
            raise ConfigError(f"clip kind must be one of {', '.join(CLIP_KINDS)}, got {self.kind!r}")
        if self.kind != "none":
            _positive_float("clip value", self.value)
        elif not _number(self.value) or not 0.0 <= self.value < float("inf"):
            raise ConfigError(f"clip value must be a finite number >= 0, got {self.value!r}")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # update rule
    clip: ClipConfig = field(default_factory=ClipConfig)  # gradient clipping before the update


@dataclass(frozen=True)
class GenerateConfig:
    n: int = 20  # tokens to sample after the prefix
    temperature: float = 1.0  # softmax temperature; 0 means greedy (argmax)
    top_k: int = 0  # keep only logits >= the k-th largest; 0 keeps all

    def __post_init__(self) -> None:
        _positive_int("generate n", self.n)
        if not _number(self.temperature) or not 0 <= self.temperature < float("inf"):  # NaN fails
            raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), "
                              f"got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0, got {self.top_k!r}")


@dataclass(frozen=True)
class Preset:
    name: str  # preset name used on the command line
    model: ModelConfig  # the network
    train: TrainConfig  # optimiser and clipping
    seq_len: int  # T: characters per training window
    batch_size: int  # B: windows per step
    source: str  # where these numbers come from


DEFAULT_VOCAB = 65  # tiny-shakespeare's character set; docs/SPEC.md §6: V comes from the corpus


def _preset(name: str, source: str, T: int, B: int, opt: OptimizerConfig, clip: ClipConfig,
            **model: Any) -> Preset:
    model.setdefault("vocab_size", DEFAULT_VOCAB)
    return Preset(name, ModelConfig(**model), TrainConfig(opt, clip), T, B, source)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    _preset("polstm", "polstm.q (mirrors min-char-rnn)", 25, 1, OptimizerConfig("adagrad", lr=0.1),
            ClipConfig(), hidden_size=100, num_layers=1),
    _preset("char-rnn", "char-rnn defaults", 50, 50, OptimizerConfig("rmsprop", lr=2e-3, alpha=0.95),
            ClipConfig("value", 5.0), hidden_size=128, num_layers=2),
    _preset("tutorial", "the two-layer PyTorch char-LSTM tutorial", 100, 128,
            OptimizerConfig("adam", lr=1e-3), ClipConfig("norm", 5.0),
            hidden_size=512, num_layers=2, dropout=0.5),
    _preset("chainer-ptb", "Chainer's RNNForLM (ptb example)", 35, 20, OptimizerConfig("sgd", lr=1.0),
            ClipConfig("norm", 5.0), input="embedding", embed_size=650, hidden_size=650,
            num_layers=2, dropout=0.5),
    # Tiny presets: seconds to check, sizes chosen so no two dimensions coincide
    # (a transposed or swapped block cannot fit by accident).
    _preset("tiny", "tests", 7, 3, OptimizerConfig("sgd", lr=0.5), ClipConfig(),
            vocab_size=11, hidden_size=5),
    _preset("tiny-embed", "tests", 9, 2, OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 1.0),
            vocab_size=13, input="embedding", embed_size=6, hidden_size=7, num_layers=2),
    _preset("tiny-deep", "tests", 12, 4, OptimizerConfig("rmsprop", lr=0.01, alpha=0.95),
            ClipConfig("value", 0.05), vocab_size=10, hidden_size=8, num_layers=3),
)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


# ---- FLOPs per character (docs/SPEC.md §7) -------------------------------------------------

def macs_per_char(m: ModelConfig) -> int:
    """N: multiply-adds per character of one forward pass. A one-hot layer 0 gathers rows
    of W_x instead of multiplying, so its 4H*V term is dropped."""
    n = m.hidden_size * m.vocab_size
    for l in range(m.num_layers):
        d = m.layer_input_size(l)
        if l == 0 and m.input == "onehot":
            d = 0
        n += 4 * m.hidden_size * (d + m.hidden_size)
    return n


def flops_per_char(m: ModelConfig, mode: str) -> int:
    """FLOPs per character: forward (eval, generate) 2N, train 6N."""
    factor = {"train": 6, "eval": 2, "generate": 2}
    if mode not in factor:
        raise ConfigError(f"mode must be one of {', '.join(factor)}, got {mode!r}")
    return factor[mode] * macs_per_char(m)


# ---- the case-file spec (docs/SPEC.md §9) ------------------------------------------------

MAX_SPEC_CHARS = 65536  # a real spec is a few hundred characters; bounds json's work

@dataclass(frozen=True)
class CaseSpec:
    model: ModelConfig  # network sizes (dropout is 0 in cross-checks)
    train: TrainConfig  # optimiser and clip for the `steps` updates
    steps: int  # K optimiser steps
    generate: GenerateConfig  # sampling after the prefix

    def __post_init__(self) -> None:
        _positive_int("steps", self.steps)

    def to_json(self) -> str:
        m = self.model
        return json.dumps({
            "vocab_size": m.vocab_size, "input": m.input, "embed_size": m.embed_size,
            "hidden_size": m.hidden_size, "num_layers": m.num_layers, "dropout": m.dropout,
            "optimizer": self.train.optimizer.to_json(),
            "clip": dataclasses.asdict(self.train.clip), "steps": self.steps,
            "generate": dataclasses.asdict(self.generate)}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "CaseSpec":
        if len(text) > MAX_SPEC_CHARS:
            raise ConfigError(f"case spec is {len(text):,} characters long; docs/SPEC.md §9's spec is a "
                              f"small JSON object (at most {MAX_SPEC_CHARS:,} characters)")
        try:
            d = json.loads(text)
        except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
            raise ConfigError(f"case spec is not valid JSON ({str(e).splitlines()[0]})") from None
        except RecursionError:  # e.g. [[[[...]]]] nested 10,000 deep
            raise ConfigError("case spec is nested too deeply to be docs/SPEC.md §9's JSON object") from None
        if not isinstance(d, dict):
            raise ConfigError(f"case spec must be a JSON object, got {type(d).__name__}")
        subs = {}
        for key, default in (("optimizer", {"name": "sgd", "lr": 0.1}), ("clip", {"kind": "none"}),
                             ("generate", {})):
            sub = d.get(key, default)
            if not isinstance(sub, dict):
                raise ConfigError(f"case spec field {key!r} must be a JSON object, got {type(sub).__name__}")
            subs[key] = sub
        try:
            kind = d.get("input", "onehot")
            model = ModelConfig(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                                num_layers=d.get("num_layers", 1), input=kind,
                                # a one-hot case may carry any embed_size: it has no table
                                embed_size=(d.get("embed_size") or 0) if kind == "embedding" else 0,
                                dropout=d.get("dropout", 0.0))
            train = TrainConfig(OptimizerConfig(**subs["optimizer"]), ClipConfig(**subs["clip"]))
            return CaseSpec(model, train, d.get("steps", 1), GenerateConfig(**subs["generate"]))
        except KeyError as e:
            raise ConfigError(f"case spec lacks the field {e.args[0]!r} (docs/SPEC.md §9)") from None
        except TypeError as e:  # an unknown key in a sub-object
            raise ConfigError(f"case spec has an unknown field ({e})") from None
