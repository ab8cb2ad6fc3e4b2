"""`lstmbench report`: a Markdown and a self-contained HTML report of one or more results files,
with plots (PNG files beside the reports, embedded as base64 in the HTML; report.plots):
throughput against batch size, throughput per preset and mode, efficiency against the run's
peak GEMM, generation latency, first-step time, peak memory; the tables (report.tables) of the
run's machine and software, its noise, each workload's ratios, the cells that failed; given
`lstmbench check --json` output, the equivalence table; given quality results, their sections
(report.quality). The report is assembled in a temporary folder and renamed into place."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from impls.files import dir_mode, write_atomic

from ..engine import explain
from ..engine.stats import CLEAN_FACTOR, MIN_CLEAN
from ..errors import UsageError
from ..results.model import Run, RunCell, read_runs
from .entries import Entry, entries
from .plots import figures
from .quality import sections as quality_sections, split_inputs
from .tables import (Table, backends_table, equivalence_table, failures_table, frontier_tables,
                     header_table, noise_table, kinds_tables, ratio_tables, results_tables)

MANIFEST = ".lstmbench-report.json"  # what a report wrote into its folder (name -> sha256)


CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2330;
 max-width:1180px;margin:24px auto;padding:0 24px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h3{font-size:16px;margin:24px 0 6px}h4{font-size:14px;margin:14px 0 4px}h2{font-size:18px;margin:30px 0 8px;padding-bottom:4px;
 border-bottom:1px solid #dde2ea}p.sub{color:#5b6578;margin:0 0 16px}p.note{color:#5b6578;font-size:13px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:12.5px;width:auto;max-width:100%}
th,td{border:1px solid #dde2ea;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f9;font-weight:600}tbody tr:nth-child(even){background:#fafbfd}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ok{color:#17733a}td.bad{color:#b42318;font-weight:600}td.warn{color:#a15c00}
table.kv td:first-child{font-weight:600;background:#f3f5f9;white-space:nowrap}
figure{margin:12px 0 20px}figure img{max-width:100%;height:auto;border:1px solid #eef0f4}
figcaption{color:#5b6578;font-size:13px;margin-top:4px}code{background:#f3f5f9;padding:1px 4px;border-radius:3px}
ul.notes{font-size:13px;color:#3d4556}
"""


RUNS_PER_TABLE = 3  # runs side by side in 'Machine and software': more would run off the page


def _when(doc: dict[str, Any]) -> tuple[int, Any]:
    """Sort key: when the run was made (its `created`), runs without a date last, by name."""
    try:
        return (0, dt.datetime.fromisoformat(str(doc["created"])).timestamp())
    except (KeyError, TypeError, ValueError):
        return (1, str(doc.get("_path", "")))


def _noisy_legend(docs: list[dict[str, Any]]) -> str:
    """The NOISY rule with the clean rounds the runs needed (harness.engine.explain)."""
    need = sorted({n for n in (explain.min_clean_of(d) for d in docs) if n is not None})
    rule = explain.noisy_rule(need[0] if len(need) == 1 else None)
    if len(need) > 1:
        rule = rule.replace(f"fewer than {MIN_CLEAN} ",
                            f"fewer than its run's min_clean ({', '.join(map(str, need))}) ", 1)
    return " " + rule.replace("NOISY: ", "noisy (NOISY in `run`): ", 1)


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("report needs matplotlib, which is not installed: "
                         "pip install 'lstmbench[report]'") from None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _previous_report(out_dir: Path) -> list[Path]:
    """The files in an existing --out that a previous report wrote (its manifest lists them
    with their hashes, and none changed since); a UsageError when it holds anything else."""
    present = sorted(out_dir.iterdir())
    if not present:
        return []
    mpath = out_dir / MANIFEST
    owned: dict[str, str] = {}
    if mpath.is_file():
        try:
            m = json.loads(mpath.read_text())
            owned = {str(k): str(v) for k, v in (m.get("files") or {}).items()}
        except (OSError, ValueError, AttributeError):
            owned = {}
    foreign = [p.name for p in present if p.name != MANIFEST and
               (p.is_symlink() or not p.is_file() or p.name not in owned or _sha(p) != owned[p.name])]
    if foreign or (present and not mpath.is_file()):
        names = foreign or [p.name for p in present]
        raise UsageError(f"--out {out_dir}: holds files this report did not write "
                         f"({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}); "
                         "give a new or empty folder (nothing was written)")
    return present


