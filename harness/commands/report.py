"""`lstmbench report RESULTS... --out DIR`: the Markdown and HTML report with plots
(harness.report.page), of benchmark results, quality results, and a `check --json` report."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..report.page import write_report


def cmd_report(a: argparse.Namespace) -> int:
    write_report(a.results, Path(a.out), check_json=Path(a.check) if a.check else None)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="Markdown + HTML report with plots")
    p.add_argument("results", nargs="+", help="results files or folders")
    p.add_argument("--out", required=True, help="folder for report.md, report.html, plots")
    p.add_argument("--check", help="JSON from `lstmbench check --json` for the equivalence table")
    p.set_defaults(fn=cmd_report)
