"""`lstmbench run --matrix quality|quality-adam|quality-tiny` and `run --resume` of a quality
run's journal: every backend trained the same way, to a target validation loss
(harness.training.quality), in lanes side by side."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from impls import registry

from ..envs.interpreters import parse_python_overrides
from ..errors import UsageError
from ..session.session import Resume
from ..training.quality import MATRICES, QUALITY_THREADS, read_resume, run_quality
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


def _names(text: str) -> list[str]:
    """--backends: known names, each once (a repeat would train and record it twice)."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for n in names:
        registry.get_spec(n)
    return names


def resume_quality(a: Any, resume: Resume) -> int:
    """`run --resume` of a quality run's journal (harness.session.kinds)."""
    return cmd_quality(a, resume)


def cmd_quality(a: Any, resume: Resume | None = None) -> int:
    """`lstmbench run --matrix quality|quality-adam|quality-tiny [--backends ...] [--threads N]
    [--jobs N] [--out DIR]`, or `run [--matrix M] --resume JOURNAL` to finish an interrupted one
    (`resume`: its journal, read once)."""
    if getattr(a, "variant", None):
        raise UsageError("--variant applies to the benchmark matrices; a quality matrix trains "
                         "each backend once")
    jobs = parse_jobs(getattr(a, "jobs", None))
    if getattr(a, "device", "cpu") != "cpu" or getattr(a, "precision", "float32") != "float32":
        raise UsageError("the quality matrix runs on the CPU in float32 only; drop --device/--precision")
    if resume is None and getattr(a, "resume", None):
        resume = Resume.read(a.resume)
    resumed = read_resume(resume) if resume is not None else None
    if resumed is not None:  # the interrupted run's settings, from its journal's header
        cfg, backends, threads = resumed.cfg, resumed.backends, resumed.threads
        if a.matrix is not None and a.matrix != cfg.name:
            raise UsageError(f"--resume: the journal's matrix is {cfg.name!r}, not {a.matrix!r}; "
                             "leave --matrix out to continue it")
        if a.backends and _names(a.backends) != backends:
            raise UsageError(f"--resume: the journal's backends are {','.join(backends)}; "
                             "leave --backends out to continue it")
        if a.threads is not None and a.threads != threads:
            raise UsageError(f"--resume: the journal's run trained with --threads {threads}; "
                             "leave --threads out to continue it")
    else:
        if a.matrix not in MATRICES:
            raise UsageError(f"unknown quality matrix {a.matrix!r}; choose from {', '.join(MATRICES)}")
        cfg = MATRICES[a.matrix]
        threads = threads_for(a.threads, QUALITY_THREADS)  # the quality matrices' threads: 1
        backends = _names(a.backends) if a.backends else registry.timed()
        if not backends:
            raise UsageError(f"--backends {a.backends!r} names no backend; give a comma list, e.g. torch,jax")
    lanes = _lanes(a, resumed, threads)
    run_quality(cfg, backends, Path(a.out), threads=threads, jobs=jobs,
                overrides=parse_python_overrides(getattr(a, "python", None)),
                command=["lstmbench", *sys.argv[1:]], resume=resumed, lanes=lanes)
    return 0


def _lanes(a: Any, resumed: Any, threads: int | None) -> Any:
    """The cluster's lanes where the run trains on one (--cluster, or the resumed run's), else None."""
    address, on = getattr(a, "cluster", None), getattr(a, "on", None)
    if on and not address:
        raise UsageError("--on KIND chooses machine kinds of a cluster: give --cluster ADDRESS too")
    header = resumed.resume.header if resumed is not None else {}
    if isinstance(header.get("cluster"), dict):  # it goes on where it ran
        address = address or header["cluster"].get("address")
        on = on or ",".join(header["cluster"].get("kinds") or []) or None
    if not address:
        return None
    from ..cluster.tasks import lanes_on  # Ray only here, and only with --cluster
    return lanes_on(address, on, "cpu", threads, print, one_kind="a quality run keeps its wall times")
