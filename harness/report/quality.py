"""The report's training-to-quality part: `lstmbench report` given quality results files
(schema `lstmbench.quality`, written by `run --matrix quality*`, harness.training.quality) renders,
per file, the validation-loss curves against steps and against training seconds (one line
per backend), a time-to-target table (steps and seconds to the target, final validation loss,
bits per character; for a run in lanes, each backend's lane and the backends that trained
beside it, the context of its seconds) and every backend's sample.

report.page owns the output folder (new or a previous report's, assembled in a
temporary folder and renamed into place): `split_inputs` takes the quality files out of its
inputs before anything is written, and `sections` returns the headings, tables, figures and
samples its renderers write. A malformed file ends the command with one line (UsageError,
exit 2); a backend that failed, or whose record lacks a field or holds a NaN loss, is left out
of the plots and table with a note saying why."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from impls.files import write_atomic

from ..errors import UsageError
from ..results.schema import QUALITY_SCHEMA as SCHEMA, QUALITY_VERSIONS as SCHEMA_VERSIONS
from ..results.store import is_results_file
from .plots import plt_module, save
from .tables import Table
_CURVE_KEYS = ("step", "seconds", "val_loss")
_NUMBERS = ("steps", "final_val_loss", "final_val_bpc", "median_step_s")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from None


def is_quality(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA


def load_quality(path: Path) -> dict[str, Any]:
    """A quality results file, checked enough to be drawn; one-line UsageError otherwise."""
    doc = _read_json(path)
    if not is_quality(doc):
        raise UsageError(f"{path}: not a quality results file (no schema {SCHEMA!r})")
    if doc.get("schema_version") not in SCHEMA_VERSIONS:
        raise UsageError(f"{path}: quality schema version {doc.get('schema_version')!r}; this "
                         f"lstmbench reads {', '.join(map(str, SCHEMA_VERSIONS))}")
    matrix = doc.get("matrix")
    if not isinstance(matrix, dict) or not _finite(matrix.get("target_loss")):
        raise UsageError(f"{path}: quality file without a matrix target_loss")
    if not isinstance(doc.get("backends"), dict):
        raise UsageError(f"{path}: quality file without a backends table")
    doc["_path"] = str(path)
    return doc


def split_inputs(paths: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(quality documents, the other inputs for the benchmark report). A folder's quality
    files are taken; the folder stays an input only where it also holds benchmark results."""
    quality: list[dict[str, Any]] = []
    rest: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            # only regular files: a FIFO would block the read (results.expand_paths notes it)
            found = sorted(q for q in p.rglob("*.json") if not q.name.startswith(".") and q.is_file())
            qs = [q for q in found if _quality_file(q)]
            quality += [load_quality(q) for q in qs]
            if not qs or any(is_results_file(q) for q in found):
                rest.append(str(p))
        elif p.suffix == ".json" and p.is_file() and _quality_file(p):
            quality.append(load_quality(p))
        else:
            rest.append(str(p))
    return quality, rest


def _quality_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)  # the schema is the first key json.dumps writes
    except OSError:
        return False
    return b'"lstmbench.quality"' in head


def problem(r: Any) -> str | None:
    """Why a backend's record cannot be drawn, or None."""
    if not isinstance(r, dict):
        return "not a record"
    if r.get("status") != "ok":
        err = str(r.get("error") or "").splitlines()
        return f"{r.get('status', 'no status')}" + (f": {err[0][:160]}" if err else "")
    curve = r.get("curve")
    if not isinstance(curve, list) or not curve:
        return "no curve recorded"
    for point in curve:
        if not isinstance(point, dict) or any(k not in point for k in _CURVE_KEYS):
            return f"a curve point lacks one of {', '.join(_CURVE_KEYS)}"
        bad = [k for k in _CURVE_KEYS if not _finite(point[k])]
        if bad:
            return f"{bad[0]} is {point[bad[0]]!r} at step {point.get('step')}"
    for k in _NUMBERS:
        if k not in r:
            return f"missing field {k}"
        if not _finite(r[k]):
            return f"{k} is {r[k]!r}"
    return None


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if _finite(v) else "-"


def _stem(doc: dict[str, Any]) -> str:
    stem = Path(doc.get("_path", "quality")).stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)


