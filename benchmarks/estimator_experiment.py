"""Which per-cell estimator to publish: an experiment, kept runnable (docs/measurement.md).

Measures a few cells with `lstmbench run`'s own interleaved engine (harness.session.benchmark: fresh workers
per repeat, rounds in random order with the GEMM noise probe), `--repeats` times; with
`--neighbour`, every other repeat runs beside a CPU-burning process (the contention that
collapsed torch's OpenMP threads 1000x in issue 8). For each candidate estimator it reports,
per backend, the spread of the estimate across repeats (max/min - 1 and the coefficient of
variation), and the same for the cross-backend ratio (paired rounds). The estimator whose
figures move least between repeats, quiet and contended alike, wins.

    .venv/bin/python benchmarks/estimator_experiment.py --repeats 6 --neighbour \
        --backends numpy-f32,torch --json /tmp/estimators.json

Candidates: median, min, q10, q25 of all rounds; the same over clean rounds only (probe within
1.5x of the best); and probe-normalised median (each round scaled by best probe / its probe).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.engine import stats  # noqa: E402
from impls.files import write_atomic  # noqa: E402
from harness.engine.matrix import SMOKE_SIZES, Matrix  # noqa: E402
from harness.engine.assemble import group_workloads  # noqa: E402
from harness.engine.kinds import KINDS  # noqa: E402
from harness.engine.participants import PROBE  # noqa: E402
from harness.engine.scheduler import ProbeState, Schedule, measure_workload  # noqa: E402
from harness.engine.workers import Launcher, WorkerParticipant, Workers  # noqa: E402

CLEAN_FACTORS = (1.2, 1.5, 2.0, 3.0)


def candidates(samples: list[dict[str, Any]], best_probe: float | None) -> dict[str, float]:
    s = np.array([x["s"] for x in samples])
    out = {f"{k}/all": stats.estimate(s, k) for k in ("median", "min", "q10", "q25")}
    for f in CLEAN_FACTORS:
        clean = np.array([x["s"] for x in samples if stats.mark_clean(x["probe_s"], best_probe, f)])
        for k in ("median", "q25", "q10"):
            out[f"{k}/clean{f}"] = stats.estimate(clean, k) if clean.size >= 3 else float("nan")
    if best_probe:
        norm = np.array([x["s"] * best_probe / x["probe_s"] for x in samples if x["probe_s"]])
        out["median/probe-normalised"] = float(np.median(norm)) if norm.size else float("nan")
    return out


def one_repeat(matrix: Matrix, backends: list[str], rounds: int, threads: int, seed: int) -> list[dict[str, Any]]:
    """Every workload of the matrix, interleaved, in fresh workers; per workload the raw data."""
    workers = Workers(Launcher({}, threads))
    probe = ProbeState(WorkerParticipant(workers, PROBE, 0, None, 300, kind=KINDS["probe"]))
    try:
        probe.participant.prepare()  # type: ignore[union-attr]
        for _ in range(10):
            probe.see(probe.participant.round())  # type: ignore[union-attr]
        out = []
        rng = np.random.default_rng(seed)
        for wid, cells in group_workloads(matrix.cells(backends, "cpu", "float32")):
            by_b = {c.backend: c for c in cells}
            wd = measure_workload(list(by_b), lambda b, p: WorkerParticipant(workers, b, p, by_b[b], 300),
                                  probe, Schedule(rounds=rounds, processes=1, min_clean=1, extra_rounds=0),
                                  rng)
            out.append({"workload": wid, "best_probe": probe.best_s,
                        "backends": {b: d.samples for b, d in wd.backends.items() if d.status == "ok"}})
        return out
    finally:
        workers.close()


def spread(v: list[float]) -> tuple[float, float]:
    a = np.array([x for x in v if np.isfinite(x)])
    if a.size < 2:
        return float("nan"), float("nan")
    return float(a.max() / a.min() - 1), float(a.std(ddof=1) / a.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="numpy-f32,torch")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--neighbour", action="store_true", help="odd repeats beside a CPU burner")
    ap.add_argument("--modes", default="train,eval", help="modes of the smoke-sized workload")
    ap.add_argument("--json", help="write every repeat's raw samples and the table here")
    a = ap.parse_args()
    backends = a.backends.split(",")
    matrix = Matrix("experiment", [{"name": "smoke", **SMOKE_SIZES, "seq_len": 16, "batch": [8],
                                    "gen_len": 30, "modes": a.modes.split(",")}])
    repeats = []
    for i in range(a.repeats):
        burner = None
        contended = a.neighbour and i % 2 == 1
        if contended:
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        t0 = time.monotonic()
        try:
            rep = one_repeat(matrix, backends, a.rounds, a.threads, seed=i)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
        print(f"repeat {i + 1}/{a.repeats}{' (with a CPU burner)' if contended else ''}: "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        repeats.append({"contended": contended, "workloads": rep})

    # table: estimator -> per (workload, backend) values across repeats, and ratios
    table: dict[str, dict[str, list[float]]] = {}
    for rep in repeats:
        for w in rep["workloads"]:
            est = {b: candidates(s, w["best_probe"]) for b, s in w["backends"].items()}
            for b, cand in est.items():
                for name, v in cand.items():
                    table.setdefault(name, {}).setdefault(f"{w['workload']} {b}", []).append(v)
            if len(est) >= 2:  # ratio of each backend to the first, from each estimator
                ref = backends[0]
                for b in est:
                    if b != ref and ref in est:
                        for name in est[b]:
                            table[name].setdefault(f"{w['workload']} {b}/{ref}", []).append(
                                est[b][name] / est[ref][name])
    print(f"\nspread across {a.repeats} repeats (max/min - 1; cv) of each estimator"
          + (" (odd repeats beside a CPU burner)" if a.neighbour else ""))
    rows = []
    for name, series in table.items():
        sp = {k: spread(v) for k, v in series.items()}
        cell_sp = [x[0] for k, x in sp.items() if "/" not in k.split()[-1] and np.isfinite(x[0])]
        ratio_sp = [x[0] for k, x in sp.items() if "/" in k.split()[-1] and np.isfinite(x[0])]
        rows.append((name, float(np.median(cell_sp)) if cell_sp else float("nan"),
                     float(np.max(cell_sp)) if cell_sp else float("nan"),
                     float(np.median(ratio_sp)) if ratio_sp else float("nan"), sp))
    rows.sort(key=lambda r: (np.nan_to_num(r[1], nan=9e9)))
    print(f"{'estimator':26} {'cells: median spread':>20} {'worst':>8} {'ratios: median spread':>22}")
    for name, med, worst, rmed, _ in rows:
        print(f"{name:26} {100 * med:19.1f}% {100 * worst:7.1f}% {100 * rmed:21.1f}%")
    if a.json:
        write_atomic(a.json, json.dumps({"repeats": repeats, "table": {
            r[0]: {k: {"values": table[r[0]][k], "spread": v[0], "cv": v[1]} for k, v in r[4].items()}
            for r in rows}}, indent=1).encode())
        print(f"raw data: {a.json}")


if __name__ == "__main__":
    main()
