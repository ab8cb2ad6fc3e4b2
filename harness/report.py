"""`lstmbench report`: a Markdown and a self-contained HTML report of one or more results files,
with plots (PNG files beside the reports, embedded as base64 in the HTML): throughput against
batch size, throughput per preset and mode, efficiency against the measured matmul peak,
generation latency, first-step time, peak memory; the run's machine and software; the cells
that failed; and, given `lstmbench check --json` output, the equivalence table."""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from impls import registry
from impls.config import ConfigError, flops_per_char, get_preset

from .bench import Cell
from .results import ResultsError, expand_paths, load_results

QUANTITIES = ("forward", "loss", "grads", "steps", "generated")  # as in harness.check
PLOTS = {"throughput_batch.png", "throughput.png", "efficiency.png", "generate_latency.png",
         "first_step.png", "memory.png"}
_BACKEND_ORDER = list(registry.BACKENDS)


# ---- data -----------------------------------------------------------------------------

@dataclass
class Entry:
    """One cell as measured in one context (machine, device, precision); runs pooled."""
    cell: Cell
    context: tuple[str, str, str, Any]  # machine slug, device, precision, threads
    samples: list[float] = field(default_factory=list)
    first_steps: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)  # matmul peak GFLOP/s of each ok run
    rss: list[int] = field(default_factory=list)
    device_bytes: list[int] = field(default_factory=list)
    runs: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (status, error) per failed run

    # derived, filled by finish()
    label: str = ""
    group: str = ""
    cps: float = math.nan
    cps_lo: float = math.nan
    cps_hi: float = math.nan
    us_per_char: float = math.nan
    us_lo: float = math.nan
    us_hi: float = math.nan

    @property
    def ok(self) -> bool:
        return bool(self.samples)

    def finish(self, label: str) -> None:
        c = self.cell
        self.label = label
        self.group = f"{c.preset} {c.mode}" + ("" if c.mode == "generate" else f" B{c.batch}")
        if not self.ok:
            return
        q25, q50, q75 = np.percentile(self.samples, [25, 50, 75])
        n = c.chars_per_call()
        self.cps, self.cps_lo, self.cps_hi = n / q50, n / q75, n / q25
        if c.mode == "generate":
            self.us_per_char, self.us_lo, self.us_hi = (1e6 * q / c.seq_len for q in (q50, q25, q75))

    @property
    def median_s(self) -> float:
        return float(np.median(self.samples)) if self.samples else math.nan

    @property
    def gflops(self) -> float:
        return flops_per_char(self.cell.model, self.cell.mode) * self.cps / 1e9

    @property
    def efficiency(self) -> float:
        return self.gflops / float(np.median(self.peaks)) if self.peaks else math.nan


def load(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[dict[str, Any]], list[Entry]]:
    docs = [load_results(p) for p in expand_paths(paths)]
    entries: dict[tuple, Entry] = {}
    for doc in docs:
        machine = str(doc.get("machine", {}).get("slug", "?"))
        peak = (doc.get("peak") or {}).get("gflops")
        for i, ce in enumerate(doc["cells"]):
            try:
                cell = Cell.from_dict(ce["cell"])
            except (KeyError, TypeError, ConfigError) as e:
                raise ResultsError(f"{doc['_path']}: cell {i} is malformed ({type(e).__name__}: {e})") from None
            ctx = (machine, cell.device, cell.precision, doc.get("threads"))
            e = entries.setdefault((ctx, cell.key()), Entry(cell, ctx))
            e.runs += 1
            res = ce.get("result") or {}
            if res.get("status") != "ok" or not res.get("samples_s"):
                e.failures.append((str(res.get("status", "no result")), str(res.get("error") or "")))
                continue
            e.samples.extend(float(s) for s in res["samples_s"])
            if res.get("first_step_s") is not None:
                e.first_steps.append(float(res["first_step_s"]))
            if peak:
                e.peaks.append(float(peak))
            if res.get("peak_rss_bytes"):
                e.rss.append(int(res["peak_rss_bytes"]))
            if res.get("peak_device_bytes"):
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
            err = np.array([[e.cps - e.cps_lo for e in pts], [e.cps_hi - e.cps for e in pts]])
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
    fig.suptitle("Throughput against batch size (median, bars: interquartile range)")
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
        err = [[byl[lab].cps - byl[lab].cps_lo for lab in labs], [byl[lab].cps_hi - byl[lab].cps for lab in labs]]
        ax.bar(range(len(labs)), y, yerr=err, capsize=3, color=[colors[lab] for lab in labs])
        ax.set_xticks(range(len(labs)), labs, rotation=35, ha="right", fontsize=8)
        c = ge[0].cell
        ax.set_title(f"{g} (T={c.seq_len}, {c.model.num_layers}x{c.model.hidden_size})")
        ax.set_ylabel("characters / s")
        ax.grid(axis="x", visible=False)
        ax.yaxis.set_major_formatter(_count_formatter())
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle("Throughput per preset and mode (median, bars: interquartile range)")
    fig.tight_layout()
    return _save(fig, out_dir, "throughput.png")


