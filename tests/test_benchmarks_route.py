"""The pytest-benchmark route: `pytest benchmarks/` times the smoke matrix's cells, writes a
JSON that `pytest-benchmark compare` reads, and skips (with the reason) a backend whose
framework does not import here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], backends: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LSTMBENCH_BACKENDS": backends, "LSTMBENCH_MATRIX": "smoke",
           "LSTMBENCH_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_pytest_benchmark_json_and_compare(tmp_path):
    out = tmp_path / "x.json"
    r = run([sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider",
             "-k", "numpy-f32", "--benchmark-json", str(out)], "numpy-f32", ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    benches = doc["benchmarks"]
    assert sorted(b["extra_info"]["cell"]["mode"] for b in benches) == ["eval", "generate", "train"]
    for b in benches:
        info = b["extra_info"]
        assert info["cell"]["backend"] == "numpy-f32" and info["chars_per_call"] > 0
        assert info["flops_per_char"] > 0 and info["first_step_s"] > 0 and info["chars_per_s"] > 0
        assert b["stats"]["rounds"] >= 3 and b["group"].startswith("smoke ")
    assert doc["machine_info"]["lstmbench"]["threads"] == 1
    cli = Path(sys.executable).with_name("pytest-benchmark")
    if not cli.exists():
        pytest.skip("the pytest-benchmark command is not installed beside this interpreter")
    r = run([str(cli), "compare", str(out)], "numpy-f32", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "numpy-f32/train/smoke" in r.stdout


def test_unavailable_backend_is_skipped_with_the_reason(tmp_path):
    r = run([sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "-rs",
             "--benchmark-disable"], "chainer", ROOT)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "3 skipped" in r.stdout and "backend chainer unavailable in this interpreter" in r.stdout


def test_unsupported_cells_skip_and_keras_runs_in_its_own_worker(tmp_path):
    """onnxruntime and tensorflow-genloop have no train mode: skipped with the registry's
    reason, not a NotImplementedError. keras-jax needs KERAS_BACKEND=jax before Keras is
    imported: timed in a worker process of its own, its rounds in the JSON as pytest-benchmark
    statistics (replayed exactly) with the environment it ran in."""
    from impls import registry
    out = tmp_path / "b.json"
    r = run([sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "-rs",
             "-k", "train", "--benchmark-json", str(out)], "onnxruntime,tensorflow-genloop,keras-jax", ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for b in ("onnxruntime", "tensorflow-genloop"):
        assert registry.unsupported(b, mode="train") in r.stdout, r.stdout[-3000:]
    assert "NotImplementedError" not in r.stdout
    import importlib.util
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
        assert "3 skipped" in r.stdout and "keras-jax" in r.stdout
        pytest.skip("keras or jax is not installed here: keras-jax's cell was skipped with the reason")
    benches = json.loads(out.read_text())["benchmarks"]
    assert [b["extra_info"]["cell"]["backend"] for b in benches] == ["keras-jax"], r.stdout[-3000:]
    b = benches[0]
    info, st = b["extra_info"], b["stats"]
    assert info["measured_in"] == "a worker process with KERAS_BACKEND=jax" and info["framework"]
    rounds = info["worker_rounds_s"]
    assert st["rounds"] == len(rounds) >= 3 and b["options"]["timer"] == "worker_rounds"
    assert st["min"] == pytest.approx(min(rounds)) and st["max"] == pytest.approx(max(rounds))
    assert info["chars_per_s"] == pytest.approx(info["chars_per_call"] / st["median"])
    assert info["first_step_s"] > 0 and info["inner"] >= 1
