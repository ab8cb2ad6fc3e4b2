"""The results of one or many runs as a tidy pandas DataFrame, one row per cell, read through
the one model of a run (harness.results.model)."""
from __future__ import annotations

import math
import os
from typing import Any, Iterable

from .model import Run, RunCell, read_runs
from .schema import is_number


def _f(v: Any) -> float | None:
    """A finite number, or None (a row never carries a string or an infinity)."""
    return float(v) if is_number(v) and math.isfinite(v) else None


def cell_rows(run: Run, cells: list[RunCell]) -> list[dict[str, Any]]:
    """One flat dict per cell: sizes, status, the estimate and its interval, stats and derived
    numbers (no raw samples). chars_per_s follows estimate_s (v2's headline) where present."""
    rows = []
    nodes = {}  # workload id -> the cluster node that measured it (--cluster runs)
    for w in run.doc.get("workloads") or []:
        node = w.get("node") if isinstance(w, dict) else None
        if isinstance(node, dict) and isinstance(node.get("node"), str):
            nodes[w.get("id")] = node["node"]
    for rc in cells:
        cell, res = rc.record, rc.result
        m = cell.get("model") or {}
        stats = res.get("stats") if isinstance(res.get("stats"), dict) else {}
        ci = res.get("ci_s") if isinstance(res.get("ci_s"), list) and len(res["ci_s"]) == 2 else [None, None]
        est = _f(res.get("estimate_s"))
        cps = _f(res.get("chars_per_s"))
        B, T = cell.get("batch"), cell.get("seq_len")
        if est and est > 0 and is_number(B) and is_number(T) and cell.get("mode") != "generate":
            cps = B * T / est
        rows.append({
            "file": run.doc.get("_path"), "run": run.doc.get("created"), "machine": run.machine,
            "node": nodes.get(rc.workload),
            "device": cell.get("device"), "precision": cell.get("precision"), "backend": cell.get("backend"),
            "mode": cell.get("mode"), "preset": cell.get("preset"), "batch": B, "seq_len": T,
            "hidden_size": m.get("hidden_size"), "num_layers": m.get("num_layers"),
            "vocab_size": m.get("vocab_size"), "input": m.get("input"),
            "workload": rc.workload, "variant": rc.variant, "threads": rc.threads,
            "status": res.get("status"), "error": res.get("error"),
            "chars_per_s": cps, "us_per_char": _f(res.get("us_per_char")),
            "estimate_s": est, "ci_lo_s": _f(ci[0]), "ci_hi_s": _f(ci[1]),
            "clean_rounds": res.get("clean_rounds") if is_number(res.get("clean_rounds")) else None,
            "noisy": rc.noisy,
            "median_s": _f(stats.get("median")), "iqr_s": _f(stats.get("iqr")), "min_s": _f(stats.get("min")),
            "mean_s": _f(stats.get("mean")), "stddev_s": _f(stats.get("stddev")), "rounds": stats.get("rounds"),
            "first_step_s": _f(res.get("first_step_s")), "gflops": _f(res.get("gflops")),
            "efficiency": _f(res.get("efficiency")), "efficiency_flag": res.get("efficiency_flag"),
            "peak_rss_bytes": res.get("peak_rss_bytes"), "peak_device_bytes": res.get("peak_device_bytes"),
            "kernel": res.get("kernel"), "schema_version": run.doc.get("schema_version"),
        })
    return rows


def load_dataframe(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> Any:
    """A tidy pandas DataFrame of every cell in the given result files or folders (one path,
    or several)."""
    import pandas as pd
    rows: list[dict[str, Any]] = []
    for run, cells in read_runs(paths, strict=False):  # a row needs the stored record, not a Cell
        rows.extend(cell_rows(run, cells))
    return pd.DataFrame(rows)