def _grouped_bars(entries: list[Entry], value: Callable[[Entry], float],
                  err: Callable[[Entry], tuple[float, float]] | None, colors: dict[str, Any],
                  ylabel: str, title: str, log: bool | None, out_dir: Path, name: str) -> Path | None:
    es = [e for e in entries if e.ok and math.isfinite(value(e)) and value(e) > 0]
    if not es:
        return None
    plt = _plt()
    groups, labs = _groups(es), _labels(es)
    width = 0.8 / len(labs)
    fig, ax = plt.subplots(figsize=(max(6.0, min(11.5, 1.0 + len(groups) * (0.35 + 0.22 * len(labs)))), 3.8))
    for j, lab in enumerate(labs):
        xs, ys, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            for e in es:
                if e.group == g and e.label == lab:
                    v = value(e)
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(v)
                    a, b = err(e) if err else (v, v)
                    lo.append(v - a)
                    hi.append(b - v)
        ax.bar(xs, ys, width, yerr=[lo, hi] if err else None, capsize=2, label=lab, color=colors[lab])
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 4 else 0,
                  ha="right" if len(groups) > 4 else "center")
    vals = [value(e) for e in es]
    if log or (log is None and max(vals) / min(vals) > 50):
        ax.set_yscale("log")
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


def header_table(docs: list[dict[str, Any]]) -> Table:
    """Machine and software, one column per run."""
    def row(name: str, f: Callable[[dict[str, Any]], Any]) -> list[str]:
        return [name] + [str(f(d)) if f(d) not in (None, "") else "-" for d in docs]

    def gpu(d: dict[str, Any]) -> str:
        g = d["machine"].get("gpu")
        return f"{g['name']} ({g['memory']}, driver {g['driver']})" if g else "none"

    def matrix(d: dict[str, Any]) -> str:
        m = d.get("matrix") or {}
        return f"{m.get('name', '?')} (min {m.get('min_time')} s, rounds {m.get('min_rounds')}-{m.get('max_rounds')})"

    def peak(d: dict[str, Any]) -> str:
        p = d.get("peak") or {}
        if not p.get("gflops"):
            return f"not measured ({p.get('error')})"
        return f"{p['gflops']:.1f} GFLOP/s {p.get('dtype', '')} via {p.get('via')}"

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
        row("matmul peak", peak),
        row("wall time", lambda d: f"{d['wall_s']:.0f} s" + (" (interrupted)" if d.get("interrupted") else "")
            if d.get("wall_s") is not None else None),
        row("command", lambda d: " ".join(d.get("command") or [])),
    ]
    head = [""] + (["run"] if len(docs) == 1 else [f"run {i + 1}" for i in range(len(docs))])
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


