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
    [mode_backends]         # optional: a mode's own backends, when --backends names none
    generate = ["torch-genloop", "jax"]
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impls import registry
from impls.config import ConfigError, ModelConfig, Preset, TrainConfig, get_preset

from .bench import MODES, Cell
from ..errors import UsageError


@dataclass(frozen=True)
class Matrix:
    name: str  # matrix name, stored in the results and part of the results file's name
    groups: list[dict[str, Any]]  # each: preset or sizes, modes, batch sweep, seq_len
    min_time: float = 1.0  # pytest-benchmark route: timed seconds per cell
    min_rounds: int = 5  # pytest-benchmark route: timed rounds per cell, at least
    max_rounds: int = 30  # pytest-benchmark route: timed rounds per cell, at most
    timeout: float = 600.0  # seconds before a prepare or round is recorded as hung, worker killed
    default_backends: tuple[str, ...] = field(default=())  # () = every benchmarkable backend
    rounds: int = 30  # `run`: interleaved timed rounds per workload and worker process
    min_clean: int = 10  # `run`: clean rounds a cell needs, else it is re-measured, then noisy
    extra_rounds: int = 60  # `run`: at most this many re-measurement rounds per workload
    extra_time: float = 20.0  # `run`: ... and at most this many seconds of them
    processes: int = 2  # `run`: worker sets per workload unless --processes says otherwise
    workload_time: float = 60.0  # `run`: seconds of base rounds per workload, at most
    round_time: float = 0.03  # `run`: target seconds of one participant's timed round
    threads: int | None = None  # `run`: threads per framework unless --threads; None: the cores
    # mode -> the backends that mode measures (of those the run measures) when --backends names
    # none; a mode not listed measures them all. `default` so picks each framework's fastest
    # backend per mode (torch-genloop generates, torch trains).
    mode_backends: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    def cells(self, backends: list[str], device: str, precision: str) -> list[Cell]:
        out: list[Cell] = []
        for g in self.groups:  # group-major: one preset's backends side by side in time
            preset = _group_preset(g)
            for mode in g.get("modes", list(MODES)):
                if mode not in MODES:
                    raise UsageError(f"matrix {self.name}: unknown mode {mode!r}; choose from {', '.join(MODES)}")
                batches = [1] if mode == "generate" else g.get("batch", [preset.batch_size])
                mine = self.mode_backends.get(mode)
                for b in batches:
                    for be in (backends if mine is None else [x for x in backends if x in mine]):
                        out.append(Cell.from_preset(preset, be, mode, batch=b,
                                                    seq_len=g.get("gen_len" if mode == "generate" else "seq_len"),
                                                    device=device, precision=precision))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "groups": self.groups, "min_time": self.min_time,
                "min_rounds": self.min_rounds, "max_rounds": self.max_rounds, "timeout": self.timeout,
                "rounds": self.rounds, "min_clean": self.min_clean, "extra_rounds": self.extra_rounds,
                "extra_time": self.extra_time, "processes": self.processes,
                "workload_time": self.workload_time, "round_time": self.round_time,
                "threads": self.threads,
                "default_backends": list(self.default_backends),
                "mode_backends": {k: list(v) for k, v in self.mode_backends.items()}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Matrix":
        """The inverse of to_dict (a results file's or journal's matrix), validated."""
        if not isinstance(d, dict) or "name" not in d or "groups" not in d:
            raise UsageError("the stored matrix has no name or groups; the file is not a run's")
        known = set(SETTINGS) | {"name", "groups", "threads"}
        backends = d.get("default_backends") or ()
        if not isinstance(backends, (list, tuple)) or not all(isinstance(b, str) for b in backends):
            raise UsageError("the stored matrix's default_backends is not a list of names")
        per_mode = d.get("mode_backends") or {}
        if not isinstance(per_mode, dict) or not all(
                isinstance(v, (list, tuple)) and all(isinstance(b, str) for b in v) for v in per_mode.values()):
            raise UsageError("the stored matrix's mode_backends is not an object of lists of names")
        return Matrix(**{k: v for k, v in d.items() if k in known}, default_backends=tuple(backends),
                      mode_backends={k: tuple(v) for k, v in per_mode.items()})


