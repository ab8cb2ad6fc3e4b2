"""`lstmbench compare`: a run against itself flags nothing; a copy with every round 25% slower
flags every cell and --fail-on-regression exits 1; two draws from one heavy-tailed noise
distribution are never called faster or slower (50 pairs); a contended run against a clean
one is at most inconclusive, with the reason; runs on machines of different speed are said to
differ and --normalize compares them; v1 files still compare; every bad input ends with one
line on stderr and the exact exit status, never a traceback.

The documents are synthesised to results schema v2 (samples with process, round, probe time
and clean flag; top-level probe and noise) with seeded noise, so every verdict is
deterministic. No benchmark is run here (test_report has the one end-to-end run)."""
from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.engine import stats
from harness.engine.bench import Cell
from harness.commands.compare import run_compare
from harness.engine.matrix import MATRICES, SMOKE_SIZES, Matrix
from harness.envs.host import machine_info
from harness.results.schema import ResultsError
from harness.results.store import write_results
from impls.config import flops_per_char

ROOT = Path(__file__).resolve().parent.parent
PEAK = 20.0  # GFLOP/s, the synthetic matmul peak
PROBE_FLOP = 2 * 256 ** 3
PROBE_S = PROBE_FLOP / (PEAK * 1e9)  # the probe's undisturbed time

# the smoke cells plus a small train batch sweep, so the report's sweep plot has data
SWEEP = Matrix("test", [*MATRICES["smoke"].groups,
                        {"name": "sweep", **SMOKE_SIZES, "seq_len": 16, "batch": [1, 4, 16],
                         "modes": ["train"]}])


def lstmbench(*args: str, cwd: Path, pre: str = "") -> subprocess.CompletedProcess:
    """The CLI in a subprocess (exit status and stderr as a user sees them); `pre` is Python
    run before it (e.g. to hide a module)."""
    code = f"{pre}\nimport sys\nfrom harness.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Multiplicative timing noise with a heavy right tail, as a busy neighbour gives: mostly
    a few percent, sometimes much more (noise only ever adds time)."""
    x = 1 + rng.exponential(0.02, n)
    tail = rng.random(n) < 0.15
    return x * np.where(tail, 1 + rng.pareto(1.5, n) * 0.3, 1.0)


def _estimate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """What harness.engine.stats.cell_estimate stores, with a stand-in interval (compare recomputes
    its own; this keeps 100 synthetic runs fast)."""
    clean = [x["s"] for x in samples if x["clean"]]
    noisy = len(clean) < stats.MIN_CLEAN
    est = stats.estimate([x["s"] for x in samples] if noisy else clean)
    return {"estimate_s": est, "ci_s": [est, 1.02 * est], "clean_rounds": len(clean), "noisy": noisy}


def _result(cell: Cell, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A v2 result as harness.session.benchmark stores it, consistent with its samples."""
    s = np.array([x["s"] for x in samples])
    res: dict[str, Any] = {"status": "ok", "error": None, "first_step_s": float(20 * s.min()),
                           "inner": 1, "kernel": "test", "samples": samples, "samples_s": s.tolist(),
                           "peak_rss_bytes": 50 * 2**20}
    res.update(_estimate(samples))
    res["stats"] = stats.summarize(s)
    cps = cell.chars_per_call() / res["estimate_s"]
    res["chars_per_s"] = cps
    res["gflops"] = flops_per_char(cell.model, cell.mode) * cps / 1e9
    res["efficiency"] = res["gflops"] / PEAK
    res["efficiency_flag"] = None
    if cell.mode == "generate":
        res["us_per_char"] = 1e6 * res["estimate_s"] / cell.seq_len
    return res


