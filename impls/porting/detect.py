"""Which format a file is, from its bytes (the extension only where the bytes cannot say: ONNX
is a bare protobuf), before any framework is started: standard library and NumPy only, nothing
read beyond headers and zip directories. Every refusal is one line naming the fix."""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from ..files import file_head
from . import FORMATS, PortError

HDF5 = b"\x89HDF\r\n\x1a\n"


def is_safetensors(path: Path) -> bool:
    """8 bytes of header length, then a JSON object (the safetensors layout)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 2 <= n <= path.stat().st_size - 8


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def _npz_kind(path: Path, names: list[str]) -> str | None:
    keys = [n[:-4] for n in names if n.endswith(".npy")]
    if "format" in keys and any(k.startswith("param/") for k in keys):
        return "canonical"
    if any(k.endswith("/upward/W") for k in keys):
        return "chainer"
    if "spec" in keys and any(k.startswith("param/") for k in keys):
        raise PortError(f"{path}: a case file (lstmbench case make), not a model checkpoint; give "
                        "the checkpoint.npz that `lstmbench train` writes")
    if "meta" in keys:
        raise PortError(f"{path}: an outputs file (lstmbench case run), not a model")
    return None


def detect(path: str | Path) -> str:
    """The format of `path` (a file or an Orbax checkpoint folder); PortError otherwise."""
    path = Path(path)
    if not path.exists():
        raise PortError(f"{path}: no such file or folder")
    if path.is_dir():
        marks = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")
        if any((path / m).exists() for m in marks):
            return "flax"
        if (path / "checkpoint.npz").is_file():
            return "canonical"
        raise PortError(f"{path}: a folder that is not an Orbax checkpoint (no _CHECKPOINT_METADATA "
                        "or _METADATA in it); give the folder StandardCheckpointer.save wrote")
    head = file_head(path, PortError)
    name = path.name.lower()
    if head.startswith(b"PK"):
        names = _zip_names(path)
        if names is None:
            raise PortError(f"{path}: a zip archive that is truncated or corrupt (its directory does "
                            "not read); save it again")
        if "config.json" in names and "model.weights.h5" in names:
            return "keras"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        kind = _npz_kind(path, names)
        if kind:
            return kind
        raise PortError(f"{path}: a zip archive of no format lstmbench ports ({', '.join(names[:4])}"
                        f"{', ...' if len(names) > 4 else ''}); formats: {', '.join(FORMATS)}")
    if head.startswith(HDF5):
        if name.endswith(".weights.h5"):
            return "keras"
        raise PortError(f"{path}: an HDF5 file; lstmbench reads Keras 3 .weights.h5 (name it so, "
                        "with --like MODEL.keras) and .keras files")
    if is_safetensors(path):
        return "torch"
    if head.startswith(b"\x80") and name.endswith((".pt", ".pth", ".bin")):
        return "torch"  # torch.save's legacy (non-zip) serialisation
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".npz", ".npy")):
        raise PortError(f"{path}: not a NumPy archive (no zip header); it is truncated or corrupt")
    if name.endswith((".pt", ".pth", ".keras", ".safetensors")):
        raise PortError(f"{path}: its bytes are not a {path.suffix} file's; it is truncated or corrupt")
    raise PortError(f"{path}: unknown format (extension {path.suffix or 'none'}); give --from FORMAT "
                    f"({', '.join(FORMATS)})")


def target_format(path: str | Path, to: str) -> None:
    """Refuse a destination name the format cannot write (Keras needs .keras or .weights.h5)."""
    fmt = FORMATS[to]
    name = Path(path).name.lower()
    if "/" in fmt.suffixes:
        return  # a folder: any name
    if not name.endswith(fmt.suffixes):
        raise PortError(f"--out {path}: a {to} file is named *{' or *'.join(fmt.suffixes)}; "
                        f"choose such a name")


def read_vocab(path: str | Path) -> str:
    """--vocab FILE: a JSON list of one-character strings (as checkpoints store it), or a text
    file whose characters, in order, are the vocabulary (read as UTF-8, nothing stripped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PortError(f"--vocab {path}: cannot read it as UTF-8 text ({e})") from None
    try:
        items = json.loads(text)
    except ValueError:
        items = None
    if isinstance(items, list):
        if not all(isinstance(c, str) and len(c) == 1 for c in items):
            raise PortError(f"--vocab {path}: a JSON list, but not of single characters")
        text = "".join(items)
    if not text or len(set(text)) != len(text):
        raise PortError(f"--vocab {path}: the vocabulary must be non-empty and hold each character once")
    return text
