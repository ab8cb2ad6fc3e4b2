"""`lstmbench compare OLD NEW`: which cells got slower or faster between two runs, and which
the noise of the machine leaves undecided; `compare RESULTS --variants BASE,NEW` is
harness.commands.ab's.

Cells are paired by what they measure (Cell.key(): backend, mode, sizes, optimiser, batch,
sequence length, device, dtype, precision; the run's thread count; the variant), never by seed
or machine; several files of one cell on a side are pooled (harness.results.model.Side). Each
pair is judged by harness.judge.crossrun, whose docstring says how each side's figure and the
interval of their ratio are made and what the marks (`slower`, `faster`, `unchanged`,
`inconclusive`) require; `incomparable`: the cell's sizes, device or threads changed, or it is
on one side only; `failed`: a side did not measure. This command loads the sides, has them
judged (crossrun.compare_sides), prints the judgement (harness.report.console) and writes it
(crossrun.to_json).

--normalize divides each round's time by the probe time of the same round, so that runs on
machines of different speed (or one machine at different moments) can be compared; the
headline is then the median of those quotients (their minimum would select the rounds whose
probe happened to run slow)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import UsageError
from ..judge.crossrun import common_estimator, compare_sides, to_json
from ..report.console import comparison_lines, sides_lines
from ..results.model import PathLike, load_side
from ..results.schema import ResultsError
from .ab import run_compare_variants
from .options import add_json, json_target, percent, text_log, write_json


def run_compare(old: PathLike | Iterable[PathLike], new: PathLike | Iterable[PathLike], *,
                threshold: float, fail_on_regression: bool, normalize: bool = False,
                json_path: str | Path | None = None, log: Callable[[str], None] = print) -> int:
    """Print the comparison (and write --json). Returns 1 under fail_on_regression when a cell
    is slower, a new cell failed or is noisy where the old one was ok, or no new cell was
    measured; 2 when NaN samples made cells invalid (and no regression decided it); else 0."""
    a, b = load_side(old), load_side(new)
    for line in sides_lines(a, b, common_estimator(a, b)):
        log(line)
    cmp = compare_sides(a, b, threshold=threshold, normalize=normalize)
    for line in comparison_lines(cmp):
        log(line)
    write_json(json_path, to_json(cmp), log)
    regress = cmp.regressions
    if fail_on_regression and regress:
        log(f"regression: {'; '.join(regress[:5])}" + (f" and {len(regress) - 5} more" if len(regress) > 5 else ""))
        return 1
    if cmp.nan_cells:
        raise ResultsError(f"{len(cmp.nan_cells)} cell(s) hold NaN samples ({cmp.nan_cells[0]}): invalid "
                           "measurements; re-run them")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    target = json_target(a.json)  # before anything is read
    log = text_log(target)
    if a.variants is not None or a.new is None:  # one run, two of its variants
        if a.new is not None:
            raise UsageError("--variants compares two variants of ONE run: give one results file "
                             "(compare OLD NEW compares two runs)")
        if a.normalize:
            raise UsageError("--normalize is for two runs on different machines; an in-run "
                             "comparison pairs rounds of one run")
        return run_compare_variants(a.old, a.variants, threshold=percent(a.threshold),
                                    fail_on_regression=a.fail_on_regression, json_path=target, log=log)
    return run_compare(a.old, a.new, threshold=percent(a.threshold),
                       fail_on_regression=a.fail_on_regression, normalize=a.normalize,
                       json_path=target, log=log)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare two runs (files or folders), or two variants of one run")
    p.add_argument("old", metavar="OLD|RESULTS", help="the old run (files or folders), or with "
                   "--variants the one run whose variants are compared")
    p.add_argument("new", nargs="?", metavar="NEW", help="the new run (files or folders)")
    p.add_argument("--variants", metavar="BASE,NEW",
                   help="judge variant NEW against BASE from their paired rounds in RESULTS "
                        "(a run with --variant; default: its two variants)")
    p.add_argument("--threshold", default="10%", help="smallest change that counts (default 10%%, asv's default factor 1.1)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 on a significant slowdown beyond the threshold, a new cell "
                        "that failed or is noisy where the old one was ok, or no new cell measured")
    p.add_argument("--normalize", action="store_true",
                   help="divide each round's time by the same round's noise-probe time "
                        "(runs on machines of different speed)")
    add_json(p, "one entry per cell")
    p.set_defaults(fn=cmd_compare)
