"""`lstmbench compare`: a run against itself flags nothing; a uniformly slower copy flags every
cell and --fail-on-regression exits 1; cells whose sizes, device or threads changed are
incomparable, not paired; bad input ends with one line on stderr and exit status 2.

The documents are synthesised to the results schema (results.new_document, Cell.to_dict, the
fields harness.run writes) with tight, seeded samples, so the verdicts are deterministic; one
small real run (`real_run`, shared with test_report) checks that real files compare too."""
from __future__ import annotations

import atexit
import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.bench import Cell
from harness.compare import run_compare
from harness.matrix import MATRICES, SMOKE_SIZES, Matrix
from harness.results import ResultsError, new_document, write_results
from harness.stats import summarize
from impls.config import flops_per_char

ROOT = Path(__file__).resolve().parent.parent
PEAK = 20.0  # GFLOP/s, the synthetic matmul peak

# the smoke cells plus a small train batch sweep, so the report's sweep plot has data
SWEEP = Matrix("test", [*MATRICES["smoke"].groups,
                        {"name": "sweep", **SMOKE_SIZES, "seq_len": 16, "batch": [1, 4, 16],
                         "modes": ["train"]}])


def lstmbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _result(cell: Cell, samples: np.ndarray) -> dict[str, Any]:
    """A result as harness.run stores it, consistent with its samples."""
    med = float(np.median(samples))
    cps = cell.chars_per_call() / med
    gflops = flops_per_char(cell.model, cell.mode) * cps / 1e9
    res: dict[str, Any] = {"status": "ok", "first_step_s": 20 * med, "samples_s": samples.tolist(),
                           "inner": 1, "chars_per_s": cps, "gflops": gflops,
                           "peak_rss_bytes": 50 * 2**20, "stats": summarize(samples),
                           "efficiency": gflops / PEAK}
    if cell.mode == "generate":
        res["us_per_char"] = 1e6 * med / cell.seq_len
    return res


def synth_doc(backends: list[str] = ["numpy-f32", "torch"], *, failed: dict[str, str] | None = None,
              matrix: Matrix = MATRICES["smoke"], threads: int = 1, seed: int = 0) -> dict[str, Any]:
    """A results document; `failed` maps a cell label to the status it failed with."""
    rng = np.random.default_rng(seed)
    cells = []
    for i, cell in enumerate(matrix.cells(backends, "cpu", "float32")):
        if failed and cell.label() in failed:
            cells.append({"cell": cell.to_dict(), "result": {
                "status": failed[cell.label()], "error": "RuntimeError: synthetic failure | for the test"}})
            continue
        base = 1e-3 * (1 + i % 5) * cell.batch ** 0.5
        samples = base * (1 + 0.01 * rng.standard_normal(10))  # 1% noise: far below 25%
        cells.append({"cell": cell.to_dict(), "result": _result(cell, samples)})
    return new_document(command=["test"], matrix=matrix.to_dict(), device="cpu", precision="float32",
                        threads=threads, python=sys.version.split()[0], wall_s=1.0,
                        backends={b: {"available": True, "version": "1.0", "kernel": "test"} for b in backends},
                        peak={"gflops": PEAK, "via": "numpy", "dtype": "float32", "error": None},
                        cells=cells)