def time_to_target_table(doc: dict[str, Any]) -> Any:
    """One row per drawable backend, in the file's order."""
    target = doc["matrix"]["target_loss"]
    head = ["backend", "optimiser", f"steps to {target:g}", "s to target (measured)",
            "s to target (estimate)", "final val loss (nats)", "bits/char", "best val loss",
            "chars/s"]
    drawable = {b: r for b, r in doc["backends"].items() if not problem(r)}
    # files from lanes (run --jobs) say where each backend ran and beside what: the seconds'
    # context; files from before the lanes have no such fields, and no such columns
    lanes = any(isinstance(r.get("lane"), int) for r in drawable.values())
    if lanes:
        head += ["lane", "trained beside"]
    rows = []
    for b, r in drawable.items():
        dev = r.get("optimizer_deviation")
        row = [b, "native: " + str(dev).split(":")[0] if dev else "docs/SPEC.md §4",  # the cause, short
               _fmt(r.get("steps_to_target"), "d") if r.get("steps_to_target") is not None else "not reached",
               _fmt(r.get("seconds_to_target"), ".1f"), _fmt(r.get("estimate_s_to_target"), ".1f"),
               _fmt(r["final_val_loss"], ".4f"), _fmt(r["final_val_bpc"], ".3f"),
               _fmt(r.get("best_val_loss"), ".4f"), _fmt(r.get("chars_per_s"), ",.0f")]
        if lanes:
            beside = r.get("concurrent_with")
            session = f" (session {r['session']})" if r.get("session") else ""
            row += [(_fmt(r.get("lane"), "d") if isinstance(r.get("lane"), int) else "-") + session,
                    ", ".join(map(str, beside)) if isinstance(beside, list) and beside else "-"]
        rows.append(row)
    return Table(head, rows, right={2, 3, 4, 5, 6, 7, 8})


