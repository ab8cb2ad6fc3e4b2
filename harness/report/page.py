"""`lstmbench report`: a Markdown and a self-contained HTML report of one or more results files,
with plots (PNG files beside the reports, embedded as base64 in the HTML): throughput against
batch size, throughput per preset and mode, efficiency against the run's peak GEMM,
generation latency, first-step time, peak memory; the run's machine and software; the cells
that failed; and, given `lstmbench check --json` output, the equivalence table."""
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from impls import registry
from impls.config import ConfigError, flops_per_char, get_preset
from impls.files import dir_mode

from ..engine import explain
from ..engine import significance as sig
from ..engine.bench import Cell
from ..commands.compare import Run, RunCell, read_run
from ..engine.envs import UsageError
from .quality import sections as quality_sections, split_inputs
from ..engine.stats import CLEAN_FACTOR, MIN_CLEAN
from ..results.schema import expand_paths, load_check_report

QUANTITIES = ("forward", "loss", "grads", "steps", "generated")  # as in harness.check
PLOTS = {"throughput_batch.png", "throughput.png", "efficiency.png", "generate_latency.png",
         "first_step.png", "memory.png", "noise.png"}
MANIFEST = ".lstmbench-report.json"  # what a report wrote into its folder (name -> sha256)
_BACKEND_ORDER = list(registry.BACKENDS)


# ---- data -----------------------------------------------------------------------------

@dataclass
class Entry:
    """One cell as measured in one context (machine, device, precision); runs pooled."""
    cell: Cell
    context: tuple[str, str, str, Any]  # machine slug, device, precision, threads
    measured: list[RunCell] = field(default_factory=list)  # runs that timed it
    first_steps: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)  # matmul peak GFLOP/s of each ok run
    rss: list[int] = field(default_factory=list)
    device_bytes: list[int] = field(default_factory=list)
    runs: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (status, error) per failed run

    # derived, filled by finish()
    label: str = ""
    group: str = ""
    estimate_s: float = math.nan  # the headline seconds per step
    lo_s: float = math.nan  # its 95% interval
    hi_s: float = math.nan
    cps: float = math.nan
    cps_lo: float = math.nan
    cps_hi: float = math.nan
    us_per_char: float = math.nan
    us_lo: float = math.nan
    us_hi: float = math.nan
    noisy: bool = False
    estimator: str = "median"

    @property
    def samples(self) -> list[float]:
        return [s["s"] for r in self.measured for s in r.samples]

    @property
    def clean_rounds(self) -> int:
        return sum(s["clean"] for r in self.measured for s in r.samples)

    @property
    def ok(self) -> bool:
        return bool(self.measured) and math.isfinite(self.estimate_s) and self.estimate_s > 0

    def finish(self, label: str) -> None:
        c = self.cell
        self.label = label
        self.group = f"{c.preset} {c.mode}" + ("" if c.mode == "generate" else f" B{c.batch}")
        if not self.measured:
            return
        self.noisy = any(r.noisy for r in self.measured)
        self.estimator = self.measured[0].run.estimator
        one = self.measured[0].result if len(self.measured) == 1 else {}
        est, ci = one.get("estimate_s"), one.get("ci_s")
        if (isinstance(est, (int, float)) and math.isfinite(est) and est > 0 and isinstance(ci, list)
                and len(ci) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci)):
            self.estimate_s, self.lo_s, self.hi_s = float(est), float(ci[0]), float(ci[1])
        else:  # v1, or runs pooled: the estimator over the clean rounds, bootstrap interval
            side = [r.values() for r in self.measured]
            self.estimate_s = sig.estimate(sig.pooled(side), self.estimator)
            reps = sig.replicates(side, self.estimator, reps=500)
            reps = reps[np.isfinite(reps)]
            if reps.size:
                self.lo_s, self.hi_s = (float(x) for x in np.percentile(reps, [2.5, 97.5]))
        n = c.chars_per_call()
        self.cps = n / self.estimate_s
        self.cps_lo = n / self.hi_s if self.hi_s > 0 else math.nan
        self.cps_hi = n / self.lo_s if self.lo_s > 0 else math.nan
        if c.mode == "generate":
            self.us_per_char, self.us_lo, self.us_hi = (1e6 * q / c.seq_len
                                                        for q in (self.estimate_s, self.lo_s, self.hi_s))

    @property
    def median_s(self) -> float:
        return self.estimate_s

    @property
    def gflops(self) -> float:
        return flops_per_char(self.cell.model, self.cell.mode) * self.cps / 1e9

    @property
    def efficiency(self) -> float:
        return self.gflops / float(np.median(self.peaks)) if self.peaks else math.nan


def check_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[Run, list[RunCell]]]:
    """Every results file read and validated (compare.read_run): a bad one fails here,
    before anything is written."""
    return [read_run(p) for p in expand_paths(paths)]


