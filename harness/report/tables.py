"""The report's tables (each renders as Markdown and as HTML): machine and software per run, the
backends' versions and kernels, the per-cell results, each workload's ratios to its fastest
backend, the machine's noise, the cells that did not run, and the equivalence table of a
`check --json` report."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from impls import registry

from ..engine import explain
from ..results.model import Run, RunCell
from ..results.schema import CHECK_QUANTITIES as QUANTITIES, check_tolerance, check_worst, load_check_report
from .console import fmt_time
from .entries import Entry, groups as _groups, labels as _labels
from .frontier import frontier, ratio_text


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


def si(x: float, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for f, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= f:
            return f"{x / f:.3g} {p}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


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
                     si(e.cps) + (" noisy" if e.noisy else ""),
                     f"{si(e.cps_lo)} - {si(e.cps_hi)}", fmt_time(e.estimate_s, 2),
                     f"{e.us_per_char:.1f}" if math.isfinite(e.us_per_char) else "-",
                     fmt_time(float(np.median(e.first_steps)), 2) if e.first_steps else "-",
                     f"{e.gflops:.3g}", _eff(e),
                     _mib(max(e.device_bytes) if e.device_bytes else (max(e.rss) if e.rss else None)),
                     f"{e.clean_rounds} of {len(e.samples)}" + (f" ({e.runs} runs)" if e.runs > 1 else "")])
        css.append(["warn" if e.noisy else "", "warn" if e.noisy else ""] + [""] * 5
                   + ["bad" if math.isfinite(e.efficiency) and e.efficiency > 1 else ""] + ["", ""])
    return Table(["backend", "chars/s", "95% interval chars/s", "step time", "us/char", "first step",
                  "GFLOP/s", "efficiency", "peak memory", "clean rounds"], rows,
                 right=set(range(1, 10)), css=css)


def run_name(doc: dict[str, Any]) -> str:
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
            rows = [[b, row[b], si(float(cps[b])) if isinstance(cps.get(b), (int, float)) else "-"]
                    for b in order]
            css = [["", "warn" if "noisy" in r[1] else ("ok" if "fastest" in r[1] else
                                                         ("bad" if not r[1][:1].isdigit() else "")), ""]
                   for r in rows]
            tables.append((wid, Table(["backend", "time ratio to the fastest [95% CI]", "chars/s"], rows,
                                      {1, 2}, css)))
        out.append((run_name(run.doc), tables))
    return out


def frontier_tables(runs: list[tuple[Run, list[RunCell]]]) -> list[tuple[str, list[tuple[str, Table]]]]:
    """Per run, per workload: each framework's fastest backend (harness.report.frontier) with
    its time ratio to the workload's fastest backend and the interval from the paired rounds
    (the workload's stored ratios, as ratio_tables shows them), its efficiency against the run's
    peak GEMM, chars/s and, for generation, us/char; fastest first."""
    out = []
    for run, rcs in runs:
        stored = {w.get("id"): w.get("ratios") for w in (run.doc.get("workloads") or [])
                  if isinstance(w, dict) and isinstance(w.get("ratios"), dict)}
        peak = run.doc.get("peak")
        peak = peak.get("gflops") if isinstance(peak, dict) else None
        groups: dict[str, list[RunCell]] = {}
        for rc in rcs:
            c = rc.cell
            groups.setdefault(f"{c.preset} {c.mode} B{c.batch} T{c.seq_len}", []).append(rc)
        tables = []
        for wid, members in groups.items():
            ratios = stored.get(members[0].workload) if members[0].workload else None
            cells = [(rc.name, rc.result if rc.measured or rc.status == "unsupported"
                      else {**rc.result, "status": rc.status}) for rc in members]
            rows_f = frontier(cells, ratios, peak if isinstance(peak, (int, float)) else None)
            if not rows_f:
                continue
            gen = members[0].cell.mode == "generate"
            rows, css = [], []
            for f in rows_f:
                eff = "-" if f.efficiency is None else f"{100 * f.efficiency:.2f}%" + (
                    " (above 100%: measurement error)" if f.efficiency > 1 else "")
                row = [f.framework, f.backend + (f" (of {f.of})" if f.of > 1 else ""), ratio_text(f), eff]
                if gen:
                    row.append("-" if f.us_per_char is None else f"{f.us_per_char:.1f}")
                row.append(si(f.chars_per_s) if f.status == "ok" else "-")
                rows.append(row)
                css.append(["", "", "warn" if f.noisy else "ok" if f.fastest else
                            "bad" if f.status != "ok" else ""] + [""] * (len(row) - 3))
            head = ["framework", "its fastest backend", "time ratio to the fastest [95% CI]",
                    "efficiency"] + (["us/char"] if gen else []) + ["chars/s"]
            tables.append((wid, Table(head, rows, set(range(2, len(head))), css)))
        out.append((run_name(run.doc), tables))
    return out


def kinds_tables(runs: list[tuple[Run, list[RunCell]]]) -> tuple[list[str], list[tuple[str, Table]]]:
    """Where the runs are of several machines (a cluster run's kinds, or any machines): per
    workload, each backend's ratio to the fastest and chars/s on each machine, side by side,
    from each machine's latest run; and the files those columns come from. Empty where the
    runs are of one machine."""
    latest: dict[str, tuple[Run, list[RunCell]]] = {}
    for run, rcs in runs:  # runs come in date order: the last of a machine wins
        latest[run.machine] = (run, rcs)
    if len(latest) < 2:
        return [], []
    kinds = list(latest)
    per_kind = {k: dict(ratio_tables([latest[k]])[0][1]) for k in kinds}
    wids: list[str] = []
    for k in kinds:
        wids += [w for w in per_kind[k] if w not in wids]
    out = []
    for wid in wids:
        cells: dict[str, dict[str, list[str]]] = {}  # backend -> kind -> [ratio, chars/s]
        for k in kinds:
            t = per_kind[k].get(wid)
            for r in (t.rows if t else []):
                cells.setdefault(r[0], {})[k] = r[1:]
        order = sorted(cells, key=lambda b: min(_ratio_key(v[0]) for v in cells[b].values()))
        rows = [[b, *[x for k in kinds for x in cells[b].get(k, ["-", "-"])]] for b in order]
        head = ["backend", *[x for k in kinds for x in (f"{k}: ratio [95% CI]", f"{k}: chars/s")]]
        out.append((wid, Table(head, rows, set(range(1, len(head))))))
    return [f"{k}: {run_name(latest[k][0].doc)}" for k in kinds], out


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
        rows.append([run_name(run.doc), g(st.get("gflops")), g(p.get("best_gflops")), g(p.get("median_gflops")),
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
    tol: dict[str, float] = {}
    rows, css, notes = [], [], []
    for name, entry in backends.items():
        if entry.get("status") == "unavailable":
            rows.append([name] + ["-"] * len(QUANTITIES) + [f"unavailable: {entry.get('reason', '')}"])
            css.append([""] * (len(QUANTITIES) + 1) + ["bad"])
            continue
        cells, ccls = [], []
        for q in QUANTITIES:
            t = check_tolerance(entry, q)
            if t is not None:
                tol[q] = max(tol.get(q, 0.0), t)
            worst, status = check_worst(entry, q)
            if status == "none":
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