def synth_v2(backends: list[str] = ["numpy-f32", "torch"], *, matrix: Matrix = MATRICES["smoke"],
             seed: int = 0, rounds: int = 30, processes: int = 2, contended: float = 0.0,
             machine_speed: float = 1.0, failed: dict[str, str] | None = None,
             threads: int = 1, proc_sd: float = 0.01, workload_probes: bool = False,
             foreign: float | None = None) -> dict[str, Any]:
    """A results v2 document: every workload's backends and the probe measured in the same
    rounds; `contended` is the share of rounds in which a neighbour slowed both the probe and
    the backends (2-4x); `machine_speed` < 1 is a slower machine (probe and rounds alike).
    `failed` maps a cell label to the status it failed with. `workload_probes` stores each
    workload's probe rounds (as harness.session.benchmark does); `foreign` its cores busy with other processes."""
    rng = np.random.default_rng(seed)
    cells, workloads, probe_all = [], [], []
    by_w: dict[str, list[Cell]] = {}
    for cell in matrix.cells(backends, "cpu", "float32"):
        wid = f"{cell.preset}/{cell.mode}/B{cell.batch}xT{cell.seq_len}/cpu/float32"
        by_w.setdefault(wid, []).append(cell)
    for wi, (wid, wcells) in enumerate(by_w.items()):
        n = processes * rounds
        hit = rng.random(n) < contended  # (n,) rounds under a neighbour
        slow = np.where(hit, rng.uniform(2, 4, n), 1.0) / machine_speed
        probe = PROBE_S * _noise(rng, n) * slow
        probe_all.extend(probe.tolist())
        best = float(probe.min())
        ests = {}
        for bi, cell in enumerate(wcells):
            if failed and cell.label() in failed:
                cells.append({"cell": cell.to_dict(), "workload": wid, "result": {
                    "status": failed[cell.label()], "error": "RuntimeError: synthetic failure | for the test",
                    "samples": [], "samples_s": []}})
                continue
            base = 1e-3 * (1 + (wi + bi) % 5) * cell.batch ** 0.5
            proc = 1 + proc_sd * rng.standard_normal(processes)  # (P,) between-process offsets
            s = base * np.repeat(proc, rounds) * _noise(rng, n) * slow
            samples = [{"s": float(s[i]), "process": i // rounds, "round": i % rounds, "slot": bi,
                        "probe_s": float(probe[i]), "clean": bool(probe[i] <= stats.CLEAN_FACTOR * best)}
                       for i in range(n)]
            res = _result(cell, samples)
            ests[cell.backend] = res["estimate_s"]
            cells.append({"cell": cell.to_dict(), "workload": wid, "result": res})
        fastest = min(ests, key=ests.get) if ests else None
        c0 = wcells[0]
        workloads.append({"id": wid, "mode": c0.mode, "preset": c0.preset, "batch": c0.batch,
                          "seq_len": c0.seq_len, "device": "cpu", "precision": "float32",
                          "backends": [c.backend for c in wcells], "rounds": rounds, "order": [],
                          **({"probe_s": probe.tolist()} if workload_probes else {}),
                          **({"foreign_cores": foreign} if foreign is not None else {}),
                          "ratios": {b: {"to": fastest, "ratio": e / ests[fastest], "lo": 0.98 * e / ests[fastest],
                                         "hi": 1.02 * e / ests[fastest]} for b, e in ests.items()}})
    p = np.array(probe_all)
    frac = float(np.mean(p > stats.CLEAN_FACTOR * p.min()))
    return {
        "schema": "lstmbench.results", "schema_version": 2, "created": "2026-11-23T20:00:00+00:00",
        "machine": machine_info(), "git": {"commit": "0" * 40, "dirty": False}, "command": ["test"],
        "matrix": matrix.to_dict(), "device": "cpu", "precision": "float32", "threads": threads,
        "omp_wait_policy": None, "processes": processes, "python": sys.version.split()[0],
        "backends": {b: {"available": True, "version": "1.0", "kernel": "test"} for b in backends},
        "wall_s": 1.0, "interrupted": False,
        "probe": {"kind": "gemm", "n": 256, "blas": "test", "flop": PROBE_FLOP, "rounds_s": p.tolist(),
                  "best_gflops": PROBE_FLOP / p.min() / 1e9, "median_gflops": PROBE_FLOP / np.median(p) / 1e9},
        "peak": {"gflops": PEAK * machine_speed, "via": "numpy test", "dtype": "float32"},
        "noise": {"start": None, "end": None, "contended_fraction": frac, "collapse_rounds": 0,
                  "verdict": "quiet" if frac < 0.1 else "contended" if frac >= 0.5 else "noisy"},
        "estimator": stats.estimator_info(), "workloads": workloads, "cells": cells}


