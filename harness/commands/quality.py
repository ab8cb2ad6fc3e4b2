"""`lstmbench run --matrix quality|quality-adam|quality-tiny` and `run --resume` of a quality
run's journal: every backend trained the same way, to a target validation loss
(harness.training.quality), in lanes side by side."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from impls import registry

from ..envs.interpreters import parse_python_overrides
from ..session.journal import locate
from ..errors import UsageError
from ..training.quality import MATRICES, QUALITY_THREADS, SCHEMA, QualityConfig, load_resume, run_quality
from .options import threads_for


def parse_jobs(text: str | None) -> int | None:
    """--jobs: an integer >= 1 (None: not given); one-line UsageError otherwise."""
    if text is None:
        return None
    try:
        n = int(str(text).strip())
    except ValueError:
        raise UsageError(f"--jobs must be an integer >= 1, got {text!r}") from None
    if n < 1:
        raise UsageError(f"--jobs must be an integer >= 1, got {n}")
    return n


def is_quality_journal(path: str | os.PathLike[str]) -> bool:
    """Whether `path` (a journal, or the target it is beside) belongs to a quality run, so
    that `run --resume` without --matrix reaches the right engine."""
    try:
        with open(locate(path), "rb") as f:
            first = f.readline()
        return json.loads(first).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def _names(text: str) -> list[str]:
    """--backends: known names, each once (a repeat would train and record it twice)."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for n in names:
        registry.get_spec(n)
    return names


def cmd_quality(a: Any) -> int:
    """`lstmbench run --matrix quality|quality-adam|quality-tiny [--backends ...] [--threads N]
    [--jobs N] [--out DIR]`, or `run [--matrix M] --resume JOURNAL` to finish an interrupted one."""
    jobs = parse_jobs(getattr(a, "jobs", None))
    if getattr(a, "device", "cpu") != "cpu" or getattr(a, "precision", "float32") != "float32":
        raise UsageError("the quality matrix runs on the CPU in float32 only; drop --device/--precision")
    resume = Path(a.resume) if getattr(a, "resume", None) else None
    header: dict[str, Any] = {}
    if resume is not None:  # the interrupted run's settings, from its journal's header
        _, _, header, _, _ = load_resume(resume)
        name, backends, threads = header["matrix"]["name"], list(header["requested_backends"]), header.get("threads")
        if a.matrix is not None and a.matrix != name:
            raise UsageError(f"--resume: the journal's matrix is {name!r}, not {a.matrix!r}; "
                             "leave --matrix out to continue it")
        if a.backends and _names(a.backends) != backends:
            raise UsageError(f"--resume: the journal's backends are {','.join(backends)}; "
                             "leave --backends out to continue it")
        if a.threads is not None and a.threads != threads:
            raise UsageError(f"--resume: the journal's run trained with --threads {threads}; "
                             "leave --threads out to continue it")
        cfg = QualityConfig(**header["matrix"])
    else:
        if a.matrix not in MATRICES:
            raise UsageError(f"unknown quality matrix {a.matrix!r}; choose from {', '.join(MATRICES)}")
        cfg = MATRICES[a.matrix]
        threads = threads_for(a.threads, QUALITY_THREADS)  # the quality matrices' threads: 1
        if a.backends:
            backends = _names(a.backends)
        else:
            backends = [b for b in registry.BACKENDS if b != "numpy"]  # the float64 oracle is slow
        if not backends:
            raise UsageError(f"--backends {a.backends!r} names no backend; give a comma list, e.g. torch,jax")
    lanes = None
    address, on = getattr(a, "cluster", None), getattr(a, "on", None)
    if on and not address:
        raise UsageError("--on KIND chooses machine kinds of a cluster: give --cluster ADDRESS too")
    if resume is not None and isinstance(header.get("cluster"), dict):  # it goes on where it ran
        address = address or header["cluster"].get("address")
        on = on or ",".join(header["cluster"].get("kinds") or []) or None
    if address:  # Ray only here, and only with --cluster
        from ..cluster.tasks import lanes_on
        lanes = lanes_on(address, on, "cpu", threads, print,
                         one_kind="a quality run keeps its wall times")
    run_quality(cfg, backends, Path(a.out), threads=threads, jobs=jobs,
                overrides=parse_python_overrides(getattr(a, "python", None)),
                command=["lstmbench", *sys.argv[1:]], resume=resume, lanes=lanes)
    return 0
