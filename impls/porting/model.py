"""The one in-memory model every format reads into and writes from (`Ported`), the probe batch
a conversion is verified on, and the comparison of two runs' outputs.

`Ported` is the docs/SPEC.md model (ModelConfig + canonical float64 parameters) plus what a
porting engineer needs to say what is wrong with a file: where each canonical tensor came from
in it (`names`, the file's own keys), the two halves of a split bias (`parts`), the layout row
its LSTM layers are read with, and what the reader had to work around (`faults`: a matrix
stored transposed). It travels between environments as an .npz (save_ported / load_ported:
NumPy only, no pickle)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import ConfigError, ModelConfig
from ..params import Params, check_params
from ..tolerances import TOLERANCES, rel_error
from . import PortError

Outputs = dict[str, np.ndarray]  # "logits", "h", "c" from a zero state; "logits@state", ... from (h0, c0)
OUTPUTS = ("logits", "h", "c", "logits@state", "h@state", "c@state")
FORWARD = TOLERANCES["float32"]["forward"]  # what a conversion is verified against


@dataclass
class Ported:
    format: str  # the format it was read from (impls.porting.FORMATS)
    path: str  # the file
    model: ModelConfig
    params: Params  # canonical float64 (docs/SPEC.md §2)
    vocab: str | None = None  # id i is vocab[i]; None where the file has no room for one
    names: dict[str, list[str]] = field(default_factory=dict)  # canonical name -> the file's keys
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # "lstm.{l}.b_ih"/"b_hh": two biases, canonical order
    layout: str = "canonical"  # impls.layouts row its LSTM layers are stored in
    describe: str = ""  # one line: what the reader found
    faults: list[str] = field(default_factory=list)  # what the (lenient) reader worked around

    def native(self, name: str) -> str:
        """The file's own name(s) for canonical parameter `name`, for messages."""
        keys = self.names.get(name) or [name]
        return " + ".join(keys)


def ported(fmt: str, path: str | Path, model: ModelConfig, params: Params, **kw) -> Ported:
    """A Ported, its parameters checked against the model (PortError otherwise)."""
    try:
        check_params(model, params)
    except ValueError as e:
        raise PortError(f"{path}: {e}") from None
    return Ported(fmt, str(path), model, {k: np.asarray(v, np.float64) for k, v in params.items()}, **kw)


def save_ported(p: Ported, path: str | Path) -> None:
    meta = {"format": p.format, "path": p.path, "model": asdict(p.model), "vocab": p.vocab,
            "names": p.names, "layout": p.layout, "describe": p.describe, "faults": p.faults}
    arrays = {"meta": np.array(json.dumps(meta))}
    arrays.update({f"param/{k}": v for k, v in p.params.items()})
    arrays.update({f"part/{k}": v for k, v in p.parts.items()})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_ported(path: str | Path) -> Ported:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        params = {k[6:]: z[k] for k in z.files if k.startswith("param/")}
        parts = {k[5:]: z[k] for k in z.files if k.startswith("part/")}
    try:
        model = ModelConfig(**meta.pop("model"))
    except (ConfigError, TypeError) as e:
        raise PortError(f"{meta.get('path')}: {e}") from None
    return Ported(meta["format"], meta["path"], model, params, meta["vocab"], meta["names"], parts,
                  meta["layout"], meta["describe"], meta["faults"])


# ---- the probe ------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """Seeded tokens (B, T) and a non-zero initial state (L, B, H): what both sides of a
    conversion compute on. `h0`/`c0` are None where the two models' states differ in shape."""
    tokens: np.ndarray  # (B, T) int64
    h0: np.ndarray | None  # (L, B, H) float64
    c0: np.ndarray | None

    def save(self, path: str | Path) -> None:
        arrays = {"tokens": self.tokens}
        if self.h0 is not None:
            arrays.update(h0=self.h0, c0=self.c0)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @staticmethod
    def load(path: str | Path) -> "Probe":
        with np.load(path, allow_pickle=False) as z:
            return Probe(z["tokens"], z["h0"] if "h0" in z.files else None,
                         z["c0"] if "c0" in z.files else None)


def make_probe(vocab_size: int, state: tuple[int, int] | None, seed: int = 0,
               batch: int = 2, seq_len: int = 6) -> Probe:
    """`batch` sequences of `seq_len` tokens below vocab_size; with `state` = (L, H), an
    initial state drawn as case files draw theirs (impls.case.make_case)."""
    rng = np.random.default_rng([seed, 28])
    tokens = rng.integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64)
    if state is None:
        return Probe(tokens, None, None)
    L, H = state
    return Probe(tokens, rng.uniform(-0.5, 0.5, (L, batch, H)), rng.uniform(-1.0, 1.0, (L, batch, H)))


def save_outputs(out: Outputs, path: str | Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v, np.float64) for k, v in out.items()})


def load_outputs(path: str | Path) -> Outputs:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---- comparing two runs -------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    output: str  # one of OUTPUTS
    error: float | None  # ||b - a|| / ||a||; None where only one side computes it
    max_abs: float | None
    status: str  # "ok", "FAIL", or why it was not compared

    def to_json(self) -> dict:
        return asdict(self)


def compare(a: Outputs, b: Outputs, a_name: str = "A", b_name: str = "B") -> list[Row]:
    """One row per output either side computed; a shape mismatch or NaN fails."""
    rows = []
    for k in OUTPUTS:
        if k not in a and k not in b:
            continue
        if k not in a or k not in b:
            rows.append(Row(k, None, None, f"not compared: {a_name if k not in a else b_name} "
                                           "does not compute it"))
            continue
        if np.shape(a[k]) != np.shape(b[k]):
            rows.append(Row(k, None, None, f"FAIL: shapes differ, {np.shape(a[k])} against {np.shape(b[k])}"))
            continue
        rel, mx = rel_error(b[k], a[k])
        ok = rel <= FORWARD.rel  # NaN compares False: it fails
        rows.append(Row(k, rel, mx, "ok" if ok else "FAIL"))
    return rows


def agree(rows: list[Row]) -> bool:
    """Every compared output within the tolerance, and the logits compared: a check that
    compared nothing fails."""
    compared = [r for r in rows if r.error is not None or r.status.startswith("FAIL")]
    return (any(r.output == "logits" and r.error is not None for r in rows)
            and all(r.status == "ok" for r in compared))


def format_rows(rows: list[Row]) -> list[str]:
    """The per-output table (what `convert` and `crosscheck` print)."""
    label = {"logits": "logits   from a zero state", "h": "final h  from a zero state",
             "c": "final c  from a zero state", "logits@state": "logits   from (h0, c0)",
             "h@state": "final h  from (h0, c0)", "c@state": "final c  from (h0, c0)"}
    out = [f"  {'output':28} {'rel. error':>10} {'max |diff|':>10}  {'tolerance':>9}  verdict",]
    for r in rows:
        err = f"{r.error:10.1e}" if r.error is not None else f"{'-':>10}"
        mx = f"{r.max_abs:10.1e}" if r.max_abs is not None else f"{'-':>10}"
        out.append(f"  {label[r.output]:28} {err} {mx}  {FORWARD.rel:9.0e}  {r.status}")
    return out