def synth_doc(backends: list[str] = ["numpy-f32", "torch"], *, failed: dict[str, str] | None = None,
              matrix: Matrix = MATRICES["smoke"], threads: int = 1, seed: int = 0) -> dict[str, Any]:
    """A results v1 document (samples_s only, no probe): 10 rounds with 1% noise."""
    rng = np.random.default_rng(seed)
    cells = []
    for i, cell in enumerate(matrix.cells(backends, "cpu", "float32")):
        if failed and cell.label() in failed:
            cells.append({"cell": cell.to_dict(), "result": {
                "status": failed[cell.label()], "error": "RuntimeError: synthetic failure | for the test"}})
            continue
        base = 1e-3 * (1 + i % 5) * cell.batch ** 0.5
        s = base * (1 + 0.01 * rng.standard_normal(10))
        med = float(np.median(s))
        cps = cell.chars_per_call() / med
        res = {"status": "ok", "first_step_s": 20 * med, "samples_s": s.tolist(), "inner": 1,
               "chars_per_s": cps, "gflops": flops_per_char(cell.model, cell.mode) * cps / 1e9,
               "peak_rss_bytes": 50 * 2**20, "stats": stats.summarize(s)}
        res["efficiency"] = res["gflops"] / PEAK
        cells.append({"cell": cell.to_dict(), "result": res})
    return {"schema": "lstmbench.results", "schema_version": 1, "created": "2026-11-22T10:00:00+00:00",
            "machine": machine_info(), "git": {"commit": None, "dirty": False}, "command": ["test"],
            "matrix": matrix.to_dict(), "device": "cpu", "precision": "float32", "threads": threads,
            "python": sys.version.split()[0], "wall_s": 1.0,
            "backends": {b: {"available": True, "version": "1.0", "kernel": "test"} for b in backends},
            "peak": {"gflops": PEAK, "via": "numpy", "dtype": "float32", "error": None}, "cells": cells}


