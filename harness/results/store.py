"""Where results files go and how they are written: a new document's common fields (when, the
machine, the code), its path (out/<machine>/<time>-<matrix>-<device>.json), written atomically
and never over an existing file; a folder searched for results files."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from impls.files import write_atomic

from ..envs.host import git_info, machine_info
from ..errors import UsageError
from .schema import SCHEMA, SCHEMA_VERSION, ResultsError


def new_document(**fields: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": now.isoformat(timespec="seconds"), "machine": machine_info(),
            "git": git_info(), **fields}


def safe_name(text: Any, fallback: str = "run") -> str:
    """`text` as one harmless path component: no separators, no "..", no leading dot."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(text)).strip(".-")
    return name[:80] or fallback


def default_path(out_dir: Path, doc: dict[str, Any]) -> Path:
    """out_dir/<machine slug>/<time>-<matrix>-<device>.json; every part sanitised, so a matrix
    named "../../x" stays inside out_dir."""
    stamp = str(doc["created"]).replace(":", "").replace("-", "").replace("+0000", "Z")
    matrix = doc.get("matrix")
    mname = matrix.get("name") if isinstance(matrix, dict) else matrix
    name = f"{safe_name(stamp, 'now')}-{safe_name(mname, 'matrix')}-{safe_name(doc.get('device'), 'cpu')}.json"
    machine = doc.get("machine")
    slug = safe_name(machine.get("slug") if isinstance(machine, dict) else None, "machine")
    path = Path(out_dir) / slug / name
    if Path(os.path.abspath(path)).parent.parent != Path(os.path.abspath(out_dir)):  # belt and braces
        raise ResultsError(f"results path {path} would fall outside {out_dir}")
    return path


def write_results(doc: dict[str, Any], path: Path) -> Path:
    """Atomic, and never over an existing file: a clash gets a numbered sibling name
    (impls.files.write_atomic)."""
    return write_atomic(path, json.dumps(doc, indent=1, sort_keys=False).encode(), number=True)


def check_writable(out_dir: Path) -> None:
    """Fail early, before any measurement, when results could not be stored."""
    p = out_dir
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: cannot write there ({p} is not a writable folder); "
                         "choose another folder")


def is_results_file(p: Path) -> bool:
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return True  # let load_results report what is wrong with it
    # other lstmbench documents (a quality run has backends, no cells) are passed over too
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA and "cells" in doc


def _regular(q: Path) -> bool:
    """Whether a folder's entry `q` is a regular file (through links); one that is neither
    that nor a folder (a FIFO, which would block the read, a socket, a device, a broken link)
    is passed over with a note on stderr."""
    if q.is_file():
        return True
    if not q.is_dir():
        print(f"note: {q}: not a regular file (a FIFO, socket, device or broken link); passed over",
              file=sys.stderr)
    return False


def expand_paths(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders searched recursively for results files (other JSON in a
    folder, such as a `check --json` report, is passed over, and so is whatever is not a
    regular file). One path alone is one path, not its characters."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.json")
                           if not q.name.startswith(".") and _regular(q) and is_results_file(q))
            if not found:
                raise ResultsError(f"{p}: folder holds no results files")
            out.extend(found)
        else:
            out.append(p)
    return out
