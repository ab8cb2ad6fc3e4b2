"""What `lstmbench run` and its relatives say on the console: a cell's result in one line, the
summary table (each backend's time ratio to the fastest per workload), the machine's noise
report; what `compare OLD NEW` says of its two sides and its judgement (harness.judge.crossrun
judges, this renders); and the plain-text table and time format that compare and ab print. The
runner (harness.session.benchmark) measures; RunConsole, its reporter here, tells."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ..engine import explain, stats
from ..engine.assemble import workload_id
from ..engine.bench import Cell
from ..envs.variants import participant
from ..judge.crossrun import Comparison
from ..judge.marks import pct
from ..results.model import Side
from .frontier import frontier, summary_line


def entry_name(c: dict[str, Any]) -> str:
    """A results file's cell entry as a participant name: BACKEND, or BACKEND@VARIANT."""
    return participant(c["cell"]["backend"], c.get("variant"))


class RunConsole:
    """The run's reporter (harness.session.benchmark.Reporter): each workload's cells as they
    finish, the NOISY rule where it first applies, a busy neighbour; at the end, where
    `summary`, the summary table and the noise report (`lstmbench ab` prints its own)."""

    def __init__(self, summary: bool = True) -> None:
        self.summary = summary

    def workload(self, doc: dict[str, Any], record: dict[str, Any], log: Callable[[str], None],
                 once: Callable[[str, str], None]) -> None:
        for c in record["cells"]:
            log(f"      {entry_name(c):15} " + describe(c["result"]))
        if any(c["result"].get("noisy") for c in record["cells"]):  # the rule, where NOISY first shows
            once("noisy", "      " + explain.noisy_rule(explain.min_clean_of(doc)))
        busy = record["workload"].get("foreign_cores")
        if busy is not None and busy >= stats.FOREIGN_LIMIT:
            log(f"      other processes kept {busy:.2f} cores busy during this workload: "
                "its figures are not judged by compare")

    def finished(self, doc: dict[str, Any], log: Callable[[str], None]) -> None:
        if self.summary:
            log("")
            log(summary_table(doc))
            log("")
            log(noise_report(doc))


def noise_report(doc: dict[str, Any]) -> str:
    """How noisy the machine was: probe GFLOP/s at start and end, contended share, verdict."""
    n = doc.get("noise") or {}
    p = doc.get("probe") or {}
    lines = [f"machine noise: {explain.verdict_words(n)}"]
    for k in ("start", "end"):
        s = n.get(k) or {}
        if s.get("gflops"):
            lines.append(f"  {k:5}: probe {s['gflops']:.1f} GFLOP/s best, cv {100 * s['cv']:.0f}%")
    if not p.get("median_gflops"):  # no workload timed a round (every cell failed or was skipped)
        lines.append("  during: no probe round ran during the workloads")
    elif p.get("best_gflops"):
        lines.append(f"  during: probe best {p['best_gflops']:.1f}, median {p['median_gflops']:.1f} GFLOP/s "
                     f"over {len([x for x in p['rounds_s'] if x])} rounds; "
                     f"{100 * n.get('contended_fraction', 0):.0f}% of rounds contended "
                     f"(probe > {stats.CLEAN_FACTOR}x best), {n.get('collapse_rounds', 0)} collapse rounds")
    rs = n.get("round_spread") or {}
    if rs.get("median"):
        lines.append(f"  cells' own rounds: the median cell's median round took {rs['median']:.2f}x its fastest "
                     f"(90% of cells within {rs['q90']:.2f}x); the probe feels such swings only in part")
    if n.get("foreign_cores_max") is not None:
        lines.append(f"  other processes on this machine: up to {n['foreign_cores_max']:.2f} cores busy "
                     f"during a workload" + (f" (at or above {stats.FOREIGN_LIMIT}: compare will not "
                                             "judge those workloads)" if n["foreign_cores_max"] >= stats.FOREIGN_LIMIT else ""))
    pk = doc.get("peak") or {}
    if pk.get("gflops"):
        lines.append(f"  efficiency denominator: {explain.peak_words(pk)}")
    flagged = [c for c in doc.get("cells", []) if c["result"].get("efficiency_flag")]
    for c in flagged:
        lines.append(f"  FLAGGED {c['cell']['backend']} {c['workload']}: efficiency "
                     f"{100 * c['result']['efficiency']:.0f}% ({c['result']['efficiency_flag']})")
    return "\n".join(lines)


