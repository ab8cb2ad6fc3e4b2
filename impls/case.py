"""Case files (SPEC §9): cross-checks as data. `make_case` writes inputs, `run_case` computes
every output on one backend, `diff_outputs` compares two output sets against the tolerance
table. Only NumPy and the standard library are needed, so any environment can run a case."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import CaseSpec, ConfigError
from .params import Params, check_params, init_params, param_shapes
from .tolerances import TOLERANCES, quantity_of, rel_error

OUTPUT_FORMAT = 1  # version of the `meta` record written beside outputs


class CaseError(Exception):
    """A case or output file is missing, unreadable or not of SPEC §9's form."""


@dataclass(frozen=True)
class Case:
    spec: CaseSpec  # sizes, optimiser, clip, steps, generation settings
    params: Params  # canonical float64 parameters
    tokens: np.ndarray  # (B, T) int64
    targets: np.ndarray  # (B, T) int64
    h0: np.ndarray  # (L, B, H) float64
    c0: np.ndarray  # (L, B, H) float64
    prefix: np.ndarray  # (P,) int64
    uniforms: np.ndarray  # (n,) float64


def make_case(spec: CaseSpec, seed: int, batch: int, seq_len: int, *, prefix_len: int = 5,
              zero_state: bool = False, init_scale: float = 0.1) -> Case:
    """Seeded inputs: params from the reference initialiser, targets the next characters of
    a random sequence, a non-zero initial state unless zero_state."""
    m = spec.model
    if batch <= 0 or seq_len <= 0 or prefix_len <= 0:
        raise ConfigError("batch, seq_len and prefix_len must be positive")
    params = init_params(m, seed, scale=init_scale)
    rng = np.random.default_rng([seed, 1])
    seq = rng.integers(0, m.vocab_size, size=(batch, seq_len + 1), dtype=np.int64)
    shape = (m.num_layers, batch, m.hidden_size)
    if zero_state:
        h0, c0 = np.zeros(shape), np.zeros(shape)
    else:
        h0, c0 = rng.uniform(-0.5, 0.5, shape), rng.uniform(-1.0, 1.0, shape)
    prefix = rng.integers(0, m.vocab_size, size=prefix_len, dtype=np.int64)
    uniforms = rng.random(spec.generate.n)
    return Case(spec, params, seq[:, :-1].copy(), seq[:, 1:].copy(), h0, c0, prefix, uniforms)


# ---- files ----------------------------------------------------------------------

def write_new(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Write a file atomically and never over an existing one: write to a temporary file in
    the same folder, then hard-link it into place (which fails if the name exists)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another name (results are never overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path


def save_case(case: Case, path: str | os.PathLike[str]) -> Path:
    arrays: dict[str, Any] = {"spec": np.array(case.spec.to_json())}
    arrays.update({f"param/{k}": v for k, v in case.params.items()})
    arrays.update(tokens=case.tokens, targets=case.targets, h0=case.h0, c0=case.c0,
                  prefix=case.prefix, uniforms=case.uniforms)
    return write_new(path, lambda f: np.savez(f, **arrays))


def _load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CaseError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}); "
                        "re-create it with `lstmbench case make`") from None


def _text(a: np.ndarray) -> str:
    """A JSON string stored by any writer: a 0-d or 1-element str or bytes array."""
    v = a.reshape(-1)[0] if a.size == 1 else a
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode()
    return str(v)


def load_case(path: str | os.PathLike[str]) -> Case:
    z = _load_npz(path)
    try:
        spec = CaseSpec.from_json(_text(z["spec"]))
        m = spec.model
        params = {k: z[f"param/{k}"].astype(np.float64) for k in param_shapes(m)}
        check_params(m, params)
        case = Case(spec, params, z["tokens"].astype(np.int64), z["targets"].astype(np.int64),
                    z["h0"].astype(np.float64), z["c0"].astype(np.float64),
                    z["prefix"].astype(np.int64).reshape(-1), z["uniforms"].astype(np.float64).reshape(-1))
    except KeyError as e:
        raise CaseError(f"{path}: missing array {e.args[0]} (SPEC §9 lists what a case holds)") from None
    except (ConfigError, ValueError) as e:
        raise CaseError(f"{path}: {e}") from None
    B, T = case.tokens.shape if case.tokens.ndim == 2 else (0, 0)
    state = (m.num_layers, B, m.hidden_size)
    problems = [
        (case.tokens.ndim != 2 or case.targets.shape != case.tokens.shape, "tokens/targets must both be (B, T)"),
        (case.h0.shape != state or case.c0.shape != state, f"h0/c0 must be {state}"),
        (case.prefix.size == 0, "prefix must hold at least one token"),
        (case.uniforms.size < spec.generate.n, f"uniforms must hold generate.n = {spec.generate.n} values"),
    ]
    for arr in (case.tokens, case.targets, case.prefix):
        if arr.size and (arr.min() < 0 or arr.max() >= m.vocab_size):
            problems.append((True, f"token ids must lie in [0, {m.vocab_size})"))
    for bad, what in problems:
        if bad:
            raise CaseError(f"{path}: {what}")
    return case


# ---- running ----------------------------------------------------------------------