def scaled(doc: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy whose every round is `factor` times as long (probes untouched)."""
    doc = copy.deepcopy(doc)
    doc.pop("_path", None)
    for c in doc["cells"]:
        res = c["result"]
        if res.get("status") != "ok":
            continue
        cell = Cell.from_dict(c["cell"])
        if res.get("samples"):
            c["result"] = _result(cell, [{**s, "s": s["s"] * factor} for s in res["samples"]])
        else:
            res["samples_s"] = [v * factor for v in res["samples_s"]]
    return doc


def save(doc: dict[str, Any], path: Path) -> Path:
    return write_results(doc, path)


def compare(old: Any, new: Any, threshold: float = 0.05, fail: bool = False, **kw: Any) -> tuple[int, str]:
    lines: list[str] = []
    rc = run_compare(old, new, threshold=threshold, fail_on_regression=fail, log=lines.append, **kw)
    return rc, "\n".join(lines)


def summary(out: str) -> str:
    """The count line: "N slower, N faster, N unchanged, ..."."""
    return next(ln for ln in out.splitlines() if re.match(r"\d+ slower, \d+ faster, ", ln))


def marks(path: Path) -> list[str]:
    return [c["mark"] for c in json.loads(path.read_text())["cells"]]


def test_a_run_against_itself_flags_nothing(tmp_path):
    p = save(synth_v2(), tmp_path / "a.json")
    rc, out = compare(p, p, fail=True, json_path=tmp_path / "c.json")
    assert rc == 0 and summary(out).startswith("0 slower, 0 faster, ")
    m = marks(tmp_path / "c.json")  # a cell whose two processes disagree may stay undecided
    assert set(m) <= {"unchanged", "inconclusive"} and m.count("unchanged") >= 5
    # what decided each mark is shown, not a p-value (a bootstrap p of "no change" said 0 on
    # lines marked unchanged): the 90% interval against the threshold
    head = next(ln for ln in out.splitlines() if ln.startswith("backend "))
    assert head.split()[-4:] == ["90%", "CI", "mark", "why"] and " p " not in head
    for c in json.loads((tmp_path / "c.json").read_text())["cells"]:
        lo, hi = c["equivalence_ci"]
        if c["mark"] == "unchanged":
            assert 1 / 1.05 <= lo <= 1 <= hi <= 1.05
            assert c["decided_by"] == f"90% interval [{lo:.3f}, {hi:.3f}] within +-5%"
            row = next(ln for ln in out.splitlines() if ln.startswith(c["backend"] + " ")
                       and f" {c['mode']} " in ln)
            assert row.endswith(c["decided_by"]) and f"[{lo:.3f}, {hi:.3f}]  unchanged" in row
        else:
            assert c["decided_by"] == "" and c["reason"]
    v1 = save(synth_doc(), tmp_path / "v1.json")
    rc, out = compare(v1, v1, fail=True)
    assert rc == 0 and summary(out) == "0 slower, 0 faster, 6 unchanged, 0 inconclusive, 0 incomparable"
    assert "has no noise probe" in out


def test_every_round_25_percent_slower_is_slower_everywhere(tmp_path):
    old = synth_v2(failed={"torch/eval/smoke/B8xT16": "error"})
    po = save(old, tmp_path / "old.json")
    pn = save(scaled(old, 1.25), tmp_path / "new.json")
    rc, out = compare(po, pn)
    assert rc == 0  # without --fail-on-regression a slowdown is reported, not an error
    assert summary(out) == "5 slower, 0 faster, 0 unchanged, 0 inconclusive, 0 incomparable, 1 not ok"
    assert "error: RuntimeError: synthetic failure" in out
    r = lstmbench("compare", str(po), str(pn), "--fail-on-regression", "--json", "cmp.json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout.count("SLOWER") == 5 and "Traceback" not in r.stderr
    doc = json.loads((tmp_path / "cmp.json").read_text())
    ok = [c for c in doc["cells"] if c["mark"] != "failed"]
    assert len(ok) == 5 and all(c["mark"] == "slower" for c in ok)
    for c in ok:
        assert {"backend", "mode", "preset", "batch", "mark", "ratio", "ci"} <= set(c)
        assert c["ratio"] == pytest.approx(1.25, rel=1e-9)  # min of rounds x 1.25
        assert 1 < c["ci"][0] <= 1.25 <= c["ci"][1]
        assert c["decided_by"].startswith(f"95% interval [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] above 1; "
                                          "change +25% beyond +-10%")
    assert not list(tmp_path.glob(".cmp.json*"))  # no temp file left
    # beyond the threshold only: 25% slower is "unchanged" at a 30% threshold
    r = lstmbench("compare", str(po), str(pn), "--fail-on-regression", "--threshold", "30%", cwd=tmp_path)
    assert r.returncode == 0 and "0 slower, 0 faster, " in r.stdout
    rc, out = compare(pn, po, fail=True)  # and the other way round: faster, not a regression
    assert rc == 0 and summary(out).startswith("0 slower, 5 faster")


def test_same_noise_distribution_is_never_faster_or_slower(tmp_path):
    """50 pairs of independent runs of identical code (heavy-tailed noise, 1% between-process
    offsets, occasional contention): no cell may be called faster or slower, and most are
    called unchanged (an interval that never decides would pass trivially; with two processes
    a side whose offsets differ by 1%, an honest interval leaves some cells undecided)."""
    counts: dict[str, int] = {}
    for i in range(50):
        a = save(synth_v2(seed=2 * i, contended=0.05), tmp_path / f"a{i}.json")
        b = save(synth_v2(seed=2 * i + 1, contended=0.05), tmp_path / f"b{i}.json")
        rc, _ = compare(a, b, fail=True, json_path=tmp_path / f"c{i}.json")
        for m in marks(tmp_path / f"c{i}.json"):
            counts[m] = counts.get(m, 0) + 1
        assert rc == 0, i
    assert counts.get("faster", 0) == 0 and counts.get("slower", 0) == 0, counts
    assert counts.get("unchanged", 0) >= 0.6 * 300, counts


def test_contended_run_against_clean_is_at_most_inconclusive(tmp_path):
    clean = save(synth_v2(seed=1), tmp_path / "clean.json")
    busy = save(synth_v2(seed=2, contended=0.6), tmp_path / "busy.json")
    for i, (a, b) in enumerate(((clean, busy), (busy, clean))):
        rc, out = compare(a, b, fail=False, json_path=tmp_path / f"c{i}.json")  # never over a file
        cells = json.loads((tmp_path / f"c{i}.json").read_text())["cells"]
        assert all(c["mark"] in ("unchanged", "inconclusive") for c in cells), out
        assert any(c["mark"] == "inconclusive" and "contended" in c["reason"] for c in cells), out
        most = sum(c["mark"] == "inconclusive" for c in cells) > len(cells) / 2
        assert ("lstmbench ab OLD NEW" in out) == most, out  # the way to decide, when most are open


def test_machines_of_different_speed_differ_and_normalize_compares_them(tmp_path):
    fast = save(synth_v2(seed=1), tmp_path / "fast.json")
    slow = save(synth_v2(seed=2, machine_speed=0.5), tmp_path / "slow.json")
    rc, out = compare(fast, slow, json_path=tmp_path / "c.json")
    assert "machine speeds differ: probe best" in out
    cells = json.loads((tmp_path / "c.json").read_text())["cells"]
    assert all(c["mark"] == "inconclusive" and "--normalize" in c["reason"] for c in cells)
    rc, out = compare(fast, slow, normalize=True, json_path=tmp_path / "n.json")
    m = marks(tmp_path / "n.json")
    assert set(m) <= {"unchanged", "inconclusive"} and m.count("unchanged") >= 5, out
    # a real 25% slowdown on the slower machine still shows once normalised
    slow25 = save(scaled(synth_v2(seed=2, machine_speed=0.5), 1.25), tmp_path / "slow25.json")
    rc, out = compare(fast, slow25, normalize=True, fail=True, json_path=tmp_path / "n25.json")
    assert set(marks(tmp_path / "n25.json")) == {"slower"} and rc == 1
    v1 = save(synth_doc(), tmp_path / "v1.json")
    r = lstmbench("compare", str(v1), str(fast), "--normalize", cwd=tmp_path)
    assert r.returncode == 2 and "--normalize needs every run's noise probe" in r.stderr


def test_v1_files_still_compare(tmp_path):
    old = save(synth_doc(failed={"torch/eval/smoke/B8xT16": "error"}), tmp_path / "old.json")
    new = save(scaled(synth_doc(failed={"torch/eval/smoke/B8xT16": "error"}), 1.25), tmp_path / "new.json")
    rc, out = compare(old, new, fail=True)
    assert rc == 1 and summary(out) == "5 slower, 0 faster, 0 unchanged, 0 inconclusive, 0 incomparable, 1 not ok"
    assert "median of the clean rounds" in out  # v1 headline: the median
    rc, out = compare(old, save(synth_v2(), tmp_path / "v2.json"))  # v1 against v2: one estimator
    assert "estimators differ (median, min); both sides are judged with the min" in out


def test_changed_sizes_device_or_threads_are_incomparable(tmp_path):
    old = synth_v2()
    new = copy.deepcopy(old)
    for c in new["cells"]:
        cell = c["cell"]
        if cell["backend"] == "torch" and cell["mode"] == "train":
            cell["model"]["hidden_size"] = 64
        if cell["backend"] == "torch" and cell["mode"] == "eval":
            cell["device"] = "gpu"
    po, pn = save(old, tmp_path / "old.json"), save(new, tmp_path / "new.json")
    rc, out = compare(po, pn, json_path=tmp_path / "c.json")
    assert summary(out).startswith("0 slower, 0 faster, ") and summary(out).endswith(", 2 incomparable")
    assert "model.hidden_size 32 -> 64" in out and "device cpu -> gpu" in out
    assert marks(tmp_path / "c.json").count("incomparable") == 2
    pt = save(synth_v2(threads=2), tmp_path / "threads.json")
    rc, out = compare(po, pt)
    assert summary(out) == "0 slower, 0 faster, 0 unchanged, 0 inconclusive, 6 incomparable"
    assert "threads 1 -> 2" in out


def test_folders_resample_repeated_runs(tmp_path):
    for side in ("old", "new"):
        (tmp_path / side).mkdir()
        for seed in (1, 2):
            save(synth_v2(["numpy-f32"], seed=seed + (10 if side == "new" else 0)), tmp_path / side / f"{seed}.json")
    rc, out = compare(tmp_path / "old", tmp_path / "new")
    assert "old: 2 file(s)" in out and "runs are resampled" in out
    last = summary(out)
    assert last.startswith("0 slower, 0 faster, ") and last.endswith(" 0 incomparable") and "0 unchanged" not in last


def test_new_failures_and_noise_are_regressions(tmp_path):
    old = synth_v2()
    po = save(old, tmp_path / "old.json")
    labels = [c["cell"] for c in old["cells"]]
    all_err = {Cell.from_dict(c).label(): "error" for c in labels}
    pe = save(synth_v2(failed=all_err), tmp_path / "allerr.json")
    r = lstmbench("compare", str(po), str(pe), "--fail-on-regression", cwd=tmp_path)
    assert r.returncode == 1 and "no new cell was measured" in r.stdout, r.stdout + r.stderr
    assert lstmbench("compare", str(po), str(pe), cwd=tmp_path).returncode == 0
    pe1 = save(synth_v2(failed={"torch/train/smoke/B8xT16": "oom"}), tmp_path / "oom.json")
    r = lstmbench("compare", str(po), str(pe1), "--fail-on-regression", cwd=tmp_path)
    assert r.returncode == 1 and "torch/train/smoke/B8xT16 failed (oom" in r.stdout
    # a new cell with too few clean rounds (noisy) where the old one was clean
    noisy = synth_v2(seed=1)
    res = noisy["cells"][0]["result"]
    for s in res["samples"][5:]:
        s["clean"] = False
    res.update(_estimate(res["samples"]))
    assert res["noisy"]
    r = lstmbench("compare", str(po), str(save(noisy, tmp_path / "noisy.json")), "--fail-on-regression",
                  cwd=tmp_path)
    assert r.returncode == 1 and "noisy (new)" in r.stdout and "too few clean rounds" in r.stdout


def _corrupt(doc: dict[str, Any], bad: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    res = doc["cells"][1]["result"]
    value = {"string": "fast", "zero": 0.0, "negative": -1e-3, "inf": math.inf, "nan": math.nan,
             "null-sample": None, "bool": True}.get(bad)
    if bad == "null-machine":
        doc["machine"] = None
    elif bad == "samples-not-list":
        res["samples"] = "1,2,3"
    else:
        res["samples"][3]["s"] = value
        res["samples_s"][3] = value
    return doc


# `text`: a word the one-line error must hold (results.load_results may catch some first)
@pytest.mark.parametrize("bad,side,flag,status,text", [
    ("null-machine", "new", False, 2, "machine"),
    ("null-machine", "old", True, 2, "machine"),
    ("string", "new", False, 2, "sample"),
    ("bool", "new", False, 2, "sample"),
    ("null-sample", "old", False, 2, "sample"),
    ("samples-not-list", "new", False, 2, "samples"),
    ("zero", "new", False, 2, "sample"),
    ("negative", "new", True, 2, "sample"),
    ("negative", "old", False, 2, "sample"),
    ("inf", "new", False, 2, "sample"),
    ("nan", "new", False, 2, "NaN"),  # an invalid measurement: never a clean exit
    ("nan", "new", True, 1, "NaN"),  # a new cell failed where the old one was ok: a regression
    ("nan", "old", True, 2, "NaN"),  # not a regression, but invalid
])
def test_bad_samples_and_machine(tmp_path, bad, side, flag, status, text):
    good = synth_v2()
    pg = save(good, tmp_path / "good.json")
    pb = save(_corrupt(good, bad), tmp_path / "bad.json")
    args = [str(pg), str(pb)] if side == "new" else [str(pb), str(pg)]
    r = lstmbench("compare", *args, *(["--fail-on-regression"] if flag else []), cwd=tmp_path)
    assert r.returncode == status, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    summary = [ln for ln in r.stdout.splitlines() if " slower, " in ln]
    assert all(ln.startswith("0 slower, 0 faster") for ln in summary)  # never "faster"
    assert text in r.stdout + r.stderr
    if status == 2:
        assert r.stderr.startswith("lstmbench: error: ") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", ["missing", "corrupt", "version", "not-results", "empty-folder"])
def test_bad_input_is_one_line_and_status_2(tmp_path, bad):
    good = save(synth_v2(["numpy-f32"]), tmp_path / "good.json")
    target = tmp_path / "bad.json"
    if bad == "corrupt":
        target.write_text(good.read_text()[:200])
    elif bad == "version":
        doc = json.loads(good.read_text())
        doc["schema_version"] = 99
        target.write_text(json.dumps(doc))
    elif bad == "not-results":
        target.write_text(json.dumps({"benchmarks": []}))
    elif bad == "empty-folder":
        target = tmp_path / "empty"
        target.mkdir()
    for args in ([str(good), str(target)], [str(target), str(good)]):
        r = lstmbench("compare", *args, cwd=tmp_path)
        assert r.returncode == 2, r.stdout
        assert r.stderr.startswith("lstmbench: error: ") and len(r.stderr.strip().splitlines()) == 1
        assert "Traceback" not in r.stderr + r.stdout
    with pytest.raises(ResultsError):
        compare(good, target)


def test_json_into_a_folder_is_refused(tmp_path):
    p = save(synth_v2(["numpy-f32"]), tmp_path / "a.json")
    (tmp_path / "d").mkdir()
    r = lstmbench("compare", str(p), str(p), "--json", "d", cwd=tmp_path)
    assert r.returncode == 2 and "is a folder" in r.stderr and "Traceback" not in r.stderr


def test_json_follows_the_one_convention(tmp_path):
    """--json PATH never over a file (refused before anything is read), as every verb's; `-`
    puts the document on stdout and the text on stderr."""
    p = save(synth_v2(["numpy-f32"]), tmp_path / "a.json")
    (tmp_path / "mine.json").write_text("keep")
    r = lstmbench("compare", str(p), str(p), "--json", "mine.json", cwd=tmp_path)
    assert r.returncode == 2 and "--json mine.json exists" in r.stderr, r.stderr
    assert (tmp_path / "mine.json").read_text() == "keep"
    r = lstmbench("compare", str(p), str(p), "--json", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schema"] == "lstmbench.compare" and "unchanged" in r.stderr


def test_folders_pass_over_other_json(tmp_path):
    """A results folder may also hold a `check --json` report: it is not read as a run."""
    from harness.results.schema import SCHEMA, SCHEMA_VERSION
    from harness.results.store import expand_paths
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "cells": []}))
    (tmp_path / "check.json").write_text(json.dumps({"precision": "float32", "backends": {}}))
    assert expand_paths([tmp_path]) == [run]


def test_noise_floor_is_how_far_the_probe_minimum_moved():
    from harness.engine import stats as sig  # the noise floor: a run's own figure
    # scattered rounds with a fast one in every block: the minimum did not move
    assert sig.noise_floor([1.0, 2, 3, 4, 1.01, 5, 6], [[1.0, 2, 3, 4], [1.01, 5, 6]]) == pytest.approx(0.01)
    # one workload whose best probe round was 10% off the run's best
    assert sig.noise_floor([1.0, 1.5, 2.0, 1.02, 3.0, 1.1, 1.2],
                           [[1.0, 1.5, 2.0], [1.02, 3.0], [1.1, 1.2]]) == pytest.approx(0.10)
    # no workload blocks (older files): sixths of the run in order; None without probes
    assert sig.noise_floor([1.0] * 6 + [2.0] * 6) == pytest.approx(1.0)
    assert sig.noise_floor([None, None]) is None


def test_default_threshold_is_ten_percent(tmp_path):
    old = synth_v2()
    po, pn = save(old, tmp_path / "old.json"), save(scaled(old, 1.07), tmp_path / "new.json")
    r = lstmbench("compare", str(po), str(pn), cwd=tmp_path)
    assert r.returncode == 0 and "threshold 10%" in r.stdout and "0 slower, 0 faster, " in r.stdout
    r = lstmbench("compare", str(po), str(pn), "--threshold", "5%", cwd=tmp_path)
    assert r.returncode == 0 and "6 slower, 0 faster, " in r.stdout, r.stdout


def test_between_run_spread_widens_every_interval(tmp_path):
    """One process a side, tight rounds, but each cell's level moved between the runs by up to
    +-15% (a machine state lasting a whole workload): no cell may be called faster or slower,
    though each cell's own bootstrap interval alone would call several; a shift every cell
    shares (the 25% copy) is not spread and stays `slower`."""
    from harness.judge import significance as sig
    assert sig.between_run_spread([0.0] * 10) == 0.0
    assert sig.between_run_spread([0.1] * 7) is None  # too few cells to tell
    assert sig.between_run_spread([-0.1, 0.1] * 5) == pytest.approx(0.14826, rel=1e-4)
    backends = ["numpy-f32", "torch", "jax", "chainer"]
    old = synth_v2(backends, processes=1, proc_sd=0.0)
    new = copy.deepcopy(old)
    rng = np.random.default_rng(7)
    for c in new["cells"]:
        f = float(rng.uniform(0.85, 1.15))
        for smp in c["result"].get("samples") or []:
            smp["s"] *= f
    po, pn = save(old, tmp_path / "old.json"), save(new, tmp_path / "new.json")
    rc, out = compare(po, pn, threshold=0.10, fail=True, json_path=tmp_path / "c.json")
    got = marks(tmp_path / "c.json")
    assert len(got) >= 8 and "faster" not in got and "slower" not in got, out
    assert "between-run spread" in out
    ps = save(scaled(old, 1.25), tmp_path / "slow.json")
    rc, out = compare(po, ps, threshold=0.10, fail=True, json_path=tmp_path / "s.json")
    assert rc == 1 and set(marks(tmp_path / "s.json")) == {"slower"}


def test_unchanged_is_an_equivalence_test(tmp_path):
    """`unchanged` claims the change is within the threshold: at a true change of exactly the
    threshold it may be said of at most ~5% of cells (two one-sided 5% tests), where a rule on
    the point estimate would say it of about half."""
    counts: dict[str, int] = {}
    for i in range(20):
        a = save(synth_v2(seed=2 * i), tmp_path / f"a{i}.json")
        b = save(scaled(synth_v2(seed=2 * i + 1), 1.10), tmp_path / f"b{i}.json")
        compare(a, b, threshold=0.10, json_path=tmp_path / f"c{i}.json")
        for m in marks(tmp_path / f"c{i}.json"):
            counts[m] = counts.get(m, 0) + 1
    n = sum(counts.values())
    assert n == 120 and counts.get("unchanged", 0) <= 0.05 * n, counts
    assert counts.get("faster", 0) == 0, counts


def test_a_change_the_machine_explains_is_not_marked(tmp_path):
    """The probe's best round in the workload was 8% slower in the new run: cells 14% slower
    (6% beyond the machine) are not called slower, with the reason; 35% slower (25% beyond)
    still are, and --fail-on-regression exits 1."""
    old = save(synth_v2(seed=1, workload_probes=True), tmp_path / "old.json")
    slow_machine = synth_v2(seed=2, workload_probes=True, machine_speed=1 / 1.08)
    small = save(scaled(slow_machine, 1.06), tmp_path / "small.json")
    rc, out = compare(old, small, threshold=0.10, fail=True, json_path=tmp_path / "s.json")
    cells = json.loads((tmp_path / "s.json").read_text())["cells"]
    assert rc == 0 and {c["mark"] for c in cells} == {"inconclusive"}, out
    assert all("mostly the machine's" in c["reason"] for c in cells), out
    assert all(c["machine_shift"] == pytest.approx(1.08, rel=0.05) for c in cells)
    big = save(scaled(slow_machine, 1.25), tmp_path / "big.json")
    rc, out = compare(old, big, threshold=0.10, fail=True, json_path=tmp_path / "b.json")
    assert rc == 1 and set(marks(tmp_path / "b.json")) == {"slower"}, out


def test_a_run_beside_a_busy_process_is_not_judged(tmp_path):
    """A workload during which other processes kept a core busy (harness.engine.cpuload) is not
    judged, even 25% slower; the same run with the machine to itself is."""
    old = save(synth_v2(seed=1, foreign=0.01), tmp_path / "old.json")
    busy = save(scaled(synth_v2(seed=2, foreign=1.0), 1.25), tmp_path / "busy.json")
    rc, out = compare(old, busy, threshold=0.10, fail=True, json_path=tmp_path / "c.json")
    cells = json.loads((tmp_path / "c.json").read_text())["cells"]
    assert rc == 0 and all(c["mark"] == "inconclusive" for c in cells), out
    assert all("new run shared the machine: other processes kept 1.00 cores busy" in c["reason"]
               for c in cells), out
    alone = save(scaled(synth_v2(seed=2, foreign=0.01), 1.25), tmp_path / "alone.json")
    rc, out = compare(old, alone, threshold=0.10, fail=True, json_path=tmp_path / "d.json")
    assert rc == 1 and set(marks(tmp_path / "d.json")) == {"slower"}, out
