"""The command line as a user runs it: case make / run / diff end to end, the listings, and
bad input to `run` and `compare` (one line on stderr, exit status 2, no traceback, nothing
written); bad input to `case` and `check`: tests/test_bad_inputs.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from impls.case import load_outputs
from impls.tolerances import rel_error
from tests import independent

ROOT = Path(__file__).resolve().parent.parent


def lstmbench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})})


def test_case_make_run_diff_and_independent_check(tmp_path):
    r = lstmbench("case", "make", "--preset", "char-rnn", "--seed", "1", "--out", "c.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = lstmbench("case", "run", "c.npz", "--backend", "numpy", "--out", "o.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    theirs = independent.run_case_file(tmp_path / "c.npz")
    ours, meta = load_outputs(tmp_path / "o.npz")
    assert meta["backend"] == "numpy" and meta["dtype"] == "float64"
    for k, v in theirs.items():
        assert rel_error(ours[k], v)[0] < 1e-9, k
    r = lstmbench("case", "diff", "o.npz", "o.npz", cwd=tmp_path)
    assert r.returncode == 0 and "0 failed" in r.stdout


def test_case_diff_fails_and_names_the_tensor(tmp_path):
    lstmbench("case", "make", "--vocab", "7", "--hidden", "4", "--seed", "2", "--out", "c.npz", cwd=tmp_path)
    lstmbench("case", "run", "c.npz", "--backend", "numpy", "--out", "o.npz", cwd=tmp_path)
    out, meta = load_outputs(tmp_path / "o.npz")
    out["grad/lstm.0.W_h"] = out["grad/lstm.0.W_h"] * (1 + 1e-3)  # a 1e-3 error in one tensor
    np.savez(tmp_path / "bad.npz", **out)
    r = lstmbench("case", "diff", "bad.npz", "o.npz", "--precision", "float32", cwd=tmp_path)
    assert r.returncode == 1
    bad = [ln for ln in r.stdout.splitlines() if "FAIL" in ln]
    assert len(bad) == 1 and bad[0].startswith("grad/lstm.0.W_h") and "1.00e-03" in bad[0]


def test_case_make_sizes_override_the_preset(tmp_path):
    """Sizes given beside --preset replace the preset's (they were silently ignored)."""
    from impls.case import load_case
    r = lstmbench("case", "make", "--preset", "tiny-embed", "--hidden", "6", "--input", "onehot",
                  "--batch", "1", "--seq-len", "4", "--seed", "3", "--out", "c.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    case = load_case(tmp_path / "c.npz")
    m = case.spec.model
    assert (m.hidden_size, m.input, m.embed_size, m.num_layers, m.vocab_size) == (6, "onehot", 0, 2, 13)
    assert case.tokens.shape == (1, 4) and case.spec.train.optimizer.name == "adam"


def test_case_run_under_timeout_gives_the_same_outputs(tmp_path):
    """--timeout runs the backend in a worker that can be killed; its outputs are the
    in-process run's, bit for bit."""
    lstmbench("case", "make", "--preset", "tiny", "--seed", "4", "--out", "c.npz", cwd=tmp_path)
    r = lstmbench("case", "run", "c.npz", "--backend", "numpy", "--out", "a.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = lstmbench("case", "run", "c.npz", "--backend", "numpy", "--out", "b.npz", "--timeout", "300",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, _ = load_outputs(tmp_path / "a.npz")
    b, _ = load_outputs(tmp_path / "b.npz")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_check_json_report(tmp_path):
    """check against the reference itself passes every quantity and writes its report."""
    import json
    # check computes the reference in its own process and the backend in a worker pinned to
    # --threads; OpenBLAS 0.3.31 splits a float64 GEMM differently on 1 and 2 threads (last-bit
    # differences, ~1e-17 relative), so "bit for bit" holds only with both pinned alike
    one = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = lstmbench("check", "--backends", "numpy", "--json", "r.json", "--threads", "1", cwd=tmp_path,
                  env=one)
    assert r.returncode == 0, (r.stdout, r.stderr)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["backends"]["numpy"]["status"] == "ok" and len(rep["cases"]) == 5
    rows = [row for rows in rep["backends"]["numpy"]["cases"].values() for row in rows]
    assert {row["quantity"] for row in rows} == {"forward", "loss", "grads", "steps", "generated"}
    assert all(row["rel"] == 0 for row in rows)  # the reference against itself: bit for bit


def test_check_device_gpu_reaches_every_case(tmp_path, monkeypatch, capsys):
    """`check --device gpu` (where a GPU is found: forced here) asks each backend's worker to
    compute every case on the GPU, and the report records the device."""
    import json
    from types import SimpleNamespace

    import harness.commands.check
    from harness.cli import main
    asked: list[dict] = []

    class FakeWorker:  # answers like a worker whose framework finds no CUDA device
        proc = SimpleNamespace(pid=0, returncode=0)  # a process already reaped: nothing to signal

        def __init__(self, *a, **kw) -> None:
            pass

        def request(self, req: dict, timeout: float) -> dict:
            asked.append(req)
            return {"ok": False, "kind": "error", "error": "RuntimeError: no CUDA device"}

        def close(self) -> None:
            pass
    monkeypatch.setenv("LSTMBENCH_GPU", "1")
    monkeypatch.setattr(harness.commands.check, "Worker", FakeWorker)
    status = main(["check", "--backends", "torch", "--device", "gpu", "--precision", "tf32",
                   "--json", str(tmp_path / "r.json")])
    assert status == 1 and "no CUDA device" in capsys.readouterr().out
    assert len(asked) == 5 and {(r["op"], r["device"], r["precision"]) for r in asked} == {("case", "gpu", "tf32")}
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["device"] == "gpu" and rep["precision"] == "tf32" and rep["backends"]["torch"]["status"] == "error"


def test_check_side_by_side_gives_the_same_report(tmp_path):
    """--jobs 2 checks two backends at once, each in its own worker: the same errors, case by
    case, as one at a time, and the report keeps the order the backends were named in."""
    import json
    from harness.envs.host import default_jobs
    assert default_jobs(1, cores=2) == 2 and default_jobs(2, cores=2) == 1 and default_jobs(None, cores=8) == 1
    one = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    reps = []
    for jobs in ("1", "2"):
        r = lstmbench("check", "--backends", "numpy-f32,numpy", "--jobs", jobs, "--threads", "1",
                      "--json", f"r{jobs}.json", cwd=tmp_path, env=one)
        assert r.returncode == 0, (r.stdout, r.stderr)
        reps.append(json.loads((tmp_path / f"r{jobs}.json").read_text()))
    assert "2 at a time" in r.stdout
    a, b = reps
    assert list(a["backends"]) == list(b["backends"]) == ["numpy-f32", "numpy"]
    assert (a["jobs"], b["jobs"]) == (1, 2)
    for name in a["backends"]:
        ra = [(row["key"], row["rel"]) for rows in a["backends"][name]["cases"].values() for row in rows]
        rb = [(row["key"], row["rel"]) for rows in b["backends"][name]["cases"].values() for row in rows]
        assert ra == rb and len(ra) > 20, name


def test_listings(tmp_path):
    r = lstmbench("presets", cwd=tmp_path)
    assert r.returncode == 0 and "chainer-ptb" in r.stdout and "40,813,500" in r.stdout
    r = lstmbench("backends", cwd=tmp_path)
    assert r.returncode == 0
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln and not ln.startswith(" ")}
    assert set(rows) >= {"numpy", "numpy-f32", "torch", "torch-cell", "tensorflow", "jax", "chainer"}
    assert "available" in rows["numpy"]
    assert rows["numpy"].split()[-1] == "float64" and rows["numpy-f32"].split()[-1] == "float32"


def test_backends_listing_cuts_nothing_and_names_each_precision():
    """Long versions and kernel paths are printed whole (the kernel on a line of its own), the
    columns line up however long a value is, and the float64 oracle says float64."""
    from harness.commands.backends import backends_text
    from impls import registry
    kernel = "Keras torch LSTM: hoisted input projection, per-step torch ops (CPU BLAS) " + "x" * 40
    info = {n: {"available": True, "version": "1.0", "kernel": "k"} for n in registry.BACKENDS}
    info["keras-torch"] = {"available": True, "version": "3.15.1.dev20261203+cpu.long", "kernel": kernel}
    info["chainer"] = {"available": False, "reason": "No module named 'chainer'"}
    lines = backends_text(info)
    head = lines[0]
    rows = {ln.split()[0]: ln for ln in lines[1:] if not ln.startswith(" ")}
    assert list(rows) == list(registry.BACKENDS)
    assert f"kernel: {kernel}" in [ln.strip() for ln in lines]
    assert "3.15.1.dev20261203+cpu.long" in rows["keras-torch"].split()
    for name, ln in rows.items():  # every row's columns start where the header's do
        for col in ("framework", "status", "version", "modes", "devices", "precisions"):
            at = head.index(col)
            assert ln[at - 1] == " " and ln[at] != " ", (name, col, ln)
        assert ln.split()[-1] == ",".join(registry.BACKENDS[name].precisions)
    assert rows["numpy"].split()[-1] == "float64" and rows["torch"].split()[-1] == "float32,tf32"
    assert "missing" in rows["chainer"] and "reason: No module named 'chainer'" in "\n".join(lines)
    assert {name: ln.split()[1] for name, ln in rows.items()} == \
        {name: spec.framework for name, spec in registry.BACKENDS.items()}


def test_every_backend_names_the_framework_a_user_writes_it_in(monkeypatch):
    """`framework` groups backends (the report's "Each framework at its fastest"); `requires`
    is what must import for the backend to be available, its framework among it."""
    import dataclasses
    from impls import registry
    want = {"numpy": "numpy", "numpy-f32": "numpy", "torch": "torch", "torch-cell": "torch",
            "torch-compile": "torch", "torch-genloop": "torch", "tensorflow": "tensorflow",
            "tensorflow-xla": "tensorflow", "tensorflow-genloop": "tensorflow", "jax": "jax",
            "flax": "flax", "keras-jax": "keras", "keras-torch": "keras",
            "onnxruntime": "onnxruntime", "chainer": "chainer"}
    assert {n: s.framework for n, s in registry.BACKENDS.items() if n in want} == want
    for name, spec in registry.BACKENDS.items():
        assert spec.framework in registry.FRAMEWORKS and spec.requires[0] == spec.framework, name
    assert registry.get_spec("keras-jax").requires == ("keras", "jax")
    with pytest.raises(ValueError, match="framework 'pytorch' must be one of"):
        dataclasses.replace(registry.get_spec("torch"), framework="pytorch")
    # a required module that is missing makes the backend unavailable, with the reason
    spec = dataclasses.replace(registry.get_spec("numpy-f32"), name="numpy-needs",
                               requires=("numpy", "lstmbench_no_such_module"))
    monkeypatch.setitem(registry.BACKENDS, spec.name, spec)
    ok, why = registry.availability("numpy-needs")
    assert not ok and "lstmbench_no_such_module" in why
    assert registry.availability("numpy-f32") == (True, __import__("numpy").__version__)


# case and check rows: tests/test_bad_inputs.py (one row per bad input and fault)
@pytest.mark.parametrize("args,expect", [
    (["run", "--matrix", "nope"], "unknown matrix 'nope'"),
    (["run", "--matrix", "smoke", "--backends", "nope"], "unknown backend 'nope'"),
    (["run", "--matrix", "smoke", "--python", "numpy=/no/such/python"], "no executable interpreter"),
    (["run", "--matrix", "smoke", "--backends", "numpy-f32", "--out", "afile/sub"], "cannot write there"),
    (["compare", "missing.json", "missing.json"], "no such results file"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, expect):
    lstmbench("case", "make", "--preset", "tiny", "--seed", "1", "--out", "c.npz", cwd=tmp_path)
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "c.npz").read_bytes()[:300])
    (tmp_path / "afile").write_text("not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = lstmbench(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expect in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
