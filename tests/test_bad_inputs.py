"""Bad inputs and faults at the entrances this suite owns (`case make`, `case run`, `case diff`,
`check`, and the devices and precisions `run` and `check` refuse up front), one row each: the
command runs as a user runs it (a subprocess, cwd a scratch folder), and each row asserts the
exact exit status, one `lstmbench: error:` line naming the problem (exit 2) or a FAIL verdict
(exit 1), no traceback, and that nothing was written or lost. Rows for `run`, `compare` and
`report` live with their owners' tests (results files: tests/test_durability.py)."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from impls.case import MAX_FLOP, memory_bound

ROOT = Path(__file__).resolve().parent.parent

# Fault injection for a full disk: imported by every Python the test starts (it comes first on
# PYTHONPATH). os.fsync of write_new's temporary file for the named target raises ENOSPC, as
# a full disk does; nothing else changes.
SITECUSTOMIZE = '''
import errno, os
_target = os.environ.get("LSTMBENCH_TEST_ENOSPC")
if _target:
    _fsync = os.fsync
    def fsync(fd):
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            name = ""
        if name.startswith("." + _target + "."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _fsync(fd)
    os.fsync = fsync
'''


def lstmbench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    faults = cwd.parent / f"{cwd.name}-faults"
    faults.mkdir(exist_ok=True)
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    base = {"PYTHONPATH": os.pathsep.join([str(faults), str(ROOT)]), "PATH": "/usr/bin:/bin",
            "TMPDIR": str(cwd.parent)}  # the check's scratch files stay out of the listing
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=300)


# ---- the files a row starts from --------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """c.npz (a tiny case) and o.npz (its float64 outputs), made once through the CLI."""
    d = tmp_path_factory.mktemp("base")
    r = lstmbench("case", "make", "--preset", "tiny", "--seed", "1", "--out", "c.npz", cwd=d)
    assert r.returncode == 0, r.stderr
    r = lstmbench("case", "run", "c.npz", "--backend", "numpy", "--out", "o.npz", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


KEYS = {"param_out_b": "param/out.b", "grad_out_b": "grad/out.b"}  # keyword-safe aliases


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def rewrite(src: str, dst: str, drop: tuple[str, ...] = (), **changes: object) -> Callable[[Path], None]:
    """A builder: dst = src's arrays with some dropped or replaced (keys with "/" are given
    by their KEYS alias)."""
    def build(d: Path) -> None:
        a = arrays(d / src)
        for k in drop:
            a.pop(k)
        a.update({KEYS.get(k, k): v for k, v in changes.items()})
        np.savez(d / dst, **a)
    return build


def spec_with(**fields: object) -> Callable[[Path], None]:
    """A builder: bad.npz = c.npz with fields of its JSON spec replaced."""
    def build(d: Path) -> None:
        a = arrays(d / "c.npz")
        spec = json.loads(str(a["spec"]))
        spec.update(fields)
        a["spec"] = np.array(json.dumps(spec))
        np.savez(d / "bad.npz", **a)
    return build


def raw_spec(text: str) -> Callable[[Path], None]:
    return rewrite("c.npz", "bad.npz", spec=np.array(text))


def npy_renamed(d: Path) -> None:
    with open(d / "bad.npz", "wb") as f:
        np.save(f, np.arange(10))


def zip_bomb(d: Path) -> None:
    """Members whose declared sizes add up past the memory bound (each below zip64's 4 GiB
    sentinel); their data is tiny, so nothing is ever really unpacked here."""
    n = memory_bound() // 0xFFFF0000 + 2
    with zipfile.ZipFile(d / "bad.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            zf.writestr(f"a{i}.npy", b"\0" * 100)
    data = bytearray((d / "bad.npz").read_bytes())
    i = data.find(b"PK\x01\x02")
    while i >= 0:  # central directory records: uncompressed size at offset 24
        struct.pack_into("<I", data, i + 24, 0xFFFF0000)
        i = data.find(b"PK\x01\x02", i + 4)
    (d / "bad.npz").write_bytes(bytes(data))


def header_bomb(d: Path) -> None:
    """A member whose .npy header declares 8 TB of int64 but holds 8 bytes (np.load would
    allocate the declared array before reading)."""
    a = arrays(d / "c.npz")
    a.pop("tokens")
    np.savez(d / "bad.npz", **a)
    with zipfile.ZipFile(d / "bad.npz", "a") as zf, zf.open("tokens.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False,
                                                 "shape": (10**12,)})
        f.write(b"\0" * 8)


def patched_zip(flag: int = 0, method: int | None = None, flip: int | None = None) -> Callable[[Path], None]:
    """A builder: bad.npz = c.npz with the general-purpose flag bits or the compression
    method of every member patched (central directory and local headers), or a data byte
    flipped (a CRC mismatch)."""
    def build(d: Path) -> None:
        data = bytearray((d / "c.npz").read_bytes())
        for sig, flag_at in ((b"PK\x01\x02", 8), (b"PK\x03\x04", 6)):
            i = data.find(sig)
            while i >= 0:
                struct.pack_into("<H", data, i + flag_at, struct.unpack_from("<H", data, i + flag_at)[0] | flag)
                if method is not None:
                    struct.pack_into("<H", data, i + flag_at + 2, method)
                i = data.find(sig, i + 4)
        if flip is not None:
            data[flip] ^= 0xFF
        (d / "bad.npz").write_bytes(bytes(data))
    return build


def object_member(d: Path) -> None:
    a = arrays(d / "c.npz")
    a["tokens"] = np.array([{"x": 1}], dtype=object)
    np.savez(d / "bad.npz", **a)  # pickled: loading must not unpickle it


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        p = d / name
        p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return build


def truncate(src: str, dst: str, keep: int) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        (d / dst).write_bytes((d / src).read_bytes()[:keep])
    return build


def mkdir(name: str, mode: int = 0o755) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        (d / name).mkdir()
        (d / name).chmod(mode)
    return build


def outputs_with(meta: object = None, drop: tuple[str, ...] = (), **changes: object) -> Callable[[Path], None]:
    """A builder: bad.npz = o.npz with its meta replaced (when given) and outputs changed
    (key -> function of the old array; "grad_out_b" names grad/out.b)."""
    def build(d: Path) -> None:
        a = arrays(d / "o.npz")
        if meta is not None:
            a["meta"] = meta if isinstance(meta, np.ndarray) else np.array(meta)
        for k in drop:
            a.pop(k)
        for k, fn in changes.items():
            k = KEYS.get(k, k)
            a[k] = fn(a[k])  # type: ignore[operator]
        np.savez(d / "bad.npz", **a)
    return build


def nan_first(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64).copy()
    x.reshape(-1)[0] = np.nan
    return x


def only_unknown(d: Path) -> None:
    np.savez(d / "bad.npz", meta=np.array(json.dumps({"backend": "numpy"})), foo=np.ones(3))


# ---- the table ----------------------------------------------------------------------

@dataclass
class Row:
    id: str
    args: list[str]
    expect: str  # on the error line (exit 2) or in stdout (exit 1)
    status: int = 2
    setup: list[Callable[[Path], None]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    root_skips: bool = False  # permissions do not bind root


MAKE = ["case", "make", "--preset", "tiny", "--seed", "1"]
RUN = ["case", "run", "bad.npz", "--backend", "numpy", "--out", "x.npz"]
DIFF = ["case", "diff", "bad.npz", "o.npz"]

ROWS = [
    # -- case make: options
    Row("make-unknown-preset", ["case", "make", "--preset", "nope", "--seed", "1", "--out", "x.npz"], "unknown preset 'nope'"),
    Row("make-no-sizes", ["case", "make", "--seed", "1", "--out", "x.npz"], "give --preset NAME, or sizes"),
    Row("make-hidden-0", ["case", "make", "--vocab", "5", "--hidden", "0", "--seed", "1", "--out", "x.npz"], "hidden_size must be a positive integer"),
    Row("make-vocab-0-on-preset", [*MAKE, "--vocab", "0", "--out", "x.npz"], "vocab_size must be a positive integer, got 0"),
    Row("make-layers-negative", [*MAKE, "--layers", "-2", "--out", "x.npz"], "num_layers must be a positive integer"),
    Row("make-input-unknown", ["case", "make", "--vocab", "5", "--hidden", "3", "--input", "bytes", "--seed", "1", "--out", "x.npz"], "input must be one of onehot, embedding"),
    Row("make-embed-missing", [*MAKE, "--input", "embedding", "--out", "x.npz"], "embed_size must be a positive integer"),
    Row("make-clip-not-a-number", [*MAKE, "--clip", "norm:abc", "--out", "x.npz"], "the threshold 'abc' is not a number"),
    Row("make-clip-no-value", [*MAKE, "--clip", "norm", "--out", "x.npz"], "write none, norm:C or value:C"),
    Row("make-clip-unknown-kind", [*MAKE, "--clip", "global:1", "--out", "x.npz"], "clip kind must be one of none, norm, value"),
    Row("make-clip-negative", [*MAKE, "--clip", "value:-1", "--out", "x.npz"], "clip value must be a positive finite number"),
    Row("make-clip-nan", [*MAKE, "--clip", "norm:nan", "--out", "x.npz"], "clip value must be a positive finite number"),
    Row("make-clip-inf", [*MAKE, "--clip", "norm:1e400", "--out", "x.npz"], "clip value must be a positive finite number"),
    Row("make-seed-negative", ["case", "make", "--preset", "tiny", "--seed", "-1", "--out", "x.npz"], "seed must be an integer >= 0, got -1"),
    Row("make-steps-0", [*MAKE, "--steps", "0", "--out", "x.npz"], "steps must be a positive integer, got 0"),
    Row("make-batch-0", [*MAKE, "--batch", "0", "--out", "x.npz"], "batch must be a positive integer, got 0"),
    Row("make-seq-len-0", [*MAKE, "--seq-len", "0", "--out", "x.npz"], "seq_len must be a positive integer, got 0"),
    Row("make-batch-negative", [*MAKE, "--batch", "-3", "--out", "x.npz"], "batch must be a positive integer, got -3"),
    Row("make-generate-negative", [*MAKE, "--generate", "-1", "--out", "x.npz"], "generate n must be a positive integer"),
    Row("make-generate-0", [*MAKE, "--generate", "0", "--out", "x.npz"], "generate n must be a positive integer"),
    Row("make-temperature-negative", [*MAKE, "--temperature", "-1", "--out", "x.npz"], "temperature must be a finite number >= 0"),
    Row("make-temperature-nan", [*MAKE, "--temperature", "nan", "--out", "x.npz"], "temperature must be a finite number >= 0"),
    Row("make-temperature-inf", [*MAKE, "--temperature", "inf", "--out", "x.npz"], "temperature must be a finite number >= 0"),
    Row("make-top-k-negative", [*MAKE, "--top-k", "-1", "--out", "x.npz"], "top_k must be an integer >= 0"),
    Row("make-lr-nan", [*MAKE, "--lr", "nan", "--out", "x.npz"], "optimizer lr must be a positive finite number"),
    Row("make-optimizer-unknown", [*MAKE, "--optimizer", "lbfgs", "--out", "x.npz"], "optimizer must be one of sgd, adam"),
    # -- case make: memory and work bounds, refused with the figure before allocating
    Row("make-memory-29TiB", ["case", "make", "--vocab", "100000", "--hidden", "100000", "--layers", "50",
                              "--seed", "1", "--out", "x.npz"], "TiB of memory to make and run"),
    Row("make-memory-huge-ints", ["case", "make", "--vocab", str(10**30), "--hidden", "10", "--seed", "1",
                                  "--out", "x.npz"], "PiB of memory to make and run"),
    Row("make-memory-layers-1e12", [*MAKE, "--layers", str(10**12), "--out", "x.npz"], "of memory to make and run"),
    Row("make-memory-batch", [*MAKE, "--batch", "100000000", "--seq-len", "100000", "--out", "x.npz"], "of memory to make and run"),
    Row("make-memory-generate", [*MAKE, "--generate", str(10**13), "--out", "x.npz"], "of memory to make and run"),
    Row("make-work-1e12-steps", [*MAKE, "--steps", str(10**12), "--out", "x.npz"], "asks for 1.95e+16 FLOP (1,000,000,000,000 steps"),
    # -- case make: --out
    Row("make-out-exists", [*MAKE, "--out", "c.npz"], "--out c.npz exists"),
    Row("make-out-is-folder", [*MAKE, "--out", "d"], "--out d exists", setup=[mkdir("d")]),
    Row("make-out-missing-folder", [*MAKE, "--out", "nodir/x.npz"], "the folder nodir does not exist"),
    Row("make-out-read-only-folder", [*MAKE, "--out", "ro/x.npz"], "the folder ro is not writable",
        setup=[mkdir("ro", 0o555)], root_skips=True),
    Row("make-out-disk-full", [*MAKE, "--out", "x.npz"], "cannot write x.npz: No space left on device",
        env={"LSTMBENCH_TEST_ENOSPC": "x.npz"}),
    # -- case run: files that are not cases
    Row("run-missing-file", ["case", "run", "missing.npz", "--backend", "numpy", "--out", "x.npz"], "missing.npz: no such file"),
    Row("run-folder", ["case", "run", "d", "--backend", "numpy", "--out", "x.npz"], "d: not a regular file", setup=[mkdir("d")]),
    Row("run-fifo", ["case", "run", "fifo", "--backend", "numpy", "--out", "x.npz"], "fifo: not a regular file",
        setup=[lambda d: os.mkfifo(d / "fifo")]),
    Row("run-npy-renamed", RUN, "a single .npy array, not an .npz archive", setup=[npy_renamed]),
    Row("run-text-file", RUN, "not an .npz (zip) file", setup=[write("bad.npz", "hello\n")]),
    Row("run-empty-file", RUN, "the file is empty", setup=[write("bad.npz", b"")]),
    Row("run-truncated-zip", RUN, "not a readable .npz file", setup=[truncate("c.npz", "bad.npz", 300)]),
    Row("run-truncated-tail", RUN, "not a readable .npz file", setup=[truncate("c.npz", "bad.npz", 2000)]),
    Row("run-encrypted-zip", RUN, "is encrypted", setup=[patched_zip(flag=1)]),
    Row("run-unknown-compression", RUN, "compression method is not supported", setup=[patched_zip(method=99)]),
    Row("run-bad-crc", RUN, "Bad CRC-32", setup=[patched_zip(flip=200)]),
    Row("run-spec-not-utf8", RUN, "the spec is not UTF-8 text", setup=[rewrite("c.npz", "bad.npz", spec=np.array([b"\xff{"]))]),
    Row("run-zip-bomb", RUN, "would unpack to", setup=[zip_bomb]),
    Row("run-header-bomb", RUN, "bad.npz: member 'tokens.npy' declares shape (1000000000000,)", setup=[header_bomb]),
    Row("run-object-member", RUN, "bad.npz: member 'tokens.npy' has dtype object", setup=[object_member]),
    Row("run-outputs-as-case", ["case", "run", "o.npz", "--backend", "numpy", "--out", "x.npz"], "missing array spec"),
    # -- case run: a spec that is not docs/SPEC.md §9's
    Row("run-spec-nested-10000", RUN, "nested too deeply", setup=[raw_spec("[" * 10000 + "]" * 10000)]),
    Row("run-spec-not-json", RUN, "case spec is not valid JSON", setup=[raw_spec("{vocab_size: 5")]),
    Row("run-spec-not-object", RUN, "case spec must be a JSON object, got list", setup=[raw_spec("[1, 2]")]),
    Row("run-spec-huge", RUN, "case spec is 100,002 characters long", setup=[raw_spec(" " * 100000 + "{}")]),
    Row("run-spec-number-array", RUN, "the spec must be one JSON string", setup=[rewrite("c.npz", "bad.npz", spec=np.arange(3))]),
    Row("run-spec-missing-field", RUN, "case spec lacks the field 'hidden_size'", setup=[raw_spec('{"vocab_size": 11}')]),
    Row("run-spec-sub-not-object", RUN, "case spec field 'clip' must be a JSON object", setup=[spec_with(clip="norm")]),
    Row("run-spec-unknown-field", RUN, "case spec has an unknown field", setup=[spec_with(clip={"kind": "norm", "value": 1, "x": 2})]),
    Row("run-spec-steps-0", RUN, "steps must be a positive integer, got 0", setup=[spec_with(steps=0)]),
    Row("run-spec-steps-string", RUN, "steps must be a positive integer, got '3'", setup=[spec_with(steps="3")]),
    Row("run-spec-steps-1e12", RUN, "FLOP (1,000,000,000,000 steps", setup=[spec_with(steps=10**12)]),
    Row("run-spec-layers-1e12", RUN, "of memory to make and run", setup=[spec_with(num_layers=10**12)]),
    Row("run-spec-5000-digits", RUN, "case spec is not valid JSON",
        setup=[raw_spec('{"vocab_size": 1' + "0" * 5000 + ', "hidden_size": 5}')]),
    Row("run-spec-temperature-nan", RUN, "temperature must be a finite number >= 0", setup=[spec_with(generate={"n": 4, "temperature": float("nan")})]),
    Row("run-spec-vocab-bool", RUN, "vocab_size must be a positive integer, got True", setup=[spec_with(vocab_size=True)]),
    Row("run-spec-lr-string", RUN, "optimizer lr must be a positive finite number", setup=[spec_with(optimizer={"name": "sgd", "lr": "fast"})]),
    # -- case run: arrays of the wrong kind
    Row("run-missing-member", RUN, "missing array uniforms", setup=[rewrite("c.npz", "bad.npz", drop=("uniforms",))]),
    Row("run-missing-param", RUN, "missing array param/out.b", setup=[rewrite("c.npz", "bad.npz", drop=("param/out.b",))]),
    Row("run-tokens-float", RUN, "array tokens has dtype float64; it must hold integers",
        setup=[rewrite("c.npz", "bad.npz", tokens=np.full((3, 7), 1.5))]),
    Row("run-tokens-text", RUN, "array tokens has dtype <U1", setup=[rewrite("c.npz", "bad.npz", tokens=np.full((3, 7), "a"))]),
    Row("run-params-complex", RUN, "has dtype complex128", setup=[rewrite("c.npz", "bad.npz", param_out_b=np.zeros(11, complex))]),
    Row("run-params-nan", RUN, "array param/out.b holds NaN or infinity", setup=[rewrite("c.npz", "bad.npz", param_out_b=np.full(11, np.nan))]),
    Row("run-param-shape", RUN, "parameter out.b has shape (12,), expected (11,)", setup=[rewrite("c.npz", "bad.npz", param_out_b=np.zeros(12))]),
    Row("run-tokens-1d", RUN, "tokens/targets must both be (B, T)", setup=[rewrite("c.npz", "bad.npz", tokens=np.zeros(21, np.int64))]),
    Row("run-tokens-empty", RUN, "tokens must hold at least one window",
        setup=[rewrite("c.npz", "bad.npz", tokens=np.zeros((3, 0), np.int64), targets=np.zeros((3, 0), np.int64))]),
    Row("run-state-shape", RUN, "h0/c0 must be (1, 3, 5)", setup=[rewrite("c.npz", "bad.npz", h0=np.zeros((1, 3, 6)))]),
    Row("run-token-range", RUN, "token ids must lie in [0, 11)", setup=[rewrite("c.npz", "bad.npz", prefix=np.array([11]))]),
    Row("run-uniforms-range", RUN, "uniforms must lie in [0, 1)", setup=[rewrite("c.npz", "bad.npz", uniforms=np.full(20, 1.5))]),
    # -- case run: options
    Row("run-unknown-backend", ["case", "run", "c.npz", "--backend", "nope", "--out", "x.npz"], "unknown backend 'nope'"),
    Row("run-out-exists", ["case", "run", "c.npz", "--backend", "numpy", "--out", "c.npz"], "--out c.npz exists"),
    Row("run-out-dangling-symlink", ["case", "run", "c.npz", "--backend", "numpy", "--out", "link.npz"], "--out link.npz exists",
        setup=[lambda d: (d / "link.npz").symlink_to(d / "nowhere.npz")]),
    Row("run-out-under-a-file", ["case", "run", "c.npz", "--backend", "numpy", "--out", "c.npz/x.npz"], "c.npz is not a folder"),
    Row("run-out-missing-folder", ["case", "run", "c.npz", "--backend", "numpy", "--out", "nodir/x.npz"], "the folder nodir does not exist"),
    Row("run-out-read-only-folder", ["case", "run", "c.npz", "--backend", "numpy", "--out", "ro/x.npz"], "the folder ro is not writable",
        setup=[mkdir("ro", 0o555)], root_skips=True),
    Row("run-out-disk-full", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz"],
        "x.npz: No space left on device (nothing was written)", env={"LSTMBENCH_TEST_ENOSPC": "x.npz"}),
    Row("run-threads-0", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--threads", "0"], "--threads must be between 1 and 1024"),
    Row("run-threads-1e6", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--threads", "1000000"],
        "--threads must be between 1 and 1024, got 1000000"),
    Row("run-timeout-nan", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--timeout", "nan"], "--timeout must be a positive number"),
    Row("run-timeout-negative", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--timeout", "-1"], "--timeout must be a positive number"),
    Row("run-timeout-expires", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--timeout", "0.001"],
        "raise --timeout or choose smaller sizes; nothing was written"),
    Row("run-python-missing", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--python", "numpy=/no/python"],
        "no executable interpreter"),
    Row("run-worker-dies", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--python", "numpy=/bin/true"],
        "backend numpy failed ("),
    Row("run-device-gpu-on-numpy", ["case", "run", "c.npz", "--backend", "numpy", "--out", "x.npz", "--device", "gpu"], "backend numpy"),
    # -- case diff
    Row("diff-missing", ["case", "diff", "nope.npz", "o.npz"], "nope.npz: no such file"),
    Row("diff-input-case", ["case", "diff", "c.npz", "c.npz"], "holds no outputs"),
    Row("diff-meta-not-json", DIFF, "its meta record is not one JSON string", setup=[outputs_with("{not json")]),
    Row("diff-meta-not-object", DIFF, "its meta record must be a JSON object, got list", setup=[outputs_with("[1, 2]")]),
    Row("diff-meta-numbers", DIFF, "its meta record is not one JSON string", setup=[outputs_with(np.arange(3))]),
    Row("diff-meta-nested", DIFF, "nested too deeply", setup=[outputs_with("[" * 10000 + "]" * 10000)]),
    Row("diff-meta-backend-type", DIFF, "meta field 'backend' must be a JSON string, got ['numpy']",
        setup=[outputs_with(json.dumps({"backend": ["numpy"]}))]),
    Row("diff-meta-case-type", DIFF, "meta field 'case' must be a JSON string, got 5", setup=[outputs_with(json.dumps({"case": 5}))]),
    Row("diff-meta-precision-unknown", DIFF, "precision 'float16', which has no tolerance row",
        setup=[outputs_with(json.dumps({"precision": "float16"}))]),
    Row("diff-output-text", DIFF, "output logits has dtype <U1", setup=[outputs_with(logits=lambda x: np.full(x.shape, "a"))]),
    Row("diff-case-given-missing", ["case", "diff", "o.npz", "o.npz", "--case", "nope.npz"], "nope.npz: no such file"),
    Row("diff-compared-nothing", ["case", "diff", "o.npz", "bad.npz"], "compared nothing", status=1, setup=[only_unknown]),
    Row("diff-nan-in-output", DIFF, "NaN or inf in the output", status=1, setup=[outputs_with(logits=nan_first)]),
    Row("diff-nan-in-both", ["case", "diff", "bad.npz", "bad.npz"], "NaN or inf in the output and the expected",
        status=1, setup=[outputs_with(loss=nan_first)]),
    Row("diff-nan-in-expected", ["case", "diff", "o.npz", "bad.npz"], "NaN or inf in the expected", status=1,
        setup=[outputs_with(grad_out_b=nan_first)]),
    Row("diff-nan-in-uncompared", ["case", "diff", "bad.npz", "exp.npz"], "NaN or inf in the output (not in the expected file)",
        status=1, setup=[outputs_with(h=nan_first), rewrite("o.npz", "exp.npz", drop=("h",))]),
    Row("diff-shape-mismatch", DIFF, "shape (3, 7, 12), expected (3, 7, 11)", status=1,
        setup=[outputs_with(logits=lambda x: np.zeros(x.shape[:-1] + (12,)))]),
    Row("diff-generated-shape", DIFF, "shape (19,), expected (20,)", status=1, setup=[outputs_with(generated=lambda x: x[1:])]),
    Row("diff-missing-output", DIFF, "missing", status=1, setup=[outputs_with(drop=("logits",))]),
    # -- check
    Row("check-unknown-backend", ["check", "--backends", "numpy,nope"], "unknown backend 'nope'"),
    Row("check-no-backends", ["check", "--backends", ","], "names no backend"),
    Row("check-threads-0", ["check", "--backends", "numpy", "--threads", "0"], "--threads must be between 1 and 1024"),
    Row("check-jobs-0", ["check", "--backends", "numpy", "--jobs", "0"], "--jobs must be an integer >= 1"),
    Row("check-json-exists", ["check", "--backends", "numpy", "--json", "c.npz"], "--json c.npz exists"),
    Row("check-json-dev-full", ["check", "--backends", "numpy", "--json", "/dev/full"], "--json /dev/full exists"),
    Row("check-json-missing-folder", ["check", "--backends", "numpy", "--json", "nodir/c.json"], "the folder nodir does not exist"),
    Row("check-json-read-only", ["check", "--backends", "numpy", "--json", "ro/c.json"], "the folder ro is not writable",
        setup=[mkdir("ro", 0o555)], root_skips=True),
    Row("check-json-disk-full", ["check", "--backends", "numpy", "--json", "c.json"],
        "cannot write --json c.json: No space left on device", env={"LSTMBENCH_TEST_ENOSPC": "c.json"}),
    # -- check and run: a device or precision this machine cannot give, refused before any worker
    Row("check-tf32-on-cpu", ["check", "--backends", "torch", "--precision", "tf32"],
        "--precision tf32 exists only on a GPU: add --device gpu"),
    Row("check-gpu-without-one", ["check", "--backends", "torch", "--device", "gpu"],
        "--device gpu: this machine has no GPU", env={"LSTMBENCH_GPU": "0"}),
    Row("check-tf32-gpu-without-one", ["check", "--device", "gpu", "--precision", "tf32"],
        "--device gpu: this machine has no GPU", env={"LSTMBENCH_GPU": "0"}),
    Row("check-gpu-cpu-only-backend", ["check", "--backends", "numpy-f32", "--device", "gpu"],
        "backend numpy-f32 does not run on gpu", env={"LSTMBENCH_GPU": "1"}),
    Row("run-gpu-without-one", ["run", "--matrix", "smoke", "--device", "gpu", "--out", "res"],
        "--device gpu: this machine has no GPU", env={"LSTMBENCH_GPU": "0"}),
    Row("run-tf32-on-cpu", ["run", "--matrix", "smoke", "--precision", "tf32", "--out", "res"],
        "--precision tf32 exists only on a GPU: add --device gpu"),
]


def snapshot(d: Path) -> dict[str, bytes | None]:
    """Every name in d with a regular file's bytes (FIFOs and links are not opened)."""
    return {p.name: p.read_bytes() if p.is_file() and not p.is_symlink() else None
            for p in d.iterdir()}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, base: Path, tmp_path: Path) -> None:
    if row.root_skips and os.geteuid() == 0:
        pytest.skip("permissions do not bind root")
    if row.env.get("LSTMBENCH_TEST_ENOSPC") and not Path("/proc/self/fd").is_dir():
        pytest.skip("the disk-full fault needs /proc/self/fd")
    d = tmp_path / "w"
    d.mkdir()
    for f in ("c.npz", "o.npz"):
        shutil.copy(base / f, d / f)
    for build in row.setup:
        build(d)
    before = snapshot(d)
    r = lstmbench(*row.args, cwd=d, env=row.env)
    assert r.returncode == row.status, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    if row.status == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lstmbench: error: "), r.stderr
        assert row.expect in lines[0], lines
    else:
        assert row.expect in r.stdout, r.stdout
        assert "FAIL" in r.stdout
    assert snapshot(d) == before  # nothing written (no --out, no temporary file), nothing lost


