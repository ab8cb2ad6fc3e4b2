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
