"""What the in-run comparison (harness.judge.duet) makes of real runs with two variants: the table of
docs/measurement.md, "Duet measurement", recomputed from results files.

    python benchmarks/duet_experiment.py RESULTS.json [...] [--truth 1.2] [--threshold 10%]

Per file (one `run --variant a --variant b...` each): its processes per variant, threads and
noise; over its cells, the marks of b against a, the median and worst |log ratio - log truth|,
and what the between-process terms came to: the raw scatter of the per-process centres (their
SD over processes, median over cells), the pooled tau and kappa (harness.judge.duet.Pool), for both
candidate centres (the median of the paired per-round log ratios, and the ratio of the two
minima). `--truth` is the known ratio b/a (1 for identical variants; the injected
LSTMBENCH_INJECT_SLOWDOWN otherwise); the default reads it from variant b's environment."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.commands.ab import compare_cells  # noqa: E402
from harness.judge import duet  # noqa: E402
from harness.results import load_results  # noqa: E402
from harness.results.model import read_run  # noqa: E402


def truth_of(doc: dict, new: str) -> float:
    env = ((doc.get("variants") or {}).get(new) or {}).get("env") or {}
    return float(env.get("LSTMBENCH_INJECT_SLOWDOWN") or 1.0)


def centres_sd(doc: dict, base: str, new: str, centre: str) -> list[float]:
    """Per cell, the SD over processes of the per-process centres (log)."""
    cells = {(c["workload"], c["cell"]["backend"], c["variant"]): c["result"] for c in doc["cells"]}
    out = []
    for (w, b, v), r in cells.items():
        if v != base or r.get("status") != "ok" or cells.get((w, b, new), {}).get("status") != "ok":
            continue
        p = duet.paired(duet.pair_rounds(r["samples"], cells[(w, b, new)]["samples"]), centre, reps=200)
        if p is not None and p.processes > 1:
            out.append(float(p.centres.std(ddof=1)))
    return out


def summary(path: str, truth: float | None, threshold: float) -> list[str]:
    doc = load_results(path)
    names = list(doc.get("variants") or {})
    if len(names) < 2:
        return [f"{path}: no variants"]
    base, new = names[0], names[1]
    t = truth if truth is not None else truth_of(doc, new)
    noise = doc.get("noise") or {}
    rs = noise.get("round_spread") or {}
    lines = [f"{Path(path).name}: {new}/{base}, truth {t:g}, processes {doc.get('processes')}, threads "
             f"{doc.get('threads')}, noise {noise.get('verdict')}, foreign up to "
             f"{noise.get('foreign_cores_max') or 0:.2f} cores, cells' median round {rs.get('median', 0):.2f}x fastest, "
             f"wall {doc.get('wall_s')} s"]
    for centre in ("median", "min"):
        es = compare_cells(read_run(path)[1], base, new, threshold, centre=centre)
        marks = {m: sum(e["mark"] == m for e in es) for m in ("faster", "slower", "unchanged", "inconclusive", "failed")}
        err = [abs(math.log(e["ratio"] / t)) for e in es if e["ratio"]]
        cover = sum(1 for e in es if e["ratio"] and e["ci"][0] <= t <= e["ci"][1])
        width = [math.log(e["ci90"][1] / e["ci90"][0]) / 2 for e in es if e["ratio"]]
        sds = centres_sd(doc, base, new, centre)
        taus = [e for e in es if e.get("tau") is not None]
        lines.append(
            f"  centre {centre:6}: " + ", ".join(f"{v} {k}" for k, v in marks.items() if v)
            + f" of {len(es)}; |log(ratio/truth)| median {100 * np.median(err):.1f}% worst {100 * max(err):.1f}%; "
            f"95% CI covers truth {cover}/{len(es)}; 90% half-width median {100 * np.median(width):.1f}%"
            + (f"; process centres' SD median {100 * np.median(sds):.1f}%" if sds else ""))
        if taus:
            lines[-1] += (f"; tau {100 * taus[0]['tau']:.1f}%" + (" (assumed)" if taus[0]["tau_assumed"] else ""))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--truth", type=float, help="the known ratio new/base (default: from variant b's env)")
    ap.add_argument("--threshold", default="10%")
    a = ap.parse_args()
    th = float(a.threshold.rstrip("%")) / 100
    for f in a.files:
        print("\n".join(summary(f, a.truth, th)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