def load(paths: Iterable[str | os.PathLike[str]],
         runs: list[tuple[Run, list[RunCell]]] | None = None) -> tuple[list[dict[str, Any]], list[Entry]]:
    runs = runs if runs is not None else check_inputs(paths)
    docs = [run.doc for run, _ in runs]
    entries: dict[tuple, Entry] = {}
    for run, rcs in runs:
        peak = (run.doc.get("peak") or {}).get("gflops") if isinstance(run.doc.get("peak"), dict) else None
        for rc in rcs:
            cell = rc.cell
            ctx = (run.machine, cell.device, cell.precision, run.threads)
            e = entries.setdefault((ctx, cell.key()), Entry(cell, ctx))
            e.runs += 1
            res = rc.result
            if not rc.measured:
                e.failures.append((rc.status, rc.error))
                continue
            e.measured.append(rc)
            if isinstance(res.get("first_step_s"), (int, float)) and res["first_step_s"] > 0:
                e.first_steps.append(float(res["first_step_s"]))
            if isinstance(peak, (int, float)) and peak > 0:
                e.peaks.append(float(peak))
            if isinstance(res.get("peak_rss_bytes"), int) and res["peak_rss_bytes"] > 0:
                e.rss.append(int(res["peak_rss_bytes"]))
            if isinstance(res.get("peak_device_bytes"), int) and res["peak_device_bytes"] > 0:
                e.device_bytes.append(int(res["peak_device_bytes"]))
    contexts = {e.context for e in entries.values()}
    varying = [i for i in range(4) if len({c[i] for c in contexts}) > 1]
    for e in entries.values():  # name the context only where it differs within the report
        parts = [str(e.context[i]) if i < 3 else f"{e.context[i]} thread" + "s" * (e.context[i] != 1)
                 for i in varying]
        e.finish(e.cell.backend + (f" ({', '.join(parts)})" if parts else ""))
    return docs, list(entries.values())


def _labels(entries: list[Entry]) -> list[str]:
    seen = {e.label: e.cell.backend for e in entries}
    order = {b: i for i, b in enumerate(_BACKEND_ORDER)}
    return sorted(seen, key=lambda lab: (order.get(seen[lab], 99), lab))


def _colors(labels: list[str]) -> dict[str, Any]:
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def _groups(entries: list[Entry]) -> list[str]:
    out: list[str] = []
    for e in entries:
        if e.group not in out:
            out.append(e.group)
    return out


# ---- plots ----------------------------------------------------------------------------

def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
                         "figure.dpi": 110, "savefig.bbox": "tight"})
    return plt


def _save(fig: Any, out_dir: Path, name: str) -> Path:
    path = out_dir / name
    fig.savefig(path)
    _plt().close(fig)
    return path


def _count_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda y, _: _si(y).replace(" ", "") if y else "0")