def write_report(paths: list[str], out_dir: Path, check_json: Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Write out_dir/report.md, out_dir/report.html and the plots; returns the HTML path.
    The report is assembled in a temporary folder beside out_dir and renamed into place, so a
    failure leaves nothing half-written; out_dir must be new, empty, or a previous report's."""
    out_dir = Path(out_dir)
    _need_matplotlib()  # before anything is created
    quality, paths = split_inputs(paths)  # lstmbench.quality files: report.quality
    runs = read_runs(paths) if paths or not quality else []  # every file validated first
    equiv = equivalence_table(check_json) if check_json else None  # fail before writing anything
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UsageError(f"--out {out_dir}: exists and is not a folder (or is a link); give a new folder")
    old_files = _previous_report(out_dir) if out_dir.is_dir() else []
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
        os.chmod(tmp, dir_mode())  # mkdtemp's 0700 would stay with the renamed folder
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot write there ({e.strerror or e}); choose another folder") from None
    try:
        html_name = _build(runs, tmp, check_json, equiv, quality)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"tool": "lstmbench report", "files": {n: _sha(tmp / n) for n in files}}
        write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        if old_files:  # a previous report: set it aside, put the new one in place, then drop it
            aside = parent / f".{out_dir.name}.old-{os.getpid()}-{tmp.name[-8:]}"
            os.rename(out_dir, aside)
            try:
                os.rename(tmp, out_dir)
            except OSError:
                os.rename(aside, out_dir)
                raise
            for f in old_files:
                (aside / f.name).unlink(missing_ok=True)
            aside.rmdir()
        else:  # new, or an empty folder (which rename replaces)
            os.rename(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(f"--out {out_dir}: cannot write the report ({e.strerror or e}); nothing was left behind") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out_dir / 'report.md'}, {out_dir / html_name} and "
        f"{sum(n.endswith('.png') for n in files)} plots")
    return out_dir / html_name