# setting -> (type, what it must be); validated for built-in and file matrices alike
SETTINGS: dict[str, tuple[type, str]] = {
    "min_time": (float, "seconds > 0"), "timeout": (float, "seconds > 0"),
    "extra_time": (float, "seconds >= 0"), "workload_time": (float, "seconds > 0"),
    "round_time": (float, "seconds > 0"),
    "min_rounds": (int, "an integer > 0"), "max_rounds": (int, "an integer > 0"),
    "rounds": (int, "an integer > 0"), "min_clean": (int, "an integer > 0"),
    "extra_rounds": (int, "an integer >= 0"), "processes": (int, "an integer > 0"),
}
GROUP_KEYS = {"preset", "name", "modes", "batch", "seq_len", "gen_len", "vocab_size", "hidden_size",
              "num_layers", "input", "embed_size", "dropout"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _validate(m: "Matrix") -> None:
    """Every field checked, one line each: a bad matrix never reaches a worker."""
    if not isinstance(m.name, str) or not _NAME_RE.match(m.name) or ".." in m.name:
        raise UsageError(f"matrix name {m.name!r} is not allowed: use letters, digits, '_', '-' "
                         "and '.' (it becomes part of the results file's name, never a path)")
    for key, (typ, what) in SETTINGS.items():
        v = getattr(m, key)
        ok_type = (isinstance(v, int) and not isinstance(v, bool)) if typ is int else \
            (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        if not ok_type or not (v >= 0 if ">= 0" in what else v > 0):
            raise UsageError(f"matrix {m.name}: {key} = {v!r} is invalid; it must be {what}")
    if m.threads is not None and not (_pos_int(m.threads) and m.threads <= 1024):
        raise UsageError(f"matrix {m.name}: threads = {m.threads!r} is invalid; it must be an "
                         "integer from 1 to 1024 (or left out: the cores)")
    if not isinstance(m.mode_backends, dict):
        raise UsageError(f"matrix {m.name}: mode_backends must be a table of mode = [backend, ...]")
    from impls.registry import BACKENDS
    for mode, names in m.mode_backends.items():
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(b, str) for b in names):
            raise UsageError(f"matrix {m.name}: mode_backends.{mode} = {names!r}; give a list of backend names")
        unknown = [b for b in names if b not in BACKENDS]
        if unknown:
            raise UsageError(f"matrix {m.name}: mode_backends.{mode} names unknown backend(s) "
                             f"{', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    bad = [k for k in m.mode_backends if k not in MODES]
    if bad:
        raise UsageError(f"matrix {m.name}: mode_backends names unknown mode(s) {', '.join(bad)}; "
                         f"choose from {', '.join(MODES)}")
    if m.min_rounds > m.max_rounds:
        raise UsageError(f"matrix {m.name}: min_rounds = {m.min_rounds} exceeds max_rounds = {m.max_rounds}")
    if not isinstance(m.groups, list) or not m.groups:
        raise UsageError(f"matrix {m.name}: needs at least one group")
    for i, g in enumerate(m.groups, 1):
        if not isinstance(g, dict):
            raise UsageError(f"matrix {m.name}: group {i} is not a table")
        unknown = sorted(set(g) - GROUP_KEYS)
        if unknown:
            raise UsageError(f"matrix {m.name}: group {i} has unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(GROUP_KEYS))}")
        modes = g.get("modes", list(MODES))
        if not isinstance(modes, list) or not modes or any(md not in MODES for md in modes):
            raise UsageError(f"matrix {m.name}: group {i} modes = {modes!r}; give a list from {', '.join(MODES)}")
        batch = g.get("batch", [1])
        if not isinstance(batch, list) or not batch or not all(_pos_int(b) for b in batch):
            raise UsageError(f"matrix {m.name}: group {i} batch = {batch!r}; give a list of integers > 0")
        for k in ("seq_len", "gen_len", "vocab_size", "hidden_size", "num_layers", "embed_size"):
            if k in g and not _pos_int(g[k]):
                raise UsageError(f"matrix {m.name}: group {i} {k} = {g[k]!r}; it must be an integer > 0")
        if "preset" not in g and not ("vocab_size" in g and "hidden_size" in g):
            raise UsageError(f"matrix {m.name}: group {i} needs a preset or vocab_size and hidden_size")


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


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

# One backend per framework (numpy, torch, tensorflow, jax, chainer) and mode: each framework's
# fastest in that mode, from the interleaved runs of docs/speed.md (char-rnn sizes, one thread):
# torch trains and evaluates with nn.LSTM (torch-compile is no faster) and generates with
# torch-genloop (8x torch); tensorflow-xla evaluates 0.75x tensorflow's time and trains at
# the same, so tensorflow trains; tensorflow-genloop generates (24x tensorflow). Each backend's
# registry entry says the modes it takes here (BackendSpec.default_matrix).
DEFAULT_MODE_BACKENDS = registry.default_matrix()
DEFAULT_BACKENDS = tuple(dict.fromkeys(b for bs in DEFAULT_MODE_BACKENDS.values() for b in bs))
# the four presets of docs/SPEC.md §6, then char-rnn's batch sweep (B = 50 is in its group)
FULL_GROUPS = [
    {"preset": "polstm", "modes": list(MODES)},
    {"preset": "char-rnn", "modes": list(MODES)},
    {"preset": "chainer-ptb", "modes": ["train", "eval"]},
    {"preset": "tutorial", "modes": ["train", "eval"]},
    {"preset": "char-rnn", "modes": ["train"], "batch": [1, 8, 128]},
]

MATRICES: dict[str, Matrix] = {
    "smoke": Matrix("smoke", [{"name": "smoke", **SMOKE_SIZES, "seq_len": 16, "batch": [8],
                               "gen_len": 30, "modes": list(MODES)}],
                    min_time=0.2, min_rounds=3, max_rounds=10, timeout=180, rounds=90,
                    extra_rounds=60, extra_time=5.0, processes=1, workload_time=20.0,
                    # 90 rounds of 10 ms rather than 30 of 30 ms in the same budget: the minimum
                    # needs a few rounds in the machine's fast moments (docs/measurement.md)
                    round_time=0.01,
                    # one thread, pinned (harness.envs.host.worker_cpus): at these sizes a second
                    # thread only adds hand-offs, and on a shared 2-core machine a one-thread
                    # worker on a CPU of its own measures most steadily (docs/measurement.md)
                    threads=1),
    "default": Matrix("default", FULL_GROUPS, min_time=1.0, min_rounds=3, max_rounds=20, timeout=300,
        rounds=20, extra_rounds=40,
        extra_time=15.0, workload_time=40.0,
        # each framework's fastest backend per mode plus plain NumPy, so that the run fits its
        # budget (about 15 min on 2 cores); every other registered variant runs in `full`
        # (README, "Benchmarks", names them and why), so a new backend needs no line here
        default_backends=DEFAULT_BACKENDS, mode_backends=DEFAULT_MODE_BACKENDS),
    "full": Matrix("full", FULL_GROUPS, min_time=1.0, min_rounds=3, max_rounds=20, timeout=600,
                   rounds=20, extra_rounds=40, extra_time=15.0, workload_time=40.0),
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
    unknown = sorted(set(d) - set(SETTINGS) - {"name", "group", "threads", "mode_backends"})
    if unknown:
        raise UsageError(f"matrix file {p}: unknown key(s) {', '.join(unknown)}; "
                         f"known: name, group, threads, mode_backends, {', '.join(SETTINGS)}")
    settings = {k: v for k, v in d.items() if k in SETTINGS or k == "threads"}
    if "mode_backends" in d:
        mb = d["mode_backends"]
        settings["mode_backends"] = ({k: tuple(v) if isinstance(v, list) else v for k, v in mb.items()}
                                     if isinstance(mb, dict) else mb)
    return Matrix(d.get("name", _stem_name(p)), d["group"], **settings)


def _stem_name(p: Path) -> str:
    """A file's stem as a matrix name: characters outside the allowed set become '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", p.stem).strip("-.") or "matrix"
