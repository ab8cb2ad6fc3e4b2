"""Case files (docs/SPEC.md §9): cross-checks as data. `make_case` writes inputs, `run_case` computes
every output on one backend, `diff_outputs` compares two output sets against the tolerance
table. Only NumPy and the standard library are needed, so any environment can run a case."""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import CaseSpec, ConfigError
from .files import file_head, write_atomic
from .params import Params, check_params, init_params, param_shapes
from .tolerances import TOLERANCES, quantity_of, rel_error

OUTPUT_FORMAT = 1  # version of the `meta` record written beside outputs


class CaseError(Exception):
    """A case or output file is missing, unreadable or not of docs/SPEC.md §9's form."""


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


# ---- bounds: what a case may ask of a machine ------------------------------------

MEMORY_FRACTION = 0.5  # a case and a run of it may use at most this share of physical memory
MAX_FLOP = 10**14  # work a case may ask for: about an hour of the float64 reference on 2 cores
MAX_MEMBERS = 10_000  # arrays in one .npz (a 1000-layer model has 3,003)


def memory_bound() -> int:
    """Bytes a case, or a run of one, may use: MEMORY_FRACTION of this machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        total = 8 << 30
    return int(total * MEMORY_FRACTION)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # unreachable


# Closed forms, never loops over layers: a hostile spec may ask for 10^12 layers.

def _n_params(spec: CaseSpec) -> int:
    """Parameters of the model (docs/SPEC.md §2's shapes): embed (V, E), per layer W_x (D_l, 4H),
    W_h (H, 4H), b (4H), then out.W (H, V) and out.b (V)."""
    m = spec.model
    H, V, L = m.hidden_size, m.vocab_size, m.num_layers
    embed = V * m.embed_size if m.input == "embedding" else 0
    lstm = m.layer_input_size(0) * 4 * H + (L - 1) * H * 4 * H + L * (H * 4 * H + 4 * H)
    return embed + lstm + H * V + V


def _macs_per_char(spec: CaseSpec) -> int:
    """impls.config.macs_per_char in closed form (a one-hot layer 0 gathers: no 4HV term)."""
    m = spec.model
    H, L = m.hidden_size, m.num_layers
    d0 = 0 if m.input == "onehot" else m.layer_input_size(0)
    return H * m.vocab_size + 4 * H * (d0 + H) + (L - 1) * 4 * H * (2 * H)


def case_bytes(spec: CaseSpec, batch: int, seq_len: int, prefix_len: int = 5) -> int:
    """Bytes of a case's arrays (Python ints: no overflow however large the sizes)."""
    m = spec.model
    state = m.num_layers * batch * m.hidden_size
    return 8 * (_n_params(spec) + 2 * batch * seq_len + 2 * state + prefix_len + spec.generate.n)


def run_bytes(spec: CaseSpec, batch: int, seq_len: int) -> int:
    """Bytes a run of the case allocates, estimated from the float64 reference: parameters,
    gradients, optimiser state and the outputs' copies (about 7 sets of parameters), plus one
    window's activations per layer (T, B, D_l + 9H) and the logits, probabilities and their
    gradient (T, B, V) three times."""
    m = spec.model
    H, L, BT = m.hidden_size, m.num_layers, batch * seq_len
    d0 = m.layer_input_size(0) if m.input == "embedding" else 0  # one-hot: gathered, not stored
    window = BT * (d0 + (L - 1) * H + L * 9 * H) + BT * (3 * m.vocab_size + 6 * H)
    return 8 * (7 * _n_params(spec) + window + spec.generate.n)


def run_flop(spec: CaseSpec, batch: int, seq_len: int, prefix_len: int = 5) -> int:
    """FLOP of one run (docs/SPEC.md §7 counts: 2N per character forward, 6N train): a forward pass,
    a forward and backward pass, `steps` training steps, and the prefix and n generated
    tokens one at a time."""
    n = _macs_per_char(spec)
    chars = batch * seq_len
    return 2 * n * chars + 6 * n * chars * (1 + spec.steps) + 2 * n * (spec.generate.n + prefix_len)


def check_bounds(spec: CaseSpec, batch: int, seq_len: int, prefix_len: int = 5, *,
                 where: str = "this case") -> None:
    """Refuse, with the figure, a case whose arrays or run would not fit in memory or whose
    work is beyond MAX_FLOP; nothing is allocated to find out."""
    bound = memory_bound()
    need = case_bytes(spec, batch, seq_len, prefix_len) + run_bytes(spec, batch, seq_len)
    if need > bound:
        raise CaseError(f"{where} needs {fmt_bytes(need)} of memory to make and run, more than the "
                        f"{fmt_bytes(bound)} allowed here ({MEMORY_FRACTION:.0%} of this machine's "
                        "memory); choose smaller sizes (vocab, hidden, layers, batch, seq_len, generate)")
    flop = run_flop(spec, batch, seq_len, prefix_len)
    if flop > MAX_FLOP:
        raise CaseError(f"{where} asks for {flop:.2e} FLOP ({spec.steps:,} steps of B={batch:,} x "
                        f"T={seq_len:,}), beyond the bound of {MAX_FLOP:.0e} (about an hour of the "
                        "float64 reference); lower steps, batch, seq_len or generate")


def make_case(spec: CaseSpec, seed: int, batch: int, seq_len: int, *, prefix_len: int = 5,
              zero_state: bool = False, init_scale: float = 0.1) -> Case:
    """Seeded inputs: params from the reference initialiser, targets the next characters of
    a random sequence, a non-zero initial state unless zero_state."""
    m = spec.model
    for name, v in (("batch", batch), ("seq_len", seq_len), ("prefix_len", prefix_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    check_bounds(spec, batch, seq_len, prefix_len)
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

def write_file(path: str | os.PathLike[str], write: Callable[[Any], None], flag: str = "") -> Path:
    """A file the user named (`flag` names its option, e.g. "--out"), written once by
    impls.files.write_atomic: never over an existing one, its folder there already (checked
    first, check_new_path); a failure to write (ENOSPC, EFBIG, EROFS...) is a CaseError naming
    the cause, and nothing half-written stays."""
    path = Path(path)
    check_new_path(path, flag)
    try:
        return write_atomic(path, write, mkdir=False)
    except FileExistsError:
        raise
    except OSError as e:
        what = f"{flag} {path}" if flag else str(path)
        raise CaseError(f"cannot write {what}: {e.strerror or e} (nothing was written); "
                        "free space or choose another folder") from None


def check_new_path(path: str | os.PathLike[str], flag: str = "") -> None:
    """Refuse, before any work, a target that exists or whose folder is missing or not
    writable. `flag` names the option in the message (e.g. "--out")."""
    path = Path(path)
    what = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise CaseError(f"{what} exists and is a folder; give a file name")
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{what} exists; choose another name (results are never overwritten)")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise CaseError(f"{what}: {parent} is not a folder; choose another path")
    if not parent.is_dir():
        raise CaseError(f"{what}: the folder {parent} does not exist; create it first or choose another")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CaseError(f"{what}: the folder {parent} is not writable; choose another")


def save_case(case: Case, path: str | os.PathLike[str]) -> Path:
    arrays: dict[str, Any] = {"spec": np.array(case.spec.to_json())}
    arrays.update({f"param/{k}": v for k, v in case.params.items()})
    arrays.update(tokens=case.tokens, targets=case.targets, h0=case.h0, c0=case.c0,
                  prefix=case.prefix, uniforms=case.uniforms)
    return write_file(path, lambda f: np.savez(f, **arrays))


_REMAKE = "re-create it with `lstmbench case make` / `lstmbench case run`"


def _load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an .npz, read without trusting it: every member's declared size, and
    each array's header (dtype, shape), is checked against the memory bound and the bytes the
    member holds BEFORE anything is read; no pickles, no object arrays."""
    path = Path(path)
    if not path.exists():
        raise CaseError(f"{path}: no such file")
    head = file_head(path, CaseError, not_file_hint="give an .npz file", empty_hint=_REMAKE)
    if head.startswith(b"\x93NUMPY"):
        raise CaseError(f"{path}: a single .npy array, not an .npz archive of a case's arrays; {_REMAKE}")
    if not head.startswith(b"PK"):
        raise CaseError(f"{path}: not an .npz (zip) file; {_REMAKE}")
    bound = memory_bound()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise CaseError(f"{path}: holds {len(infos):,} members, more than the {MAX_MEMBERS:,} a "
                                "case or output file can have")
            total = sum(i.file_size for i in infos)  # declared sizes: zipfile reads no further
            if total > bound:
                raise CaseError(f"{path}: its arrays would unpack to {fmt_bytes(total)}, more than the "
                                f"{fmt_bytes(bound)} allowed here ({MEMORY_FRACTION:.0%} of this machine's "
                                "memory); refused before reading")
            out: dict[str, np.ndarray] = {}
            for info in infos:
                name = info.filename
                if not name.endswith(".npy") or name[:-4] in out:
                    raise CaseError(f"{path}: member {name!r} is not one array of an .npz (duplicate "
                                    f"or not .npy); {_REMAKE}")
                out[name[:-4]] = _read_member(zf, info)
            return out
    except CaseError as e:  # name the file in every message
        msg = str(e)
        raise CaseError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError,
            RuntimeError, NotImplementedError, MemoryError) as e:  # RuntimeError: encrypted member
        msg = str(e).splitlines()[0] if str(e) else ""
        raise CaseError(f"{path}: not a readable .npz file ({type(e).__name__}: {msg}); {_REMAKE}") from None


_KINDS = "biufUS"  # bool, integers, floats, text; never objects, structs or complex


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    fmt = np.lib.format
    with zf.open(info) as f:
        version = fmt.read_magic(f)
        read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is None:
            raise CaseError(f"member {info.filename!r}: .npy format version {version} is not supported")
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None:
            raise CaseError(f"member {info.filename!r} has dtype {dtype}; case files hold numbers and "
                            f"text only; {_REMAKE}")
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a hostile shape cannot overflow
        if nbytes > info.file_size:
            raise CaseError(f"member {info.filename!r} declares shape {shape} ({fmt_bytes(nbytes)}) but "
                            f"holds {fmt_bytes(info.file_size)}; {_REMAKE}")
        buf = np.empty(nbytes, np.uint8)  # read in chunks into place: one copy in memory, not two
        view, pos = memoryview(buf), 0
        while pos < nbytes:
            chunk = f.read(min(1 << 24, nbytes - pos))
            if not chunk:
                raise CaseError(f"member {info.filename!r} is truncated; {_REMAKE}")
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        while f.read(1 << 20):  # the rest (nothing, normally): the end makes zipfile check the CRC
            pass
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")


def _text(a: np.ndarray) -> str:
    """A JSON string stored by any writer: a 0-d or 1-element str or bytes array."""
    if a.dtype.kind not in "US" or a.size != 1:
        raise ConfigError(f"the spec must be one JSON string, got a {a.dtype} array of shape {a.shape}")
    v = a.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise ConfigError("the spec is not UTF-8 text") from None
    return str(v)


def _as(z: dict[str, np.ndarray], key: str, kinds: str, dtype: type) -> np.ndarray:
    """z[key] converted to dtype, refusing a dtype that would convert with a silent loss
    (float token ids, text as numbers) and non-finite floats."""
    a = z[key]
    if a.dtype.kind not in kinds:
        want = "integers" if kinds == "iu" else "real numbers"
        raise ConfigError(f"array {key} has dtype {a.dtype}; it must hold {want}")
    a = a.astype(dtype)
    if dtype is np.float64 and not np.all(np.isfinite(a)):
        raise ConfigError(f"array {key} holds NaN or infinity")
    return a


def load_case(path: str | os.PathLike[str]) -> Case:
    z = _load_npz(path)
    try:
        spec = CaseSpec.from_json(_text(z["spec"]))
        m = spec.model
        shape = z["tokens"].shape if "tokens" in z else ()
        if len(shape) == 2 and shape[0] > 0 and shape[1] > 0:  # else the checks below name it
            prefix_len = z["prefix"].size if "prefix" in z else 1
            check_bounds(spec, shape[0], shape[1], prefix_len, where=str(path))  # before per-layer work
        params = {k: _as(z, f"param/{k}", "iuf", np.float64) for k in param_shapes(m)}
        check_params(m, params)
        case = Case(spec, params, _as(z, "tokens", "iu", np.int64), _as(z, "targets", "iu", np.int64),
                    _as(z, "h0", "iuf", np.float64), _as(z, "c0", "iuf", np.float64),
                    _as(z, "prefix", "iu", np.int64).reshape(-1),
                    _as(z, "uniforms", "iuf", np.float64).reshape(-1))
    except KeyError as e:
        raise CaseError(f"{path}: missing array {e.args[0]} (docs/SPEC.md §9 lists what a case holds); "
                        f"{_REMAKE}") from None
    except (ConfigError, ValueError) as e:
        raise CaseError(f"{path}: {e}") from None
    B, T = case.tokens.shape if case.tokens.ndim == 2 else (0, 0)
    state = (m.num_layers, B, m.hidden_size)
    problems = [
        (case.tokens.ndim != 2 or case.targets.shape != case.tokens.shape, "tokens/targets must both be (B, T)"),
        (B == 0 or T == 0, f"tokens must hold at least one window, got shape {case.tokens.shape}"),
        (case.h0.shape != state or case.c0.shape != state, f"h0/c0 must be {state}"),
        (case.prefix.size == 0, "prefix must hold at least one token"),
        (case.uniforms.size < spec.generate.n, f"uniforms must hold generate.n = {spec.generate.n} values"),
        (case.uniforms.size and not (case.uniforms.min() >= 0 and case.uniforms.max() < 1),
         "uniforms must lie in [0, 1)"),
    ]
    for arr in (case.tokens, case.targets, case.prefix):
        if arr.size and (arr.min() < 0 or arr.max() >= m.vocab_size):
            problems.append((True, f"token ids must lie in [0, {m.vocab_size})"))
    for bad, what in problems:
        if bad:
            raise CaseError(f"{path}: {what}")
    return case


# ---- running ----------------------------------------------------------------------

def needs_training(key: str) -> bool:
    """Outputs only a backend with a train mode can produce: gradients and optimiser steps."""
    return key.startswith(("grad/", "after/")) or key == "losses"


def run_case(case: Case, backend: Any, modes: tuple[str, ...] = ("train", "eval", "generate")
             ) -> dict[str, np.ndarray]:
    """Every docs/SPEC.md §9 output, computed by `backend` (an impls.base.Backend built on
    case.params). Generation runs before the optimiser steps, on the case's parameters.
    A backend without a train mode (its registry spec's `modes`) gives the loss from
    eval_step and no gradients or optimiser steps (`needs_training`)."""
    s = case.spec
    be = backend
    train = "train" in modes
    tok, tgt = be.put(case.tokens), be.put(case.targets)
    logits, st = be.forward(tok, be.state(case.h0, case.c0))
    h, c = be.fetch_state(st)
    out: dict[str, np.ndarray] = {"logits": logits, "h": h, "c": c}
    if not train:
        loss, _ = be.eval_step(tok, tgt, be.state(case.h0, case.c0))
        out["loss"] = np.array(be.value(loss), np.float64)
        g = s.generate
        out["generated"] = np.asarray(
            be.generate(case.prefix, g.n, g.temperature, g.top_k, case.uniforms[:g.n]), np.int64)
        return out
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
    return write_file(path, lambda f: np.savez(f, **arrays))


# meta fields and their types; other writers may leave any out
META_TYPES: dict[str, type] = {
    "format": int, "backend": str, "dtype": str, "precision": str, "device": str,
    "version": str, "case": str, "optimizer": str}


def load_outputs(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    z = _load_npz(path)
    meta: dict[str, Any] = {}
    if "meta" in z:
        try:
            meta = json.loads(_text(z.pop("meta")))
        except (json.JSONDecodeError, ConfigError, ValueError):
            raise CaseError(f"{path}: its meta record is not one JSON string; {_REMAKE}") from None
        except RecursionError:
            raise CaseError(f"{path}: its meta record is nested too deeply; {_REMAKE}") from None
        if not isinstance(meta, dict):
            raise CaseError(f"{path}: its meta record must be a JSON object, got {type(meta).__name__}; "
                            f"{_REMAKE}")
        for k, t in META_TYPES.items():
            v = meta.get(k)
            if v is not None and (not isinstance(v, t) or isinstance(v, bool)):
                raise CaseError(f"{path}: meta field {k!r} must be a JSON "
                                f"{'integer' if t is int else 'string'}, got {v!r}; {_REMAKE}")
    z.pop("spec", None)
    for k in list(z):
        if k.startswith("param/") or k in ("tokens", "targets", "h0", "c0", "prefix", "uniforms"):
            z.pop(k)
    if not z:
        raise CaseError(f"{path}: holds no outputs (is it an input case? run `lstmbench case run` on it)")
    for k, v in z.items():
        if is_output(k) and v.dtype.kind not in "biuf":
            raise CaseError(f"{path}: output {k} has dtype {v.dtype}; outputs are numbers; {_REMAKE}")
    return z, meta


def is_output(key: str) -> bool:
    """Whether `key` names a docs/SPEC.md §9 output (one with a tolerance row)."""
    try:
        quantity_of(key)
        return True
    except KeyError:
        return False


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
        a, r = np.asarray(out[key]), np.asarray(expected[key])  # a backend may hand back lists
        if a.shape != r.shape:
            rows.append(Row(key, q, float("inf"), float("inf"), tol, "FAIL",
                            f"shape {a.shape}, expected {r.shape}"))
            continue
        bad = [w for w, x in (("output", a), ("expected", r)) if not np.all(np.isfinite(x))]
        if bad:  # NaN or inf fails whatever the other side holds (NaN == NaN must not pass)
            rows.append(Row(key, q, float("nan"), float("nan"), tol, "FAIL",
                            f"NaN or inf in the {' and the '.join(bad)}"))
            continue
        if q == "generated":
            mism = float(np.sum(a != r))
            first = "" if mism == 0 else f"first at {int(np.argmax(a.reshape(-1) != r.reshape(-1)))}"
            rows.append(Row(key, q, mism, mism, tol, "ok" if mism <= tol else "FAIL", first))
            continue
        rel, mx = rel_error(a, r)
        ok = rel <= tol  # NaN compares False: a NaN fails
        if not ok and q == "steps" and deviation and np.isfinite(rel):
            rows.append(Row(key, q, rel, mx, tol, "deviation", deviation))
        else:
            rows.append(Row(key, q, rel, mx, tol, "ok" if ok else "FAIL"))
    for key in sorted(set(out) - set(expected)):  # not compared, but NaN anywhere fails
        if is_output(key) and not np.all(np.isfinite(np.asarray(out[key]))):
            q = quantity_of(key)
            rows.append(Row(key, q, float("nan"), float("nan"), table[q].rel, "FAIL",
                            "NaN or inf in the output (not in the expected file)"))
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
    exp = expected if expected is not None else reference("spec")
    if spec is not None and "train" not in spec.modes:  # it has no gradients to compare
        exp = {k: v for k, v in exp.items() if not needs_training(k)}
    rows = diff_outputs(out, exp, precision, dev.cause if dev else "")
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
