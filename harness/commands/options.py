"""Options several commands share: how they are declared, and how they are checked (each bad
value a UsageError naming the option and the fix, before any work starts). One convention
each, whatever the verb:

- `--threads N`: the threads of every framework's pools, alike for every backend (and the
  probe); default: the matrix's where the verb runs one (1 for smoke and the quality
  matrices), else the machine's cores.
- `--json [PATH]`: the verb's machine-readable document, written to PATH atomically and never
  over an existing file (a missing folder, an existing file or a folder is refused before any
  work); `-` (or no PATH) writes it on stdout instead, and the verb's text goes to stderr.
- `--out`: where the verb's output goes. A folder where the harness names the files or writes
  several (run, ab and baselines: results go into FOLDER/<machine>/<time>-<matrix>-<device>.json,
  default results/, a clash taking a numbered name; report; train), a file where the verb
  writes one file you name (case make, case run); never over a file of yours either way."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from impls import registry
from impls.case import CaseError, check_new_path
from impls.files import write_atomic

from ..errors import UsageError
from ..results.store import check_writable

DEFAULT_THREADS = os.cpu_count() or 1
BENCH_BACKENDS = registry.timed()  # the oracle is not timed
STDOUT = "-"  # --json -: the document on stdout
Log = Callable[[str], None]


def add_threads(p: argparse.ArgumentParser, *, matrix: bool = False) -> None:
    """--threads, with the one meaning and default rule (module docstring). With `matrix`, the
    default is left to the matrix (None here; resolve it with threads_for)."""
    rule = ("the matrix's (1 for smoke and the quality matrices), else the cores" if matrix
            else "the cores")
    p.add_argument("--threads", type=int, default=None if matrix else DEFAULT_THREADS, metavar="N",
                   help=f"threads of every framework's pools, alike for every backend (default: "
                        f"{rule}, {DEFAULT_THREADS} here)")


def threads_for(given: int | None, matrix_threads: int | None = None) -> int:
    """--threads as given (checked), else the matrix's, else the cores: the one default rule."""
    positive_threads(given)
    return given or matrix_threads or DEFAULT_THREADS


def add_python(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python", action="append", metavar="BACKEND=INTERPRETER",
                   help="run BACKEND with this interpreter (repeatable)")


def backend_list(text: str | None, default: list[str]) -> list[str]:
    """--backends: a comma list of known backends (BackendError names the unknown one)."""
    if not text:
        return list(default)
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        registry.get_spec(n)
    return names


def positive_threads(threads: int | None) -> None:
    if threads is not None and not 1 <= threads <= 1024:  # a million threads would crash a framework
        raise UsageError(f"--threads must be between 1 and 1024, got {threads}")


def percent(text: str) -> float:
    """--threshold: a percentage like 5% (or a fraction), from 0% to 1000%."""
    try:
        v = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"--threshold takes a percentage like 5%, got {text!r}") from None
    if not 0 <= v < 10:
        raise UsageError(f"--threshold must be between 0% and 1000%, got {text!r}")
    return v


def add_cluster_options(p: argparse.ArgumentParser, what: str) -> None:
    """--cluster and --on (run, check, quality): where on a Ray cluster the work goes."""
    p.add_argument("--cluster", metavar="ADDRESS",
                   help=f"run {what} on a Ray cluster: its head's HOST:PORT, or auto (needs "
                        "pip install 'lstmbench[cluster]'; README, \"Running on a Ray cluster\")")
    p.add_argument("--on", metavar="KIND[,KIND]",
                   help="with --cluster: the machine kinds (node label lstmbench/kind) that take the work "
                        "(default: every kind, one results file each)")


# ---- --out ------------------------------------------------------------------------------------

def out_folder(text: str) -> Path:
    """--out of a verb whose results files the harness names (run, ab, baselines): a folder,
    checked writable before any work; a file's name (an existing file, x.json) is refused."""
    p = Path(text)
    if (p.exists() and not p.is_dir()) or (not p.exists() and p.suffix == ".json"):
        raise UsageError(f"--out {text}: give a folder (results go into FOLDER/<machine>/"
                         "<time>-<matrix>-<device>.json, never over a file), not a file's name")
    check_writable(p)
    return p


# ---- --json [PATH] ----------------------------------------------------------------------------

def add_json(p: argparse.ArgumentParser, what: str) -> None:
    """--json [PATH] (module docstring): `what` the document holds."""
    p.add_argument("--json", metavar="PATH", nargs="?", const=STDOUT,
                   help=f"write {what} as JSON to PATH (atomically, never over an existing file); "
                        "- or no PATH: on stdout, the text then on stderr")


def json_target(text: str | None) -> str | Path | None:
    """--json's target, checked before any work: None (not asked), STDOUT, or a new file's path."""
    if text is None or text == STDOUT:
        return text
    check_new_path(text, "--json")
    return Path(text)


def text_log(target: str | Path | None) -> Log:
    """Where a verb's text goes: stdout, or stderr when its --json document takes stdout."""
    if target == STDOUT:
        return lambda s: print(s, file=sys.stderr, flush=True)
    return print


def write_json(target: str | Path | None, doc: Any, log: Log = print) -> Path | None:
    """The --json document to its target (json_target); the file written, None for stdout or
    when none was asked. A file that cannot be written is one line naming the cause."""
    if target is None:
        return None
    data = json.dumps(doc, indent=1)
    if target == STDOUT:
        sys.stdout.write(data + "\n")
        sys.stdout.flush()
        return None
    try:
        path = write_atomic(Path(target), data.encode(), mkdir=False)
    except FileExistsError:
        raise
    except OSError as e:
        raise CaseError(f"cannot write --json {target}: {e.strerror or e} (nothing was written; what "
                        "is printed above is complete); free space or choose another folder") from None
    log(f"wrote {path}")
    return path
