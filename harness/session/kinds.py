"""The kinds of run `lstmbench run --resume JOURNAL` continues, by the schema its journal's header
names: a benchmark matrix (`run`, `ab`: lstmbench.results), a quality matrix (lstmbench.quality)
and `baselines` (lstmbench.baselines). Each entry is the function, "module:name", that continues
one, given the command's arguments and the journal (read once: harness.session.session.Resume);
it is imported only when its kind is resumed. A new run-like command is its module, which runs
through a RunSession (harness.session.session), and its entry here."""
from __future__ import annotations

import argparse
import importlib

from ..errors import UsageError
from .session import Resume

RUN_KINDS: dict[str, str] = {
    "lstmbench.results": "harness.commands.run:resume_benchmark",
    "lstmbench.quality": "harness.commands.quality:resume_quality",
    "lstmbench.baselines": "harness.commands.baselines:resume_baselines",
}


def continue_run(a: argparse.Namespace, r: Resume) -> int:
    """Continue the interrupted run whose journal `r` is, as its kind does."""
    entry = RUN_KINDS.get(str(r.header.get("schema")))
    if entry is None:
        raise UsageError(f"--resume {a.resume}: {r.journal} has no results header; it is not a run's journal")
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)(a, r)