def describe(res: dict[str, Any]) -> str:
    if res.get("status") != "ok":
        return f"{res.get('status')}: {res.get('error')}"
    lo, hi = res["ci_s"]
    extra = f", {res['us_per_char']:.1f} us/char" if "us_per_char" in res else ""
    noisy = "  NOISY" if res.get("noisy") else ""
    return (f"{res['chars_per_s']:,.0f} chars/s ({res['estimate_s'] * 1e3:.3f} ms "
            f"[{lo * 1e3:.3f}, {hi * 1e3:.3f}], {res['clean_rounds']} of {len(res['samples'])} rounds clean)"
            f"{extra}, first step {res['first_step_s']:.2f} s{noisy}")


def summary_table(doc: dict[str, Any]) -> str:
    """Per workload: each backend's time ratio to the fastest with its interval (paired
    rounds), then characters per second; noisy figures are marked, never shown as clean; then
    one line, each framework at its fastest (harness.report.frontier)."""
    n_clean = explain.min_clean_of(doc)
    lines = [f"time ratio to the fastest backend per workload (95% interval, paired rounds); "
             f"chars/s from the {doc.get('estimator', {}).get('name', '?')} estimator; * = noisy"
             + (f" (fewer than {n_clean} clean rounds: the NOISY rule above)" if n_clean else "")]
    by_w: dict[str, list[dict[str, Any]]] = {}
    for c in doc["cells"]:
        by_w.setdefault(c.get("workload") or workload_id(Cell.from_dict(c["cell"])), []).append(c)
    ratios = {w["id"]: w.get("ratios", {}) for w in doc.get("workloads", [])}
    for wid, cs in by_w.items():
        lines.append(wid)
        rs = ratios.get(wid, {})
        order = sorted(cs, key=lambda c: (rs.get(entry_name(c), {}).get("ratio", float("inf"))))
        for c in order:
            b, res = entry_name(c), c["result"]
            if res.get("status") != "ok":
                lines.append(f"  {b:15} {res.get('status')}: {str(res.get('error'))[:70]}")
                continue
            r = rs.get(b)
            mark = "*" if res.get("noisy") or (r and r.get("noisy")) else " "
            rtxt = f"{r['ratio']:7.2f}x [{r['lo']:.2f}, {r['hi']:.2f}]" if r else f"{'':7}"
            eff = res.get("efficiency")
            efft = f"{100 * eff:5.1f}%" if eff is not None else ""
            if res.get("efficiency_flag"):
                efft += " (>100%: measurement error)"
            lines.append(f"  {b:15} {rtxt:26}{mark} {res['chars_per_s']:>14,.0f} chars/s"
                         f"{' NOISY' if res.get('noisy') else ''}  eff {efft}")
        front = frontier([(entry_name(c), c["result"]) for c in cs], rs,
                         (doc.get("peak") or {}).get("gflops"))
        if front:
            lines.append(f"  each framework at its fastest: {summary_line(front)}")
    return "\n".join(lines)


def fmt_time(s: float | None, digits: int = 3) -> str:
    """Seconds in the unit that suits them (us, ms, s: `digits` decimals); "-" for none."""
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.{digits}f} s"