def scaled(doc: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy whose every sample is `factor` times as long, with stats and rates to match."""
    doc = copy.deepcopy(doc)
    doc.pop("_path", None)
    for c in doc["cells"]:
        res = c["result"]
        if res.get("status") == "ok":
            c["result"] = _result(Cell.from_dict(c["cell"]), np.asarray(res["samples_s"]) * factor)
    return doc


_real: dict[str, Path] = {}


def real_run() -> Path:
    """One real `lstmbench run --matrix smoke --backends numpy-f32` per session (~5 s)."""
    if "path" not in _real:
        out = Path(tempfile.mkdtemp(prefix="lstmbench-test-run-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        r = lstmbench("run", "--matrix", "smoke", "--backends", "numpy-f32", "--threads", "1",
                      "--out", str(out), cwd=out)
        assert r.returncode == 0, r.stderr
        _real["path"] = next(out.rglob("*.json"))
    return _real["path"]


def compare(old: Any, new: Any, threshold: float = 0.05, fail: bool = False) -> tuple[int, str]:
    lines: list[str] = []
    rc = run_compare(old, new, threshold=threshold, fail_on_regression=fail, log=lines.append)
    return rc, "\n".join(lines)


def test_a_run_against_itself_flags_nothing(tmp_path):
    p = write_results(synth_doc(), tmp_path / "a.json")
    rc, out = compare(p, p, fail=True)
    assert rc == 0
    assert out.splitlines()[-1] == "0 slower, 0 faster, 6 unchanged, 0 incomparable"
    real = real_run()
    rc, out = compare(real, real, fail=True)
    assert rc == 0 and out.splitlines()[-1] == "0 slower, 0 faster, 3 unchanged, 0 incomparable"


def test_uniformly_slower_copy_is_flagged_and_fails_the_cli(tmp_path):
    old = synth_doc(failed={"torch/eval/smoke/B8xT16": "error"})
    po = write_results(old, tmp_path / "old.json")
    pn = write_results(scaled(old, 1.25), tmp_path / "new.json")
    rc, out = compare(po, pn)
    assert rc == 0  # without --fail-on-regression a slowdown is reported, not an error
    assert out.splitlines()[-1] == "5 slower, 0 faster, 0 unchanged, 0 incomparable, 1 not ok"
    assert "1.250 [" in out and "error: RuntimeError: synthetic failure" in out
    r = lstmbench("compare", str(po), str(pn), "--fail-on-regression", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout.count("SLOWER") == 5
    # beyond the threshold only: 25% slower is "unchanged" at a 30% threshold
    r = lstmbench("compare", str(po), str(pn), "--fail-on-regression", "--threshold", "30%", cwd=tmp_path)
    assert r.returncode == 0 and "0 slower, 0 faster, 5 unchanged" in r.stdout
    rc, out = compare(pn, po, fail=True)  # and the other way round: faster, not a regression
    assert rc == 0 and out.splitlines()[-1].startswith("0 slower, 5 faster")


def test_changed_sizes_device_or_threads_are_incomparable(tmp_path):
    old = synth_doc()
    new = copy.deepcopy(old)
    for c in new["cells"]:
        cell = c["cell"]
        if cell["backend"] == "torch" and cell["mode"] == "train":
            cell["model"]["hidden_size"] = 64
        if cell["backend"] == "torch" and cell["mode"] == "eval":
            cell["device"] = "gpu"
    po, pn = write_results(old, tmp_path / "old.json"), write_results(new, tmp_path / "new.json")
    rc, out = compare(po, pn)
    assert out.splitlines()[-1] == "0 slower, 0 faster, 4 unchanged, 2 incomparable"
    assert "model.hidden_size 32 -> 64" in out and "device cpu -> gpu" in out
    pt = write_results(synth_doc(threads=2), tmp_path / "threads.json")
    rc, out = compare(po, pt)
    assert out.splitlines()[-1] == "0 slower, 0 faster, 0 unchanged, 6 incomparable"
    assert "threads 1 -> 2" in out


def test_folders_pool_repeated_runs(tmp_path):
    for side in ("old", "new"):
        (tmp_path / side).mkdir()
        for seed in (1, 2):
            write_results(synth_doc(["numpy-f32"], seed=seed), tmp_path / side / f"{seed}.json")
    rc, out = compare(tmp_path / "old", tmp_path / "new")
    assert "old: 2 file(s)" in out and "samples are pooled" in out
    assert out.splitlines()[-1] == "0 slower, 0 faster, 3 unchanged, 0 incomparable"


@pytest.mark.parametrize("bad", ["missing", "corrupt", "version", "not-results", "empty-folder"])
def test_bad_input_is_one_line_and_status_2(tmp_path, bad):
    good = write_results(synth_doc(["numpy-f32"]), tmp_path / "good.json")
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


def test_folders_pass_over_other_json(tmp_path):
    """A results folder may also hold a `check --json` report: it is not read as a run."""
    from harness.results import SCHEMA, SCHEMA_VERSION, expand_paths
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "cells": []}))
    (tmp_path / "check.json").write_text(json.dumps({"precision": "float32", "backends": {}}))
    assert expand_paths([tmp_path]) == [run]