def results_table(entries: list[Entry]) -> Table:
    rows = []
    for e in sorted((e for e in entries if e.ok), key=lambda e: (_groups(entries).index(e.group),
                                                                 _labels(entries).index(e.label))):
        c = e.cell
        rows.append([e.label, c.mode, c.preset, str(c.batch), str(c.seq_len), _si(e.cps),
                     f"{_si(e.cps_lo)} - {_si(e.cps_hi)}", _secs(e.median_s),
                     f"{e.us_per_char:.1f}" if math.isfinite(e.us_per_char) else "-",
                     _secs(float(np.median(e.first_steps))) if e.first_steps else "-",
                     f"{e.gflops:.3g}", f"{100 * e.efficiency:.2f}%" if math.isfinite(e.efficiency) else "-",
                     _mib(max(e.device_bytes) if e.device_bytes else (max(e.rss) if e.rss else None)),
                     f"{len(e.samples)}" + (f" ({e.runs} runs)" if e.runs > 1 else "")])
    return Table(["backend", "mode", "preset", "B", "T", "chars/s", "IQR chars/s", "step median",
                  "us/char", "first step", "GFLOP/s", "efficiency", "peak memory", "rounds"], rows,
                 right=set(range(3, 14)))


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
    try:
        rep = json.loads(Path(check_json).read_text())
        backends = rep["backends"]
    except OSError as e:
        raise ResultsError(f"{check_json}: cannot read the check report ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ResultsError(f"{check_json}: not a `lstmbench check --json` report ({type(e).__name__})") from None
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
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:30px 0 8px;padding-bottom:4px;
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


def write_report(paths: list[str], out_dir: Path, check_json: Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Write out_dir/report.md, out_dir/report.html and the plots; returns the HTML path."""
    docs, entries = load(paths)
    equiv = equivalence_table(check_json) if check_json else None  # fail before writing anything
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = _colors(_labels(entries))

    def iqr_cps(e: Entry) -> tuple[float, float]:
        return e.cps_lo, e.cps_hi

    def eff(e: Entry) -> float:
        return 100 * e.efficiency

    figures: list[tuple[Path | None, str, str]] = [
        (plot_batch_sweep(entries, colors, out_dir), "Throughput against batch size",
         "Characters per second against B for cells measured at several batch sizes "
         "(log-log); bars span the interquartile range of the timed rounds."),
        (plot_throughput(entries, colors, out_dir), "Throughput per preset and mode",
         "Characters per second (B x T per step; generate: characters drawn), one panel per "
         "preset and mode at the preset's own batch size; bars span the interquartile range."),
        (_grouped_bars(entries, eff, lambda e: (100 * e.efficiency * e.cps_lo / e.cps,
                                                100 * e.efficiency * e.cps_hi / e.cps),
                       colors, "% of matmul peak", "Efficiency: achieved GFLOP/s / measured matmul peak",
                       None, out_dir, "efficiency.png"),
         "Efficiency", "Achieved GFLOP/s (SPEC §7 FLOP count: forward 2N, train 6N per character) "
         "divided by the float32 matrix-multiply peak measured on the same device in the same run."),
        (_grouped_bars([e for e in entries if e.cell.mode == "generate"], lambda e: e.us_per_char,
                       lambda e: (e.us_lo, e.us_hi), colors, "microseconds / character",
                       "Generation latency (lower is better)", None, out_dir, "generate_latency.png"),
         "Generation latency", "Microseconds per sampled character, batch 1, one token at a "
         "time; bars span the interquartile range."),
        (_grouped_bars(entries, lambda e: float(np.median(e.first_steps)) if e.first_steps else math.nan,
                       None, colors, "seconds (log)", "First step: tracing, compiling, autotuning",
                       True, out_dir, "first_step.png"),
         "First-step time", "Wall time of the first step of each cell, timed apart from the "
         "steady state (includes tracing, JIT compilation and autotuning)."),
        (_grouped_bars(entries, lambda e: (max(e.device_bytes) if e.device_bytes else
                                           max(e.rss) if e.rss else math.nan) / 2**20,
                       None, colors, "MiB", "Peak memory", False, out_dir, "memory.png"),
         "Peak memory", "On a GPU the framework's peak device allocation; on the CPU the worker "
         "process's peak resident set size (VmHWM, reset before each cell), which includes the "
         "framework itself."),
    ]
    figures = [f for f in figures if f[0] is not None]
    made = {f[0].name for f in figures}
    for name in PLOTS - made:  # a plot this report has no data for: drop one left from an earlier report
        (out_dir / name).unlink(missing_ok=True)
    fails = failures_table(entries)
    n_ok = sum(e.ok for e in entries)
    title = "lstmbench report"
    sub = (f"{len(docs)} run(s), {len(entries)} cells ({n_ok} measured, {len(entries) - n_ok} failed); "
           f"generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")

    sections: list[tuple[str, list[tuple[str, Any]]]] = []  # (heading, [(kind, payload)])
    sections.append(("Machine and software", [("kv", header_table(docs)), ("table", backends_table(docs))]))
    sections.append(("Results", [("note", "Medians over the timed rounds; IQR: interquartile range. "
                                  "Per-step times are seconds per train/eval step or per generated sequence."),
                                 ("table", results_table(entries))]))
    if fails.rows:
        sections.append(("Cells that did not run", [("note", "Not plotted; a cell measured in "
                                                     "several runs is listed once per failed run."),
                                                    ("table", fails)]))
    sections.append(("Plots", [("fig", f) for f in figures]))
    if equiv:
        table, notes, prec = equiv
        items: list[tuple[str, Any]] = [("note", f"Worst relative error over every cross-check case "
                                         f"({prec} tolerances; generated: mismatching tokens), from "
                                         f"{Path(check_json).name}."), ("table", table)]
        if notes:
            items.append(("list", notes))
        sections.append(("Equivalence against the float64 reference", items))

    # Markdown
    md = [f"# {title}", "", sub, ""]
    for heading, items in sections:
        md += [f"## {heading}", ""]
        for kind, x in items:
            if kind in ("kv", "table"):
                md += [x.markdown(), ""]
            elif kind == "note":
                md += [x, ""]
            elif kind == "list":
                md += [f"- {n}" for n in x] + [""]
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
            elif kind == "list":
                h.append("<ul class=notes>" + "".join(f"<li>{html.escape(n)}</li>" for n in x) + "</ul>")
            elif kind == "fig":
                path, cap_title, cap = x
                b64 = base64.b64encode(path.read_bytes()).decode()
                h.append(f"<figure><img alt=\"{html.escape(cap_title)}\" src=\"data:image/png;base64,{b64}\">"
                         f"<figcaption><b>{html.escape(cap_title)}.</b> {html.escape(cap)}</figcaption></figure>")
    h.append("</body></html>")
    out = out_dir / "report.html"
    out.write_text("\n".join(h))
    log(f"wrote {out_dir / 'report.md'}, {out} and {len(figures)} plots")
    return out
