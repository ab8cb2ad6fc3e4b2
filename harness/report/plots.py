"""The report's plots (PNG, matplotlib's Agg backend): throughput against batch size,
throughput per preset and mode, bars per group (efficiency, generation latency, first step,
peak memory), and the noise probe round by round."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from impls.config import ConfigError, get_preset
from impls.files import write_atomic

from ..engine.stats import CLEAN_FACTOR
from ..results.model import Run, RunCell
from .entries import Entry, groups as _groups, labels as _labels
from .tables import run_name, si as _si


def color_of(labels: list[str]) -> dict[str, Any]:
    """One colour per label, in the labels' order."""
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def plt_module() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
                         "figure.dpi": 110, "savefig.bbox": "tight"})
    return plt


def save(fig: Any, out_dir: Path, name: str) -> Path:
    """A figure as out_dir/NAME (a .png), through impls.files.write_atomic."""
    path = write_atomic(out_dir / name, lambda f: fig.savefig(f, format=Path(name).suffix.lstrip(".")))
    plt_module().close(fig)
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
    plt = plt_module()
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
    return save(fig, out_dir, "throughput_batch.png")


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
    plt = plt_module()
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
    return save(fig, out_dir, "throughput.png")


def _grouped_bars(entries: list[Entry], value: Callable[[Entry], float],
                  err: Callable[[Entry], tuple[float, float]] | None, colors: dict[str, Any],
                  ylabel: str, title: str, log: bool | None, out_dir: Path, name: str,
                  notes: list[str] | None = None) -> Path | None:
    es = _usable([e for e in entries if e.ok], title, value, notes)
    if not es:
        return None
    plt = plt_module()
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
    return save(fig, out_dir, name)


def plot_noise(runs: list[tuple[Run, list[RunCell]]], out_dir: Path) -> Path | None:
    """Probe GFLOP/s round by round, per run (log scale: contention moves it by 10x and more)."""
    series = []
    for run, _ in runs:
        flop = (run.doc.get("probe") or {}).get("flop") if isinstance(run.doc.get("probe"), dict) else None
        if not isinstance(flop, (int, float)) or flop <= 0:
            continue
        pts = [(i, flop / s / 1e9) for i, s in enumerate(run.probe_s) if s]
        if pts:
            series.append((run_name(run.doc), pts, run.best_gflops))
    if not series:
        return None
    plt = plt_module()
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
    return save(fig, out_dir, "noise.png")


def figures(entries: list[Entry], runs: list[tuple[Run, list[RunCell]]], out_dir: Path,
            notes: list[str]) -> list[tuple[Path, str, str]]:
    """Every plot the report has data for, written into out_dir: (path, title, caption); what
    a plot left out is named in `notes`."""
    colors = color_of(_labels(entries))
    plot_notes = notes

    def eff(e: Entry) -> float:
        return 100 * e.efficiency

    figs: list[tuple[Path | None, str, str]] = [
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
    figs.append((plot_noise(runs, out_dir), "Machine noise",
                    "GFLOP/s of the noise probe (a fixed float32 GEMM timed in every round beside "
                    "the backends), round by round over each run; log scale."))
    return [f for f in figs if f[0] is not None]  # type: ignore[misc]