def _build(runs: list[tuple[Run, list[RunCell]]], out_dir: Path, check_json: Path | None,
           equiv: tuple[Table, list[str], str] | None, quality: list[dict[str, Any]] | None = None) -> str:
    """Every file of the report into out_dir (a fresh folder); returns the HTML file's name."""
    runs = sorted(runs, key=lambda r: _when(r[0].doc))  # in the order they were made, not by path
    quality = sorted(quality or [], key=_when)
    docs = [run.doc for run, _ in runs]
    es = entries(runs)
    plot_notes: list[str] = []
    figs = figures(es, runs, out_dir, plot_notes)
    n_ok = sum(e.ok for e in es)
    n_noisy = sum(e.ok and e.noisy for e in es)
    title = "lstmbench report"
    sub = (f"{len(docs)} run(s), {len(es)} cells ({n_ok} measured, {n_noisy} of them noisy, "
           f"{len(es) - n_ok} failed); generated "
           f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    sections = _benchmark_sections(runs, docs, es, figs, plot_notes)
    if equiv:
        table, notes, prec = equiv
        items: list[tuple[str, Any]] = [("note", f"Worst relative error over every cross-check case "
                                         f"({prec} tolerances; generated: mismatching tokens), from "
                                         f"{Path(check_json).name}."), ("table", table)]
        if notes:
            items.append(("list", notes))
        sections.append(("Equivalence against the float64 reference", items))
    if quality:
        if not runs:  # quality files only: no empty benchmark sections
            sections = []
            sub = (f"{len(quality)} quality run(s); generated "
                   f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
        sections += quality_sections(quality, out_dir)
    write_atomic(out_dir / "report.md", markdown(title, sub, sections).encode())
    write_atomic(out_dir / "report.html", html_page(title, sub, sections).encode())
    return "report.html"


Section = tuple[str, list[tuple[str, Any]]]  # (heading, [(kind, payload)]): kv, table, note, h3, h4, list, pre, fig


def _per_run_tables(per_run: list[tuple[str, list[tuple[str, Table]]]],
                    headed: bool) -> list[tuple[str, Any]]:
    """Section items for per-run lists of per-workload tables: the run's name as a heading
    where there are several runs, then each workload's heading and table."""
    items: list[tuple[str, Any]] = []
    for name, tables in per_run:
        if headed:
            items.append(("h3", name))
        for wid, t in tables:
            items += [("h4", wid), ("table", t)]
    return items


def _benchmark_sections(runs: list[tuple[Run, list[RunCell]]], docs: list[dict[str, Any]], es: list[Entry],
                        figs: list[tuple[Path, str, str]], plot_notes: list[str]) -> list[Section]:
    """What the report says of the benchmark runs: each framework at its fastest, ratios per
    workload, the machine's noise,
    the plots, the results per cell, the cells that did not run, machine and software."""
    fails = failures_table(es)
    n_over = sum(e.ok and math.isfinite(e.efficiency) and e.efficiency > 1 for e in es)
    est = sorted({e.estimator for e in es if e.ok}) or ["median"]
    sections: list[tuple[str, list[tuple[str, Any]]]] = []  # (heading, [(kind, payload)])
    noisy_legend = _noisy_legend(docs)
    front_items: list[tuple[str, Any]] = [(
        "note", "Per workload, each framework's fastest backend (the library a user writes the model "
                "in: `lstmbench backends` names each backend's framework; \"of N\": of the N of its "
                "backends that measured), its time per step relative to the fastest backend of the "
                "workload with the 95% interval from the rounds measured side by side, its efficiency "
                "(achieved GFLOP/s over the run's peak GEMM) and, for generation, microseconds per "
                "character." + noisy_legend)]
    front_items += _per_run_tables(frontier_tables(runs), len(runs) > 1)
    sections.append(("Each framework at its fastest", front_items))
    ratio_items: list[tuple[str, Any]] = [(
        "note", "Each backend's time per step relative to the fastest backend of the workload "
                "(1 = fastest; 2.00 = twice as slow), with its 95% interval: from rounds measured "
                "side by side (results v2), or from the headline estimates (v1: no interval); "
                "chars/s: the run's headline figure. Runs in the order they were made." + noisy_legend)]
    ratio_items += _per_run_tables(ratio_tables(runs), len(runs) > 1)
    sections.append(("Backends against the fastest, per workload", ratio_items))
    sources, side = kinds_tables(runs)
    if side:  # several machines (a cluster run's kinds): the same workload on each, side by side
        kind_items: list[tuple[str, Any]] = [
            ("note", "Each workload's backends on each machine kind: the time ratio to the fastest "
                     "backend of that kind's run (paired rounds, 95% interval) and chars/s, from "
                     "each kind's latest run in this report:"), ("list", sources)]
        for wid, t in side:
            kind_items += [("h4", wid), ("table", t)]
        sections.append(("Machine kinds side by side", kind_items))
    noise_items: list[tuple[str, Any]] = [
        ("note", f"How fast and how steady the machine was: the noise probe's GFLOP/s, the share of "
                 f"rounds whose probe ran slower than {CLEAN_FACTOR}x its best (not clean), "
                 "collapses, and how far the probe's per-workload minimum moved from its best (compare's noise floor). "
                 + explain.verdict_rule()),
        ("table", noise_table(runs))]
    sections.append(("Machine noise", noise_items))
    plot_items: list[tuple[str, Any]] = [("fig", f) for f in figs]
    if plot_notes:
        plot_items.append(("list", plot_notes))
    sections.append(("Plots", plot_items))
    res_items: list[tuple[str, Any]] = [
        ("note", f"Headline: {', '.join(est)} of the rounds (results' estimator: a minimum is "
                 "taken over every round, other estimators over the clean ones), with its 95% "
                 "interval (hierarchical bootstrap over processes and rounds). Per-step times are "
                 "seconds per train/eval step or per generated sequence. One table per preset, mode "
                 "and batch size." + noisy_legend)]
    if n_over:
        res_items.append(("note", f"{n_over} cell(s) show an efficiency above 100% of the run's "
                                  "peak GEMM: a measurement error (the peak was measured under "
                                  "contention, or the cell's time is too low), flagged in the table."))
    for group, t in results_tables(es):
        res_items += [("h4", group), ("table", t)]
    sections.append(("Results", res_items))
    if fails.rows:
        sections.append(("Cells that did not run", [("note", "Not plotted; a cell measured in "
                                                     "several runs is listed once per failed run."),
                                                    ("table", fails)]))
    machine_items: list[tuple[str, Any]] = [("kv", header_table(docs[i:i + RUNS_PER_TABLE], i + 1))
                                            for i in range(0, len(docs), RUNS_PER_TABLE)]
    sections.append(("Machine and software", [*machine_items, ("table", backends_table(docs))]))
    return sections


def markdown(title: str, sub: str, sections: list[Section]) -> str:
    md = [f"# {title}", "", sub, ""]
    for heading, items in sections:
        md += [f"## {heading}", ""]
        for kind, x in items:
            if kind in ("kv", "table"):
                md += [x.markdown(), ""]
            elif kind == "note":
                md += [x, ""]
            elif kind in ("h3", "h4"):
                md += ["#" * int(kind[1]) + f" {x}", ""]
            elif kind == "list":
                md += [f"- {n}" for n in x] + [""]
            elif kind == "pre":
                fence = "````" if "```" in x else "```"  # generated text may hold a fence
                md += [fence, x.rstrip("\n"), fence, ""]
            elif kind == "fig":
                path, cap_title, cap = x
                md += [f"### {cap_title}", "", f"![{cap_title}]({path.name})", "", cap, ""]
    return "\n".join(md)


def html_page(title: str, sub: str, sections: list[Section]) -> str:
    """Self-contained: the plots embedded as base64."""
    h = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
         f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
         f"<h1>{html.escape(title)}</h1><p class=sub>{html.escape(sub)}</p>"]
    for heading, items in sections:
        h.append(f"<h2>{html.escape(heading)}</h2>")
        for kind, x in items:
            if kind == "kv":
                h.append(x.html().replace("<table>", "<table class=kv>", 1))
            elif kind == "table":
                h.append(x.html())
            elif kind == "note":
                h.append(f"<p class=note>{html.escape(x)}</p>")
            elif kind in ("h3", "h4"):
                h.append(f"<{kind}>{html.escape(x)}</{kind}>")
            elif kind == "list":
                h.append("<ul class=notes>" + "".join(f"<li>{html.escape(n)}</li>" for n in x) + "</ul>")
            elif kind == "pre":
                h.append(f"<pre>{html.escape(x)}</pre>")
            elif kind == "fig":
                path, cap_title, cap = x
                b64 = base64.b64encode(path.read_bytes()).decode()
                h.append(f"<figure><img alt=\"{html.escape(cap_title)}\" src=\"data:image/png;base64,{b64}\">"
                         f"<figcaption><b>{html.escape(cap_title)}.</b> {html.escape(cap)}</figcaption></figure>")
    h.append("</body></html>")
    return "\n".join(h)