def run_case(case: Case, backend: Any) -> dict[str, np.ndarray]:
    """Every SPEC §9 output, computed by `backend` (an impls.base.Backend built on
    case.params). Generation runs before the optimiser steps, on the case's parameters."""
    s = case.spec
    be = backend
    tok, tgt = be.put(case.tokens), be.put(case.targets)
    logits, st = be.forward(tok, be.state(case.h0, case.c0))
    h, c = be.fetch_state(st)
    out: dict[str, np.ndarray] = {"logits": logits, "h": h, "c": c}
    loss, _, _, grads = be.loss_and_grads(tok, tgt, be.state(case.h0, case.c0))
    out["loss"] = np.array(loss, np.float64)
    out.update({f"grad/{k}": np.asarray(v, np.float64) for k, v in grads.items()})
    g = s.generate
    out["generated"] = np.asarray(
        be.generate(case.prefix, g.n, g.temperature, g.top_k, case.uniforms[:g.n]), np.int64)
    st = be.state(case.h0, case.c0)
    losses = []
    for _ in range(s.steps):
        loss, st = be.train_step(tok, tgt, st)
        losses.append(be.value(loss))
    out["losses"] = np.array(losses, np.float64)
    out.update({f"after/{k}": v for k, v in be.params().items()})
    return out


def save_outputs(outputs: dict[str, np.ndarray], meta: dict[str, Any],
                 path: str | os.PathLike[str]) -> Path:
    arrays = dict(outputs)
    arrays["meta"] = np.array(json.dumps({"format": OUTPUT_FORMAT, **meta}, sort_keys=True))
    return write_new(path, lambda f: np.savez(f, **arrays))


def load_outputs(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    z = _load_npz(path)
    meta: dict[str, Any] = {}
    if "meta" in z:
        try:
            meta = json.loads(str(z.pop("meta")))
        except json.JSONDecodeError:
            raise CaseError(f"{path}: its meta record is not JSON") from None
    z.pop("spec", None)
    for k in list(z):
        if k.startswith("param/") or k in ("tokens", "targets", "h0", "c0", "prefix", "uniforms"):
            z.pop(k)
    if not z:
        raise CaseError(f"{path}: holds no outputs (is it an input case? run `lstmbench case run` on it)")
    return z, meta


# ---- comparing ------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    key: str  # output name, e.g. grad/lstm.0.W_h
    quantity: str  # tolerance row: forward, loss, grads, steps, generated
    rel: float  # norm-relative error (mismatching tokens for `generated`)
    max_abs: float  # max absolute difference
    tol: float  # the bound from impls.tolerances
    status: str  # ok | FAIL | deviation (a documented native-formula difference)
    note: str = ""  # the cause, for a deviation


def diff_outputs(out: dict[str, np.ndarray], expected: dict[str, np.ndarray], precision: str,
                 deviation: str = "") -> list[Row]:
    """Compare every expected output; `deviation` names a documented cause that excuses the
    optimiser-step rows (reported, never hidden)."""
    if precision not in TOLERANCES:
        raise CaseError(f"unknown precision {precision!r}; choose from {', '.join(TOLERANCES)}")
    table = TOLERANCES[precision]
    rows = []
    for key in sorted(expected):
        try:
            q = quantity_of(key)
        except KeyError:
            continue
        tol = table[q].rel
        if key not in out:
            rows.append(Row(key, q, float("inf"), float("inf"), tol, "FAIL", "missing"))
            continue
        if q == "generated":
            a, r = out[key], expected[key]
            mism = float(np.sum(a != r)) if a.shape == r.shape else float("inf")
            first = "" if mism == 0 or a.shape != r.shape else f"first at {int(np.argmax(a != r))}"
            rows.append(Row(key, q, mism, mism, tol, "ok" if mism <= tol else "FAIL", first))
            continue
        rel, mx = rel_error(out[key], expected[key])
        ok = rel <= tol  # NaN compares False: a NaN fails
        if not ok and q == "steps" and deviation and np.isfinite(rel):
            rows.append(Row(key, q, rel, mx, tol, "deviation", deviation))
        else:
            rows.append(Row(key, q, rel, mx, tol, "ok" if ok else "FAIL"))
    return rows


def check_outputs(out: dict[str, np.ndarray], case: Case, backend: str, precision: str, *,
                  expected: dict[str, np.ndarray] | None = None,
                  cache: dict[str, dict[str, np.ndarray]] | None = None) -> list[Row]:
    """Diff a backend's outputs against the reference for `case` (computed here unless
    `expected` is given). A documented native-optimiser deviation of `backend` (registry) is
    accepted only where the outputs match the reference run with that native formula; `cache`
    keeps reference runs by formula across calls."""
    from .registry import BACKENDS, create  # the registry imports no framework
    cache = {} if cache is None else cache

    def reference(form: str) -> dict[str, np.ndarray]:
        if form not in cache:
            ref = create("numpy", case.spec.model, case.spec.train, case.params, eps_form=form)
            cache[form] = run_case(case, ref)
        return cache[form]

    spec = BACKENDS.get(backend)
    dev = spec.deviations.get(case.spec.train.optimizer.name) if spec else None
    rows = diff_outputs(out, expected if expected is not None else reference("spec"), precision,
                        dev.cause if dev else "")
    if dev is None:
        return rows
    native = {r.key: r for r in diff_outputs(out, reference(dev.eps_form), precision)}
    return [r if r.status != "deviation" or native[r.key].status == "ok"
            else replace(r, status="FAIL", note=f"not explained by the native formula ({dev.eps_form})")
            for r in rows]


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'output':28} {'rel.err':>10} {'max|diff|':>10} {'tol':>8}  status"]
    for r in rows:
        lines.append(f"{r.key:28} {r.rel:10.2e} {r.max_abs:10.2e} {r.tol:8.0e}  {r.status}"
                     + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)