def plot_curves(doc: dict[str, Any], out_dir: Path) -> Path | None:
    """Validation loss against steps (left) and against training seconds (right), one line
    per backend; dashed: a native optimiser formula; the target as a grey line."""
    ok = {b: r for b, r in doc["backends"].items() if not problem(r)}
    if not ok:
        return None
    plt = plt_module()
    import matplotlib
    # tab10 for up to ten curves; more (11 backends train) would repeat a colour: tab20
    cmap = matplotlib.colormaps["tab10" if len(ok) <= 10 else "tab20"]
    ncol = cmap.N
    target = doc["matrix"]["target_loss"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, (b, r) in enumerate(ok.items()):
        steps = [p["step"] for p in r["curve"]]
        secs = [p["seconds"] for p in r["curve"]]
        loss = [p["val_loss"] for p in r["curve"]]
        style = dict(color=cmap(i % ncol), lw=1.6, marker="o", ms=2.5,
                     ls="--" if r.get("optimizer_deviation") else "-",
                     label=b + (" (native optimiser)" if r.get("optimizer_deviation") else ""))
        axes[0].plot(steps, loss, **style)
        axes[1].plot(secs, loss, **style)
    lows = [p["val_loss"] for r in ok.values() for p in r["curve"]]
    # the first evaluation (ln V, near-uniform outputs) would flatten everything after it
    later = sorted(p["val_loss"] for r in ok.values() for p in r["curve"][1:]) or lows
    top = later[int(0.97 * (len(later) - 1))] if len(later) > 3 else max(lows)
    lo = min(min(lows), target)
    for ax, xlabel in zip(axes, ("optimiser steps", "training seconds (steps only)")):
        ax.axhline(target, color="0.4", lw=1, ls=":")
        ax.text(0.99, target, f"target {target:g}", color="0.3",
                va="bottom", ha="right", transform=ax.get_yaxis_transform(), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylim(lo - 0.03 * (top - lo), top + 0.05 * (top - lo))
    axes[0].set_ylabel("validation loss (nats/char)")
    m = doc["matrix"]
    axes[0].set_title(f"against steps ({m.get('preset')} on {m.get('corpus')})")
    axes[1].set_title("against training time")
    axes[1].legend(fontsize=8, loc="upper right")
    return save(fig, out_dir, f"{_stem(doc)}-curves.png")


def _summary(doc: dict[str, Any]) -> str:
    m, model, corpus = doc["matrix"], doc.get("model") or {}, doc.get("corpus") or {}
    opt = model.get("optimizer") or {}
    machine = (doc.get("machine") or {}).get("slug", "?")
    return (f"{Path(doc['_path']).name}: matrix {m.get('name')}, preset {m.get('preset')} "
            f"({model.get('num_layers', '?')}x{model.get('hidden_size', '?')}, B={model.get('batch_size', '?')}, "
            f"T={model.get('seq_len', '?')}, {opt.get('name', '?')} lr {opt.get('lr', '?')}) on "
            f"{m.get('corpus')} (V={model.get('vocab_size', corpus.get('vocab_size', '?'))}), "
            f"{m.get('steps')} steps per backend, validation on {m.get('val_chars')} characters every "
            f"{m.get('eval_every')} steps, target {m.get('target_loss')} nats; machine {machine}, "
            f"threads {doc.get('threads')}"
            + (f", {doc['jobs']} lane(s) on {doc.get('cores', '?')} cores" if isinstance(doc.get("jobs"), int) else "")
            + f", created {doc.get('created')}"
            + (f"; resumed: {len(doc.get('sessions') or [])} sessions" if doc.get("resumed") else "")
            + ("; INTERRUPTED: only the backends finished are recorded" if doc.get("interrupted") else ""))


def sections(docs: list[dict[str, Any]], out_dir: Path) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The report's sections for the quality files, in the (heading, [(kind, payload)]) form
    harness.report renders; also writes each file's curve plot and table (Markdown) there."""
    out: list[tuple[str, list[tuple[str, Any]]]] = []
    for doc in docs:
        items: list[tuple[str, Any]] = [("note", _summary(doc))]
        skipped = [f"{b}: left out ({problem(r)})" for b, r in doc["backends"].items() if problem(r)]
        fig = plot_curves(doc, out_dir)
        if fig is not None:
            items.append(("fig", (fig, "Validation loss against steps and against seconds",
                                  "Validation loss (nats/char) at every evaluation; left against "
                                  "optimiser steps (free of timing noise), right against training "
                                  "seconds (steps only: evaluation and start-up left out; measured "
                                  "on the machine as it was). Dashed: a backend running its "
                                  "framework's native optimiser formula; dotted: the target.")))
        table = time_to_target_table(doc)
        if table.rows:
            items += [("note", "Steps to target: the first evaluation at or under it (resolution: "
                               f"{doc['matrix'].get('eval_every')} steps). Seconds: the measured "
                               "sum of training steps up to it, and the estimate steps x median "
                               "step time, which contention moves less."
                               + (f" Noise, as the run states it: {doc['noise']}."
                                  if isinstance(doc.get("noise"), str) else "")), ("table", table)]
            write_atomic(out_dir / f"{_stem(doc)}-table.md", (table.markdown() + "\n").encode())
        band = (doc.get("comparison") or {}).get("spec_band")
        if isinstance(band, list) and len(band) == 2 and all(map(_finite, band)):
            lines = [f"Final validation loss of the backends following docs/SPEC.md §4: {band[0]:.4f} .. {band[1]:.4f} nats."]
            for b, d in ((doc.get("comparison") or {}).get("deviating") or {}).items():
                if isinstance(d, dict) and _finite(d.get("final_val_loss")) and _finite(d.get("outside_band_by")):
                    lines.append(f"{b} (native optimiser): {d['final_val_loss']:.4f}, "
                                 + ("inside that band" if d["outside_band_by"] == 0
                                    else f"{d['outside_band_by']:.4f} outside it"))
            items.append(("list", lines))
        if skipped:
            items.append(("list", skipped))
        samples = [(b, r["sample"]) for b, r in doc["backends"].items()
                   if not problem(r) and isinstance(r.get("sample"), str) and r["sample"]]
        for b, s in samples:
            items += [("note", f"Sample from {b} after {doc['backends'][b]['steps']} steps "
                               "(temperature 1, the same uniforms for every backend):"), ("pre", s)]
        out.append((f"Training to quality: {doc['matrix'].get('name')} ({Path(doc['_path']).name})", items))
    return out