def _log_ticks(ax: Any, plain: bool = False) -> None:
    """1-2-5 ticks labelled 20k, 50k (or 0.02, 0.05): decades alone leave a log axis unreadable."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}") if plain else _count_formatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _errs(vals: list[float], los: list[float], his: list[float]) -> np.ndarray:
    """Error bar lengths (2, n), never negative or NaN (a missing interval draws no bar)."""
    v, lo, hi = (np.asarray(x, np.float64) for x in (vals, los, his))
    down, up = np.nan_to_num(v - lo, nan=0.0), np.nan_to_num(hi - v, nan=0.0)
    return np.stack([np.clip(down, 0, None), np.clip(up, 0, None)])


def _usable(es: list[Entry], what: str, value: Callable[[Entry], float], notes: list[str] | None) -> list[Entry]:
    """Entries whose value can be drawn (finite, above zero); the rest named in notes."""
    keep, skip = [], []
    for e in es:
        try:
            v = float(value(e))
        except (TypeError, ValueError, ZeroDivisionError):
            v = math.nan
        (keep if math.isfinite(v) and v > 0 else skip).append(e)
    if skip and notes is not None:
        notes.append(f"{what}: {len(skip)} cell(s) without a positive finite value not drawn "
                     f"({', '.join(f'{e.label} {e.group}' for e in skip[:3])}{' ...' if len(skip) > 3 else ''})")
    return keep


def _sweeps(entries: list[Entry]) -> dict[tuple, list[Entry]]:
    """Cells that differ only in batch size, where at least two batch sizes were measured."""
    sweeps: dict[tuple, list[Entry]] = {}
    for e in entries:
        if not e.ok or e.cell.mode == "generate":
            continue
        d = e.cell.to_dict()
        d.pop("batch"), d.pop("seed"), d.pop("backend")
        key = (e.cell.preset, e.cell.mode, repr(sorted(d.items())))
        sweeps.setdefault(key, []).append(e)
    return {k: v for k, v in sweeps.items() if len({e.cell.batch for e in v}) >= 2}


def plot_batch_sweep(entries: list[Entry], colors: dict[str, Any], out_dir: Path) -> Path | None:
    sweeps = _sweeps(entries)
    if not sweeps:
        return None
    plt = _plt()
    n = len(sweeps)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.8 * rows), squeeze=False)
    for ax, ((preset, mode, _), es) in zip(axes.flat, sweeps.items()):
        for lab in _labels(es):
            pts = sorted((e for e in es if e.label == lab), key=lambda e: e.cell.batch)
            x = [e.cell.batch for e in pts]
            y = np.array([e.cps for e in pts])
            err = _errs([e.cps for e in pts], [e.cps_lo for e in pts], [e.cps_hi for e in pts])
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=lab, color=colors[lab])
        m = es[0].cell.model
        ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="characters / s",
               title=f"{preset} {mode}: {m.num_layers}x{m.hidden_size}, T={es[0].cell.seq_len}")
        bs = sorted({e.cell.batch for e in es})
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.minorticks_off()
        _log_ticks(ax)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Throughput against batch size (headline estimate, bars: 95% interval)")
    fig.tight_layout()
    return _save(fig, out_dir, "throughput_batch.png")


def _panel_entries(entries: list[Entry]) -> list[Entry]:
    """One batch size per preset and mode: the preset's own B where measured (a batch sweep
    is plotted apart), else the largest measured."""
    chosen: dict[tuple, int] = {}
    own_found: set[tuple] = set()
    for e in entries:
        if not e.ok:
            continue
        k = (e.cell.preset, e.cell.mode)
        try:
            own = 1 if e.cell.mode == "generate" else get_preset(e.cell.preset).batch_size
        except ConfigError:  # sizes from a matrix file, not a preset
            own = None
        if e.cell.batch == own:
            chosen[k] = own
            own_found.add(k)
        elif k not in own_found:
            chosen[k] = max(chosen.get(k, 0), e.cell.batch)
    return [e for e in entries if e.ok and chosen.get((e.cell.preset, e.cell.mode)) == e.cell.batch]


def plot_throughput(entries: list[Entry], colors: dict[str, Any], out_dir: Path) -> Path | None:
    es = _panel_entries(entries)
    if not es:
        return None
    plt = _plt()
    groups = _groups(es)
    cols = min(len(groups), 3)
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 3.3 * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups):
        ge = [e for e in es if e.group == g]
        labs = _labels(ge)
        byl = {e.label: e for e in ge}
        y = [byl[lab].cps for lab in labs]
        err = _errs(y, [byl[lab].cps_lo for lab in labs], [byl[lab].cps_hi for lab in labs])
        ax.bar(range(len(labs)), y, yerr=err, capsize=3, color=[colors[lab] for lab in labs],
               hatch=None, edgecolor=["#b42318" if byl[lab].noisy else "none" for lab in labs])
        ax.set_xticks(range(len(labs)), labs, rotation=35, ha="right", fontsize=8)
        c = ge[0].cell
        ax.set_title(f"{g} (T={c.seq_len}, {c.model.num_layers}x{c.model.hidden_size})")
        ax.set_ylabel("characters / s")
        ax.grid(axis="x", visible=False)
        if max(y) / min(y) > 20:  # orders of magnitude apart: linear would hide the slow ones
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(y) / 4)  # room under the slowest, so its bar stays visible
            ax.set_ylabel("characters / s (log)")
            _log_ticks(ax)
        else:
            ax.yaxis.set_major_formatter(_count_formatter())
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle("Throughput per preset and mode (headline estimate, bars: 95% interval; red edge: noisy)")
    fig.tight_layout()
    return _save(fig, out_dir, "throughput.png")


def _grouped_bars(entries: list[Entry], value: Callable[[Entry], float],
                  err: Callable[[Entry], tuple[float, float]] | None, colors: dict[str, Any],
                  ylabel: str, title: str, log: bool | None, out_dir: Path, name: str,
                  notes: list[str] | None = None) -> Path | None:
    es = _usable([e for e in entries if e.ok], title, value, notes)
    if not es:
        return None
    plt = _plt()
    groups, labs = _groups(es), _labels(es)
    width = 0.8 / len(labs)
    fig, ax = plt.subplots(figsize=(max(6.0, min(11.5, 1.0 + len(groups) * (0.35 + 0.22 * len(labs)))), 3.8))
    for j, lab in enumerate(labs):
        xs, ys, lo, hi, edges = [], [], [], [], []
        for i, g in enumerate(groups):
            for e in es:
                if e.group == g and e.label == lab:
                    v = value(e)
                    edges.append("#b42318" if e.noisy else "none")  # noisy: never a clean-looking bar
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(v)
                    a, b = err(e) if err else (v, v)
                    d = _errs([v], [a], [b])
                    lo.append(float(d[0, 0]))
                    hi.append(float(d[1, 0]))
        ax.bar(xs, ys, width, yerr=[lo, hi] if err else None, capsize=2, label=lab, color=colors[lab],
               edgecolor=edges, linewidth=1.2)
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0,
                  ha="right" if len(groups) > 4 else "center")
    vals = [value(e) for e in es]
    if log or (log is None and max(vals) / min(vals) > 20):
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(vals) / 4)  # room under the smallest, so its bar stays visible
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if ax.get_yscale() != "log":
        ax.yaxis.set_major_formatter(_count_formatter())
    else:
        _log_ticks(ax, plain=True)
    fig.tight_layout()
    return _save(fig, out_dir, name)


# ---- tables ---------------------------------------------------------------------------

@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # right-aligned (numeric) columns
    css: list[list[str]] | None = None  # per-cell class for HTML (status colours)

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return str(s).replace("|", "\\|").replace("\n", " ")
        sep = ["---:" if i in self.right else "---" for i in range(len(self.head))]
        lines = ["| " + " | ".join(map(esc, self.head)) + " |", "| " + " | ".join(sep) + " |"]
        lines += ["| " + " | ".join(map(esc, r)) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        th = "".join(f"<th{' class=num' if i in self.right else ''}>{html.escape(h)}</th>"
                     for i, h in enumerate(self.head))
        body = []
        for ri, r in enumerate(self.rows):
            tds = []
            for i, c in enumerate(r):
                cls = ["num"] if i in self.right else []
                if self.css and self.css[ri][i]:
                    cls.append(self.css[ri][i])
                attr = f' class="{" ".join(cls)}"' if cls else ""
                tds.append(f"<td{attr}>{html.escape(str(c))}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _si(x: float, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for f, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= f:
            return f"{x / f:.3g} {p}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def _secs(s: float) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _mib(b: float | None) -> str:
    return "-" if not b else f"{b / 2**20:,.0f} MiB"


def header_table(docs: list[dict[str, Any]], first: int = 1) -> Table:
    """Machine and software, one column per run (numbered from `first`)."""
    def row(name: str, f: Callable[[dict[str, Any]], Any]) -> list[str]:
        return [name] + [str(f(d)) if f(d) not in (None, "") else "-" for d in docs]

    def gpu(d: dict[str, Any]) -> str:
        g = d["machine"].get("gpu")
        return f"{g['name']} ({g['memory']}, driver {g['driver']})" if g else "none"

    def matrix(d: dict[str, Any]) -> str:
        m = d.get("matrix") or {}
        return f"{m.get('name', '?')} (min {m.get('min_time')} s, rounds {m.get('min_rounds')}-{m.get('max_rounds')})"

    def peak(d: dict[str, Any]) -> str:
        return explain.peak_words(d.get("peak") if isinstance(d.get("peak"), dict) else None)

    def git(d: dict[str, Any]) -> str:
        g = d.get("git") or {}
        return (g.get("commit") or "?")[:12] + (" (uncommitted changes)" if g.get("dirty") else "")

    def versions(d: dict[str, Any]) -> str:
        out = []
        for b, i in (d.get("backends") or {}).items():
            out.append(f"{b} {i.get('version', '?')}" if i.get("available") else f"{b} unavailable")
        return ", ".join(out)

    rows = [
        row("file", lambda d: Path(d["_path"]).name),
        row("date", lambda d: d.get("created")),
        row("machine", lambda d: d["machine"].get("slug")),
        row("CPU", lambda d: d["machine"].get("cpu")),
        row("cores", lambda d: d["machine"].get("cores")),
        row("memory", lambda d: f"{d['machine']['memory_bytes'] / 2**30:.0f} GiB"
            if d["machine"].get("memory_bytes") else None),
        row("OS", lambda d: d["machine"].get("os")),
        row("GPU", gpu),
        row("device", lambda d: d.get("device")),
        row("precision", lambda d: d.get("precision")),
        row("threads", lambda d: d.get("threads")),
        row("python", lambda d: d.get("python")),
        row("frameworks", versions),
        row("git commit", git),
        row("matrix", matrix),
        row("efficiency denominator", peak),
        row("wall time", lambda d: f"{d['wall_s']:.0f} s" + (" (interrupted)" if d.get("interrupted") else "")
            if d.get("wall_s") is not None else None),
        row("command", lambda d: " ".join(d.get("command") or [])),
    ]
    head = [""] + (["run"] if len(docs) == 1 and first == 1 else [f"run {first + i}" for i in range(len(docs))])
    return Table(head, rows)


def backends_table(docs: list[dict[str, Any]]) -> Table:
    rows: dict[str, list[str]] = {}
    for d in docs:
        for b, i in (d.get("backends") or {}).items():
            r = [b, i.get("version", "-"), i.get("kernel", "-"), i.get("executable") or "-",
                 "available" if i.get("available") else f"unavailable: {i.get('reason')}"]
            if b in rows and rows[b] != r:  # differs between runs: show each
                rows[f"{b} ({Path(d['_path']).name})"] = r
            else:
                rows.setdefault(b, r)
    css = [[""] * 4 + ["ok" if r[4] == "available" else "bad"] for r in rows.values()]
    return Table(["backend", "version", "kernel", "interpreter", "status"], list(rows.values()), css=css)


def _eff(e: Entry) -> str:
    if not math.isfinite(e.efficiency):
        return "-"
    txt = f"{100 * e.efficiency:.2f}%"
    return txt + " (above 100%: measurement error)" if e.efficiency > 1 else txt


def results_tables(entries: list[Entry]) -> list[tuple[str, Table]]:
    """The per-cell detail, one table per preset, mode and batch (its T in the heading), so
    that each stays narrow enough to read."""
    groups, labels = _groups(entries), _labels(entries)
    by_group: dict[str, list[Entry]] = {}
    for e in sorted((e for e in entries if e.ok), key=lambda e: (groups.index(e.group), labels.index(e.label))):
        by_group.setdefault(f"{e.group} T{e.cell.seq_len}", []).append(e)
    return [(g, results_table(es)) for g, es in by_group.items()]


def results_table(entries: list[Entry]) -> Table:
    rows, css = [], []
    for e in entries:
        rows.append([e.label + (" (noisy)" if e.noisy else ""),
                     _si(e.cps) + (" noisy" if e.noisy else ""),
                     f"{_si(e.cps_lo)} - {_si(e.cps_hi)}", _secs(e.estimate_s),
                     f"{e.us_per_char:.1f}" if math.isfinite(e.us_per_char) else "-",
                     _secs(float(np.median(e.first_steps))) if e.first_steps else "-",
                     f"{e.gflops:.3g}", _eff(e),
                     _mib(max(e.device_bytes) if e.device_bytes else (max(e.rss) if e.rss else None)),
                     f"{e.clean_rounds} of {len(e.samples)}" + (f" ({e.runs} runs)" if e.runs > 1 else "")])
        css.append(["warn" if e.noisy else "", "warn" if e.noisy else ""] + [""] * 5
                   + ["bad" if math.isfinite(e.efficiency) and e.efficiency > 1 else ""] + ["", ""])
    return Table(["backend", "chars/s", "95% interval chars/s", "step time", "us/char", "first step",
                  "GFLOP/s", "efficiency", "peak memory", "clean rounds"], rows,
                 right=set(range(1, 10)), css=css)


def _run_name(doc: dict[str, Any]) -> str:
    return Path(doc["_path"]).name


def ratio_tables(runs: list[tuple[Run, list[RunCell]]]) -> list[tuple[str, list[tuple[str, Table]]]]:
    """Per run, per workload: a table of its backends, fastest first, each with its time ratio
    to the fastest and interval (v2 `workloads[].ratios`, from paired rounds; v1: from the
    run's own estimates, no interval) and characters per second; one table per workload, so
    that 13 backends read down the page instead of off its side. Noisy ratios say so."""
    out = []
    for run, rcs in runs:
        backends: list[str] = []
        rows_by_w: dict[str, dict[str, str]] = {}
        stored = {w.get("id"): w for w in (run.doc.get("workloads") or []) if isinstance(w, dict)}
        groups: dict[str, list[RunCell]] = {}
        for rc in rcs:
            c = rc.cell
            wid = f"{c.preset} {c.mode} B{c.batch} T{c.seq_len}"
            groups.setdefault(wid, []).append(rc)
            if c.backend not in backends:
                backends.append(c.backend)
        for wid, members in groups.items():
            cells = {rc.cell.backend: rc for rc in members}
            row: dict[str, str] = {}
            ratios = None
            for w in stored.values():
                rs = w.get("ratios")
                if isinstance(rs, dict) and set(rs) and set(rs) <= set(cells) and \
                        w.get("mode") == members[0].cell.mode and w.get("batch") == members[0].cell.batch \
                        and w.get("preset") == members[0].cell.preset and w.get("seq_len") == members[0].cell.seq_len:
                    ratios = rs
            own = {b: float(rc.result["estimate_s"]) for b, rc in cells.items()  # this run's, not pooled
                   if rc.measured and isinstance(rc.result.get("estimate_s"), (int, float))
                   and rc.result["estimate_s"] > 0}
            fastest = min(own, key=lambda b: own[b]) if own else None
            for b, rc in cells.items():
                if not rc.measured:
                    row[b] = rc.status
                    continue
                r = ratios.get(b) if ratios else None
                noisy = bool(rc.noisy)
                if isinstance(r, dict) and isinstance(r.get("ratio"), (int, float)):
                    noisy = noisy or bool(r.get("noisy"))
                    txt = "1 (fastest)" if r["ratio"] == 1 and r.get("to") == b else \
                        f"{r['ratio']:.2f} [{r.get('lo', math.nan):.2f}, {r.get('hi', math.nan):.2f}]"
                elif fastest and b in own:
                    q = own[b] / own[fastest]
                    txt = "1 (fastest)" if b == fastest else f"{q:.2f}"
                else:
                    txt = "-"
                row[b] = txt + (" noisy" if noisy else "")
            rows_by_w[wid] = row
        tables = []
        for wid, row in rows_by_w.items():
            cps = {rc.cell.backend: rc.result.get("chars_per_s") for rc in groups[wid] if rc.measured}
            order = sorted(row, key=lambda b: (_ratio_key(row[b]), backends.index(b)))
            rows = [[b, row[b], _si(float(cps[b])) if isinstance(cps.get(b), (int, float)) else "-"]
                    for b in order]
            css = [["", "warn" if "noisy" in r[1] else ("ok" if "fastest" in r[1] else
                                                         ("bad" if not r[1][:1].isdigit() else "")), ""]
                   for r in rows]
            tables.append((wid, Table(["backend", "time ratio to the fastest [95% CI]", "chars/s"], rows,
                                      {1, 2}, css)))
        out.append((_run_name(run.doc), tables))
    return out


def _ratio_key(text: str) -> float:
    """Sort key of a ratio cell: its number (the fastest is 1), a cell that did not run last."""
    head = text.split()[0] if text else ""
    try:
        return float(head)
    except ValueError:
        return math.inf


def noise_table(runs: list[tuple[Run, list[RunCell]]]) -> Table:
    """The machine's noise per run: probe GFLOP/s at start, during and end, contended share,
    collapses, verdict."""
    def g(x: Any) -> str:
        return f"{x:.1f}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"
    rows, css = [], []
    for run, _ in runs:
        n = run.doc.get("noise") if isinstance(run.doc.get("noise"), dict) else {}
        p = run.doc.get("probe") if isinstance(run.doc.get("probe"), dict) else {}
        st = n.get("start") if isinstance(n.get("start"), dict) else {}
        en = n.get("end") if isinstance(n.get("end"), dict) else {}
        verdict = run.verdict or ("unknown (no noise probe)" if not run.probe_s else "?")
        spread = n.get("round_spread") if isinstance(n.get("round_spread"), dict) else None
        if spread and not isinstance(spread.get("median"), (int, float)):
            spread = None
        rows.append([_run_name(run.doc), g(st.get("gflops")), g(p.get("best_gflops")), g(p.get("median_gflops")),
                     g(en.get("gflops")),
                     f"{100 * run.contended:.0f}%" if run.contended is not None else "-",
                     str(n.get("collapse_rounds", "-")),
                     f"{100 * run.floor:.0f}%" if run.floor is not None else "-",
                     f"{spread['median']:.2f}x" if spread else "-", verdict.upper()
                     if verdict in ("quiet", "noisy", "contended") else verdict,
                     explain.verdict_source(n) if run.verdict else "-",
                     f"{n['foreign_cores_max']:.2f}" if isinstance(n.get("foreign_cores_max"), (int, float)) else "-"])
        css.append([""] * 9 + [{"quiet": "ok", "noisy": "warn", "contended": "bad"}.get(verdict, ""), "", ""])
    return Table(["run", "probe GFLOP/s at start", "best", "median", "at end", "contended rounds",
                  "collapse rounds", "noise floor (probe minimum moved)",
                  "cells' median round / fastest", "verdict", "by", "other processes' cores (max)"],
                 rows, set(range(1, 9)) | {11}, css)


def plot_noise(runs: list[tuple[Run, list[RunCell]]], out_dir: Path) -> Path | None:
    """Probe GFLOP/s round by round, per run (log scale: contention moves it by 10x and more)."""
    series = []
    for run, _ in runs:
        flop = (run.doc.get("probe") or {}).get("flop") if isinstance(run.doc.get("probe"), dict) else None
        if not isinstance(flop, (int, float)) or flop <= 0:
            continue
        pts = [(i, flop / s / 1e9) for i, s in enumerate(run.probe_s) if s]
        if pts:
            series.append((_run_name(run.doc), pts, run.best_gflops))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 3.2))
    for name, pts, best in series:
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=3, label=name)
        if best:  # in the run's colour: each run's rounds are judged against its own best
            ax.axhline(best / CLEAN_FACTOR, color=line.get_color(), lw=0.8, ls="--", alpha=0.8)
    ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="probe GFLOP/s (log)",
           title=f"Noise probe per round (dashed: best / {CLEAN_FACTOR}, below it a round is not clean)")
    _log_ticks(ax, plain=True)
    # the legend beside the axes, never over the rounds it labels
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=2,
              ncol=1 if len(series) <= 16 else 2)
    fig.tight_layout()
    return _save(fig, out_dir, "noise.png")


def failures_table(entries: list[Entry]) -> Table:
    rows, css = [], []
    for e in entries:
        for status, err in e.failures:
            c = e.cell
            rows.append([e.label, c.mode, c.preset, str(c.batch), status,
                         err.splitlines()[0] if err else "-"])
            css.append(["", "", "", "", "bad", ""])
    return Table(["backend", "mode", "preset", "B", "status", "error"], rows, {3}, css)


def equivalence_table(check_json: Path) -> tuple[Table, list[str], str]:
    """Backend x quantity: worst error over the cases, the tolerance, the status."""
    rep = load_check_report(check_json)  # every field checked by type (harness.results)
    backends = rep["backends"]
    rank = {"ok": 0, "deviation": 1, "FAIL": 2, "error": 3}
    tol: dict[str, float] = {}
    rows, css, notes = [], [], []
    for name, entry in backends.items():
        if entry.get("status") == "unavailable":
            rows.append([name] + ["-"] * len(QUANTITIES) + [f"unavailable: {entry.get('reason', '')}"])
            css.append([""] * (len(QUANTITIES) + 1) + ["bad"])
            continue
        cells, ccls = [], []
        for q in QUANTITIES:
            worst, status = 0.0, "ok"
            seen = False
            for cid, rws in (entry.get("cases") or {}).items():
                if isinstance(rws, dict):
                    status = "error"
                    continue
                for r in rws:
                    if r.get("quantity") != q:
                        continue
                    seen = True
                    rel = float(r.get("rel", math.nan))
                    worst = rel if not math.isfinite(rel) or not math.isfinite(worst) else max(worst, rel)
                    tol[q] = max(tol.get(q, 0.0), float(r.get("tol", 0.0)))
                    st = r.get("status", "ok")
                    if rank.get(st, 2) > rank[status]:
                        status = st
            if not seen and status != "error":
                cells.append("-")
                ccls.append("")
                continue
            val = f"{worst:.0f} tokens" if q == "generated" else f"{worst:.1e}"
            cells.append(f"{val} {status}")
            ccls.append({"ok": "ok", "deviation": "warn"}.get(status, "bad"))
        rows.append([name, *cells, entry.get("status", "?")])
        css.append(["", *ccls, "ok" if entry.get("status") == "ok" else "bad"])
        for cid, rws in (entry.get("cases") or {}).items():
            if isinstance(rws, dict):
                err = str(rws.get("error", "")).splitlines()
                notes.append(f"{name} {cid}: {err[0] if err else 'failed'}")
        spec = registry.BACKENDS.get(name)
        for opt, d in (spec.deviations.items() if spec else []):
            notes.append(f"{name} {opt} (documented deviation): {d.cause}")
    tol_row = ["tolerance"] + [(f"{tol[q]:.0f} tokens" if q == "generated" else f"{tol[q]:.0e}")
                               if q in tol else "-" for q in QUANTITIES] + [""]
    table = Table(["backend", *QUANTITIES, "result"], [tol_row, *rows], css=[[""] * (len(QUANTITIES) + 2), *css])
    return table, notes, str(rep.get("precision", "float32"))


# ---- the report -----------------------------------------------------------------------

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
    """The NOISY rule with the clean rounds the runs needed (harness.explain)."""
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
    quality, paths = split_inputs(paths)  # lstmbench.quality files: harness.quality_report
    runs = check_inputs(paths) if paths or not quality else []  # every file validated first
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
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
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
    docs, entries = load([], runs)
    colors = _colors(_labels(entries))
    plot_notes: list[str] = []

    def eff(e: Entry) -> float:
        return 100 * e.efficiency

    figures: list[tuple[Path | None, str, str]] = [
        (plot_batch_sweep(entries, colors, out_dir), "Throughput against batch size",
         "Characters per second against B for cells measured at several batch sizes "
         "(log-log); bars span the 95% interval of the headline estimate."),
        (plot_throughput(entries, colors, out_dir), "Throughput per preset and mode",
         "Characters per second (B x T per step; generate: characters drawn), one panel per "
         "preset and mode at the preset's own batch size (log scale where values span more "
         "than 20x); bars span the 95% interval; a red edge marks a noisy cell."),
        (_grouped_bars(entries, eff, lambda e: (100 * e.efficiency * e.cps_lo / e.cps,
                                                100 * e.efficiency * e.cps_hi / e.cps),
                       colors, "% of the peak GEMM", "Efficiency: achieved GFLOP/s / the run's peak GEMM",
                       None, out_dir, "efficiency.png", plot_notes),
         "Efficiency", "Achieved GFLOP/s (docs/SPEC.md §7 FLOP count: forward 2N, train 6N per character) "
         "divided by the run's peak GEMM: the fastest float32 matrix multiply it measured on the "
         "same device (on the CPU the faster of the 256x256 noise probe and a 1024x1024 GEMM, with "
         "the backends' threads; 'Machine and software' names both); above 100% is a measurement "
         "error, flagged in the results table. Bars with a red edge: noisy cells."),
        (_grouped_bars([e for e in entries if e.cell.mode == "generate"], lambda e: e.us_per_char,
                       lambda e: (e.us_lo, e.us_hi), colors, "microseconds / character",
                       "Generation latency (lower is better)", None, out_dir, "generate_latency.png", plot_notes),
         "Generation latency", "Microseconds per sampled character, batch 1, one token at a "
         "time; bars span the 95% interval."),
        (_grouped_bars(entries, lambda e: float(np.median(e.first_steps)) if e.first_steps else math.nan,
                       None, colors, "seconds (log)", "First step: tracing, compiling, autotuning",
                       True, out_dir, "first_step.png", plot_notes),
         "First-step time", "Wall time of the first step of each cell, timed apart from the "
         "steady state (includes tracing, JIT compilation and autotuning)."),
        (_grouped_bars(entries, lambda e: (max(e.device_bytes) if e.device_bytes else
                                           max(e.rss) if e.rss else math.nan) / 2**20,
                       None, colors, "MiB", "Peak memory", None, out_dir, "memory.png", plot_notes),
         "Peak memory", "On a GPU the framework's peak device allocation; on the CPU the worker "
         "process's peak resident set size (VmHWM, reset before each cell), which includes the "
         "framework itself."),
    ]
    figures.append((plot_noise(runs, out_dir), "Machine noise",
                    "GFLOP/s of the noise probe (a fixed float32 GEMM timed in every round beside "
                    "the backends), round by round over each run; log scale."))
    figures = [f for f in figures if f[0] is not None]
    fails = failures_table(entries)
    n_ok = sum(e.ok for e in entries)
    n_noisy = sum(e.ok and e.noisy for e in entries)
    n_over = sum(e.ok and math.isfinite(e.efficiency) and e.efficiency > 1 for e in entries)
    title = "lstmbench report"
    sub = (f"{len(docs)} run(s), {len(entries)} cells ({n_ok} measured, {n_noisy} of them noisy, "
           f"{len(entries) - n_ok} failed); generated "
           f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    est = sorted({e.estimator for e in entries if e.ok}) or ["median"]

    sections: list[tuple[str, list[tuple[str, Any]]]] = []  # (heading, [(kind, payload)])
    noisy_legend = _noisy_legend(docs)
    ratio_items: list[tuple[str, Any]] = [(
        "note", "Each backend's time per step relative to the fastest backend of the workload "
                "(1 = fastest; 2.00 = twice as slow), with its 95% interval: from rounds measured "
                "side by side (results v2), or from the headline estimates (v1: no interval); "
                "chars/s: the run's headline figure. Runs in the order they were made." + noisy_legend)]
    for name, tables in ratio_tables(runs):
        if len(runs) > 1:
            ratio_items.append(("h3", name))
        for wid, t in tables:
            ratio_items += [("h4", wid), ("table", t)]
    sections.append(("Backends against the fastest, per workload", ratio_items))
    noise_items: list[tuple[str, Any]] = [
        ("note", f"How fast and how steady the machine was: the noise probe's GFLOP/s, the share of "
                 f"rounds whose probe ran slower than {CLEAN_FACTOR}x its best (not clean), "
                 "collapses, and how far the probe's per-workload minimum moved from its best (compare's noise floor). "
                 + explain.verdict_rule()),
        ("table", noise_table(runs))]
    sections.append(("Machine noise", noise_items))
    plot_items: list[tuple[str, Any]] = [("fig", f) for f in figures]
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
    for group, t in results_tables(entries):
        res_items += [("h4", group), ("table", t)]
    sections.append(("Results", res_items))
    if fails.rows:
        sections.append(("Cells that did not run", [("note", "Not plotted; a cell measured in "
                                                     "several runs is listed once per failed run."),
                                                    ("table", fails)]))
    machine_items: list[tuple[str, Any]] = [("kv", header_table(docs[i:i + RUNS_PER_TABLE], i + 1))
                                            for i in range(0, len(docs), RUNS_PER_TABLE)]
    sections.append(("Machine and software", [*machine_items, ("table", backends_table(docs))]))
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

    # Markdown
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
    (out_dir / "report.md").write_text("\n".join(md))

    # HTML, self-contained
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
    (out_dir / "report.html").write_text("\n".join(h))
    return "report.html"