def text_table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(f"{c:>{w}}" if i in right else f"{c:<{w}}"
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [line(head), line(["-" * w for w in widths]), *map(line, rows)]


# ---- compare OLD NEW --------------------------------------------------------------------------

def sides_lines(a: Side, b: Side, estimator: str) -> list[str]:
    """What compare says of its two sides before judging: files, machines, estimators, each
    run's noise."""
    out = [f"old: {len(a.files)} file(s), machine {', '.join(sorted(a.machines))}",
           f"new: {len(b.files)} file(s), machine {', '.join(sorted(b.machines))}"]
    if a.machines != b.machines:
        out.append("note: the two sides ran on different machines; cells are paired all the same")
    ests = {r.estimator for r in a.runs + b.runs}
    if len(ests) > 1:
        out.append(f"note: the runs' headline estimators differ ({', '.join(sorted(ests))}); both sides "
                   f"are judged with the {estimator} ({stats.ESTIMATORS.get(estimator, ('', estimator))[1]})")
    for name, s in (("old", a), ("new", b)):
        for r in s.runs:
            if not r.probe_s:
                out.append(f"note: {name} {Path(r.path).name} has no noise probe (a v1 file, or run without "
                           "one): its noise floor is unknown")
            else:
                out.append(f"{name} {Path(r.path).name}: noise {r.verdict or '?'}, probe best "
                           f"{r.best_gflops or 0:.0f} GFLOP/s, floor {pct(r.floor or 0)}, "
                           f"contended {pct(r.contended or 0)} of rounds")
    return out


def comparison_lines(cmp: Comparison) -> list[str]:
    """compare's judgement as it prints it: the run-wide notes, the judged cells' table, the
    cells not compared, incomparable or on one side only, the counts and what to do next."""
    out: list[str] = []
    if cmp.speeds:
        out.append(f"note: {cmp.speeds}" + ("; normalised by each round's probe time" if cmp.normalize else ""))
    pooled = sum(len(p.runs) > 1 for s in (cmp.old, cmp.new) for p in s.cells.values())
    if pooled:
        out.append(f"note: {pooled} cell(s) were measured in several runs on one side; runs are resampled "
                   "in the interval")
    if cmp.run_spread is not None:
        out.append(f"between-run spread: cells' ratios scatter {pct(math.expm1(cmp.run_spread))} (robust SD) "
                   "about their common shift; every interval is at least +-1.96 of that wide")
    out += _judged_table(cmp)
    for name, head, title in (
            ("not ok", ["old", "new"], "not compared (a side has no successful measurement):"),
            ("incomparable", ["why"], "incomparable (same backend, mode, preset and batch, but a different cell):"),
            ("only", ["side"], "on one side only:")):
        rows = [_cell_cols(o.pooled) + ([o.old.status(), o.new.status()] if name == "not ok"  # type: ignore[union-attr]
                                        else [o.verdict.reason]) for o in cmp.table(name)]
        if rows:
            out += ["", title, *text_table(["backend", "mode", "preset", "batch", *head], rows, {3})]
    return out + _counts_lines(cmp)


def _cell_cols(pl: Any) -> list[str]:
    c = pl.cell
    return [pl.name, c.mode, c.preset, str(c.batch)]


def _judged_table(cmp: Comparison) -> list[str]:
    judged = cmp.table("judged")
    if not judged:
        return []
    est, t = cmp.estimator, cmp.threshold
    fmt = (lambda x: f"{x:.4g}" if math.isfinite(x) else "-") if cmp.normalize else fmt_time
    rows = []
    for o in judged:
        v = o.verdict
        rows.append(_cell_cols(o.old) + [fmt(v.old_s), fmt(v.new_s), f"{v.ratio:.3f} [{v.lo:.3f}, {v.hi:.3f}]",
                                         f"[{v.eq_lo:.3f}, {v.eq_hi:.3f}]",
                                         v.mark.upper() if v.mark == "slower" else v.mark, v.reason or v.decided_by])
    head = ((f"per-step time / the same round's probe time, {est} over the clean rounds" if cmp.normalize
             else f"per-step time, {est} of the " + ("rounds" if stats.uses_every_round(est) else "clean rounds"))
            + f" (new/old ratio > 1 is slower; threshold {t:.0%}, hierarchical bootstrap intervals):")
    rule = (f"  slower / faster: the 95% interval lies above / below 1 and the change is beyond "
            f"+-{t:.0%}, both runs' noise floors and what the machine's own move explains; "
            f"unchanged: the 90% interval lies within +-{t:.0%} (two one-sided 5% tests); "
            "else inconclusive, with the reason. `why` says which held.")
    return ["", head, rule, *text_table(["backend", "mode", "preset", "batch", "old", "new", "ratio [95% CI]",
                                         "90% CI", "mark", "why"], rows, {3, 4, 5, 6, 7})]


def _counts_lines(cmp: Comparison) -> list[str]:
    counts, only = cmp.counts, len(cmp.table("only"))
    out = ["", f"{counts['slower']} slower, {counts['faster']} faster, {counts['unchanged']} unchanged, "
               f"{counts['inconclusive']} inconclusive, {counts['incomparable']} incomparable"
               + (f", {counts['failed']} not ok" if counts["failed"] else "")
               + (f", {only} on one side only" if only else "")]
    if counts["inconclusive"]:
        out.append(f"note: {counts['inconclusive']} inconclusive cell(s) are neither passed nor failed; to "
                   "decide them, re-run on a quieter machine, with more --processes, or give several runs a side")
    judged = sum(counts[k] for k in ("slower", "faster", "unchanged", "inconclusive"))
    if judged and counts["inconclusive"] > judged / 2:
        out.append("note: most cells are inconclusive: between two runs this machine's drift hides changes of "
                   "this size. Measure both versions in ONE run and compare them there: `lstmbench ab OLD NEW` "
                   "(git revisions, folders or python:PATH), or `run --variant old:... --variant new:...` then "
                   "`compare RESULTS --variants old,new` (docs/measurement.md, \"Duet measurement\")")
    return out
