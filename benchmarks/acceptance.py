"""The measurement engine's acceptance on this machine (docs/measurement.md), as a script.

Given three `run --matrix smoke` results taken back to back, the middle one with a CPU-bound
process alongside, it prints what the measurement issue asks of them:

- `compare` first -> third: how many cells are marked faster/slower, unchanged, inconclusive;
- `compare` first -> contended: the same;
- per workload, each backend's ratio to the fastest, first against third: how many agree
  within 10%;
- `compare` first -> a copy of the first with every round 25% slower (probe rounds untouched):
  every cell should be `slower`, and `--fail-on-regression` should exit 1;
- the largest efficiency any of the runs reports (it must not pass 100%).

    python benchmarks/acceptance.py RUN1.json RUN2_CONTENDED.json RUN3.json

It runs `lstmbench compare` as a user would; nothing here measures anything."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

JUDGED = ("faster", "slower", "unchanged", "inconclusive")


def compare(old: Path, new: Path, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "c.json"
        rc = subprocess.run([sys.executable, "-m", "harness", "compare", str(old), str(new),
                             "--json", str(out), *extra], capture_output=True, text=True).returncode
        return rc, json.loads(out.read_text())["cells"] if out.exists() else []


def counts(cells: list[dict[str, Any]]) -> str:
    c = Counter(e["mark"] for e in cells if e["mark"] in JUDGED)
    n = sum(c.values())
    marked = c["faster"] + c["slower"]
    return (f"{n} judged: {marked} faster/slower, {c['unchanged']} unchanged "
            f"({100 * c['unchanged'] / max(n, 1):.0f}%), {c['inconclusive']} inconclusive")


def ratios(doc: dict[str, Any]) -> dict[tuple[str, str], float]:
    """Each workload's ratios to the fastest backend, recomputed from the recorded rounds by
    the current code (harness.engine.stats, harness.engine.assemble.workload_ratios), so that runs recorded by
    an earlier version of the estimator are judged the same way; a new run's stored
    `workloads[].ratios` are the same numbers."""
    from harness.engine import stats
    from harness.engine.assemble import workload_ratios
    out: dict[tuple[str, str], float] = {}
    for w in doc["workloads"]:
        cells = {}
        for c in doc["cells"]:
            res = c["result"]
            if c["workload"] != w["id"] or res.get("status") != "ok" or not res.get("samples"):
                continue
            est = stats.cell_estimate(res["samples"])
            cells[c["cell"]["backend"]] = {**res, "estimate_s": est["estimate_s"], "noisy": est["noisy"]}
        out.update({(w["id"], b): r["ratio"] for b, r in workload_ratios(cells).items()})
    return out


def slowed(doc: dict[str, Any], factor: float) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for c in doc["cells"]:
        for s in c["result"].get("samples") or []:
            s["s"] *= factor
        if c["result"].get("estimate_s"):
            c["result"]["estimate_s"] *= factor
    return doc


def max_efficiency(doc: dict[str, Any]) -> float:
    return max((c["result"].get("efficiency") or 0.0 for c in doc["cells"]), default=0.0)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[-2].strip(), file=sys.stderr)
        return 2
    p1, p2, p3 = (Path(a) for a in argv)
    docs = [json.loads(p.read_text()) for p in (p1, p2, p3)]
    print(f"first -> third:     {counts(compare(p1, p3)[1])}")
    print(f"first -> contended: {counts(compare(p1, p2)[1])}")
    r1, r3 = ratios(docs[0]), ratios(docs[2])
    common = sorted(set(r1) & set(r3))
    agree = [k for k in common if abs(r3[k] / r1[k] - 1) <= 0.10]
    print(f"ratios to the fastest, first vs third: {len(agree)} of {len(common)} within 10%")
    for k in common:
        if k not in agree:
            print(f"    {k[0]} {k[1]}: {r1[k]:.3f} -> {r3[k]:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        slow = Path(tmp) / "slow.json"
        slow.write_text(json.dumps(slowed(docs[0], 1.25)))
        rc, cells = compare(p1, slow, "--fail-on-regression")
        marks = Counter(e["mark"] for e in cells if e["mark"] in JUDGED)
        print(f"first -> first x1.25: {marks['slower']} of {sum(marks.values())} slower, "
              f"--fail-on-regression exit {rc}")
    print("largest efficiency reported: " + ", ".join(f"{100 * max_efficiency(d):.1f}%" for d in docs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
