"""Options several commands share: how they are declared, and how they are checked (each bad
value a UsageError naming the option and the fix, before any work starts)."""
from __future__ import annotations

import argparse
import os

from impls import registry

from ..errors import UsageError

DEFAULT_THREADS = os.cpu_count() or 1
BENCH_BACKENDS = [b for b in registry.BACKENDS if b != "numpy"]  # the oracle is not timed


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"threads for every framework alike (default {DEFAULT_THREADS}: the cores)")


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