def test_argparse_errors_keep_usage_and_exit_2(tmp_path: Path) -> None:
    """argparse's own refusals (a non-integer) also exit 2 without a traceback."""
    r = lstmbench("case", "make", "--preset", "tiny", "--seed", "x", "--out", "x.npz", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("lstmbench case make: error: argument --seed")
    assert not (tmp_path / "x.npz").exists()


def test_bounds_are_the_documented_figures() -> None:
    """The work bound refuses 10^12 steps of the tiny preset and admits the largest preset's
    default case; the memory bound is a fraction of this machine's memory."""
    from impls.case import check_bounds, run_flop
    from impls.config import CaseSpec, GenerateConfig, get_preset
    p = get_preset("tutorial")
    spec = CaseSpec(p.model, p.train, 3, GenerateConfig())
    assert run_flop(spec, p.batch_size, p.seq_len) < MAX_FLOP
    t = get_preset("tiny")
    big = CaseSpec(t.model, t.train, 10**12, GenerateConfig())
    with pytest.raises(Exception, match=r"1\.95e\+16 FLOP"):
        check_bounds(big, t.batch_size, t.seq_len)
    assert 0 < memory_bound() < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_check_table_shows_nan_and_nothing_compared() -> None:
    """check's table: a NaN error is the worst (max() would hide it), and a quantity no case
    compared reads "none", never "ok"."""
    from harness.results.schema import check_worst
    rows = [{"quantity": "loss", "rel": float("nan"), "status": "FAIL"},
            {"quantity": "loss", "rel": 1e-7, "status": "ok"}]
    worst, status = check_worst({"cases": {"a": rows}}, "loss")
    assert worst != worst and status == "FAIL"
    worst, status = check_worst({"cases": {"a": rows}}, "grads")
    assert status == "none"


@pytest.mark.parametrize("exc", [
    MemoryError("Unable to allocate 29.1 TiB for an array"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 31997000000000 bytes"),
], ids=["numpy", "torch-cpu"])
def test_case_run_records_an_allocation_failure_as_out_of_memory(exc, base, tmp_path, monkeypatch, capsys):
    """A backend that cannot allocate (NumPy's MemoryError, torch's CPU allocator) is reported
    as out of memory (harness.engine.failures.classify), in one line, and nothing is written."""
    import harness.engine.worker
    from harness.cli import main

    def fail(req: dict) -> dict:
        raise exc
    monkeypatch.setattr(harness.engine.worker, "op_case", fail)
    shutil.copy(base / "c.npz", tmp_path / "c.npz")
    status = main(["case", "run", str(tmp_path / "c.npz"), "--backend", "numpy",
                   "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("lstmbench: error: backend numpy ran out of memory (") and "nothing was written" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_hardened_loader_reads_what_numpy_writes(tmp_path: Path) -> None:
    """The checked .npz reader returns what np.load does for every layout a writer may use:
    Fortran order, 0-d, empty, text and bytes."""
    from impls.case import _load_npz
    arrays_in = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "u": np.array("héllo"),
                 "e": np.zeros((0, 3)), "d": np.array(5), "s": np.array([b"xy"]),
                 "i": np.arange(6, dtype=np.int32).reshape(2, 3)}
    np.savez(tmp_path / "a.npz", **arrays_in)
    np.savez_compressed(tmp_path / "b.npz", **arrays_in)
    for name in ("a.npz", "b.npz"):
        got = _load_npz(tmp_path / name)
        assert sorted(got) == sorted(arrays_in)
        for k, v in arrays_in.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k
