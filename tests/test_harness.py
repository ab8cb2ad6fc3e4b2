"""The harness end to end, as a user runs it: `lstmbench run` with every backend in its own
worker process (chainer's in its NumPy < 2 environment), `lstmbench check` on every worker
route (each backend's own cases run in its tox environment), results files,
and the failure paths: a killed worker, a hung cell, NaN, Ctrl-C.

With LSTMBENCH_REQUIRE_ALL=1 (set by tox's harness environment) every backend must be
available; otherwise the end-to-end runs use the backends that are."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.engine.bench import Cell, measure_cell
from harness.results import schema as _results
from impls import registry
from impls.config import ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
ALL = [b for b in registry.BACKENDS if b != "numpy"]


def load_results(path: Path) -> dict:
    """harness.results.load_results once it reads schema v2 (H2's migration); until then the
    JSON as written, so these tests check the engine's own output either way."""
    if getattr(_results, "SCHEMA_VERSION", 1) >= 2:
        return _results.load_results(path)
    return json.loads(Path(path).read_text())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def lstmbench(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True,
                          text=True, env=_env(), timeout=timeout)


def _available() -> list[str]:
    """Backends usable from here: the main environment's that import, plus chainer if an
    interpreter for its environment is found."""
    from harness.envs.interpreters import interpreter_for
    out = []
    for b in ALL:
        spec = registry.get_spec(b)
        try:
            interpreter_for(b)
        except registry.BackendError:
            continue
        if spec.env == "main" and not registry.availability(b)[0]:
            continue
        out.append(b)
    if os.environ.get("LSTMBENCH_REQUIRE_ALL"):
        missing = sorted(set(ALL) - set(out))
        assert not missing, f"LSTMBENCH_REQUIRE_ALL is set but these backends are unavailable: {missing}"
    return out


def _one_per_route(backends: list[str]) -> list[str]:
    """The first of `backends` for each worker route `check` takes: an environment (main or
    chainer's) with the variables set before the framework loads (KERAS_BACKEND=jax, =torch)."""
    seen: dict[tuple, str] = {}
    for b in backends:
        spec = registry.get_spec(b)
        seen.setdefault((spec.env, tuple(sorted(spec.env_vars.items()))), b)
    return list(seen.values())


def test_check_every_route(tmp_path):
    # every backend's cases run in-process in its tox environment (tests/test_conformance.py),
    # and every backend runs through a worker of its own in test_smoke_matrix_every_backend;
    # here `check` itself on each worker route: its workers side by side, the order named, the
    # JSON and the table
    backends = _one_per_route(_available())
    if os.environ.get("LSTMBENCH_REQUIRE_ALL"):
        assert set(backends) == {"numpy-f32", "chainer", "keras-jax", "keras-torch"}, backends
    # one thread each, so that on two cores two backends are checked side by side (--jobs' default)
    r = lstmbench("check", "--backends", ",".join(backends), "--threads", "1", "--json", "check.json",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert list(report["backends"]) == backends  # the order named, whatever finished first
    from harness.envs.host import default_jobs
    assert report["jobs"] == default_jobs(1)
    for name, entry in report["backends"].items():
        assert entry["status"] == "ok", (name, entry)
        assert len(entry["cases"]) == len(report["cases"]) >= 5
    table = r.stdout[r.stdout.index("backend"):]
    for b in backends:
        assert any(line.startswith(b + " ") for line in table.splitlines()), b


def _check_v2(doc: dict, backends: list[str]) -> None:
    """What every v2 results file must hold (CONTRACTS: results schema v2)."""
    assert doc["schema_version"] == 3 and doc["processes"] >= 1 and "omp_wait_policy" in doc
    assert doc["variants"] is None and all(c["variant"] is None for c in doc["cells"])
    assert doc["machine"]["cores"] and doc["machine"]["cpu"] and "commit" in doc["git"]
    assert doc["threads"] and doc["peak"]["gflops"] > 0 and doc["peak"]["via"].startswith("numpy")
    assert doc["probe"]["kind"] == "gemm" and doc["probe"]["best_gflops"] > 0 and doc["probe"]["blas"]
    assert len(doc["probe"]["rounds_s"]) == sum(w["rounds"] for w in doc["workloads"])
    assert doc["noise"]["verdict"] in ("quiet", "noisy", "contended")
    assert 0 <= doc["noise"]["contended_fraction"] <= 1 and doc["estimator"]["name"]
    spread = doc["noise"]["round_spread"]  # the cells' own median round over their fastest
    assert spread["cells"] == sum(c["result"]["status"] == "ok" for c in doc["cells"])
    assert 1 <= spread["median"] <= spread["q90"]
    assert {c["cell"]["backend"] for c in doc["cells"]} == set(backends)
    ids = {w["id"] for w in doc["workloads"]}
    assert {c["workload"] for c in doc["cells"]} == ids
    for w in doc["workloads"]:
        per_round: dict[int, list[str]] = {}
        for r, slot, name in w["order"]:
            per_round.setdefault(r, []).append(name)
        assert len(per_round) == w["rounds"]
        timed = [c["cell"]["backend"] for c in doc["cells"]
                 if c["workload"] == w["id"] and c["result"]["status"] == "ok"]
        assert all(sorted(v) == sorted(timed + ["probe"]) for v in per_round.values())
        fastest = [b for b, r in w["ratios"].items() if r["ratio"] == 1.0]
        assert len(fastest) == 1 and all(r["to"] == fastest[0] for r in w["ratios"].values())
        assert all(r["lo"] <= r["ratio"] <= r["hi"] for r in w["ratios"].values())
    for c in doc["cells"]:
        res, cell = c["result"], c["cell"]
        if res["status"] == "unsupported":  # the spec says so (e.g. onnxruntime has no train)
            assert registry.unsupported(cell["backend"], mode=cell["mode"]) == res["error"]
            continue
        assert res["status"] == "ok", (cell["backend"], cell["mode"], res)
        assert res["samples_s"] == [s["s"] for s in res["samples"]] and all(s > 0 for s in res["samples_s"])
        assert {s["process"] for s in res["samples"]} == set(range(doc["processes"]))
        assert res["ci_s"][0] <= res["estimate_s"] <= res["ci_s"][1]
        chars = cell["seq_len"] if cell["mode"] == "generate" else cell["batch"] * cell["seq_len"]
        assert res["chars_per_s"] == pytest.approx(chars / res["estimate_s"])
        assert isinstance(res["noisy"], bool) and res["clean_rounds"] == sum(s["clean"] for s in res["samples"])
        assert res["efficiency"] > 0 and res["first_step_s"] > 0
        assert (res["efficiency_flag"] is not None) == (res["efficiency"] > 1)


def _short_smoke() -> str:
    """The smoke matrix's sizes, modes and settings in a TOML file, its rounds and workload
    budget cut to a quarter: the run's every path, for every backend (79 s here against the
    built-in matrix's 102: the rest is workers importing frameworks and first compiles)."""
    from harness.engine.matrix import MATRICES
    m = MATRICES["smoke"]
    g = m.groups[0]
    lines = [f"rounds = {m.rounds // 4}", f"workload_time = {m.workload_time / 4}",
             f"round_time = {m.round_time}", f"threads = {m.threads}", f"timeout = {m.timeout}",
             "extra_rounds = 4", "extra_time = 1.0", "[[group]]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in g.items()]
    return "\n".join(lines) + "\n"


def test_smoke_matrix_every_backend(tmp_path):
    backends = _available()
    (tmp_path / "smoke.toml").write_text(_short_smoke())
    r = lstmbench("run", "--matrix", "smoke.toml", "--backends", ",".join(backends), "--out", "res",
                  "--processes", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = list((tmp_path / "res").rglob("*.json"))
    assert len(files) == 1
    doc = load_results(files[0])
    _check_v2(doc, backends)
    for b in backends:
        assert doc["backends"][b]["available"] and doc["backends"][b]["version"], b
    assert "time ratio to the fastest" in r.stdout and "machine noise:" in r.stdout
    assert "machine at start:" in r.stdout
    # smoke: one thread per framework, every worker pinned to the last CPU, the neighbours'
    # CPU use recorded per workload (nothing else of ours runs: well under a core)
    import os
    cpus = sorted(os.sched_getaffinity(0))
    assert doc["threads"] == 1 and doc["cpus"] == (cpus[-1:] if len(cpus) > 1 else None)
    assert all(0 <= w["foreign_cores"] < 4 for w in doc["workloads"])
    assert doc["noise"]["foreign_cores_max"] == max(w["foreign_cores"] for w in doc["workloads"])


MATRIX = """
rounds = {rounds}
workload_time = {workload_time}
threads = 1
min_clean = {min_clean}
extra_rounds = 2
extra_time = 1
timeout = {timeout}
[[group]]
name = "m"
vocab_size = 20
hidden_size = {hidden}
seq_len = 20
gen_len = {gen_len}
batch = [4]
modes = {modes}
"""


def _matrix(rounds: int = 4, timeout: float = 120, hidden: int = 32, gen_len: int = 20,
            modes: str = '["train", "eval", "generate"]', workload_time: float = 60.0,
            min_clean: int = 2) -> str:
    """A one-backend matrix; one pinned thread, so that no spinning pool stretches the rounds."""
    return MATRIX.format(rounds=rounds, timeout=timeout, hidden=hidden, gen_len=gen_len, modes=modes,
                         workload_time=workload_time, min_clean=min_clean)


def _start(tmp_path: Path, matrix: str, *extra: str) -> subprocess.Popen:
    (tmp_path / "m.toml").write_text(matrix)
    return subprocess.Popen([sys.executable, "-m", "harness", "run", "--matrix", "m.toml",
                             "--backends", "numpy-f32", "--out", "res", "--processes", "1", *extra],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for(proc: subprocess.Popen, text: str, limit: float = 120) -> list[str]:
    seen, t0 = [], time.monotonic()
    assert proc.stdout is not None
    while time.monotonic() - t0 < limit:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}: {''.join(seen)}")


def _cells(tmp_path: Path) -> list[dict]:
    files = list((tmp_path / "res").rglob("*.json"))
    assert len(files) == 1, files
    return load_results(files[0])["cells"]


def test_tiny_matrix_v2_with_two_processes_and_wait_policy(tmp_path):
    (tmp_path / "m.toml").write_text(_matrix(rounds=5))
    r = lstmbench("run", "--matrix", "m.toml", "--backends", "numpy-f32", "--out", "res2",
                  "--processes", "2", "--omp-wait-policy", "passive", "--seed", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = load_results(next((tmp_path / "res2").rglob("*.json")))
    assert doc["omp_wait_policy"] == "passive" and doc["processes"] == 2 and doc["seed"] == 5
    _check_v2(doc, ["numpy-f32"])
    assert all(w["rounds"] >= 10 for w in doc["workloads"])  # 5 rounds x 2 process sets


def test_what_run_says_adds_up(tmp_path):
    """The run's own words, checked against its results file: per workload its place and the
    time left at the pace so far (the share of planned rounds done adds up); each cell's clean
    rounds of its rounds; the NOISY rule once, under the first NOISY cell (4 rounds + 2
    re-measured can never give 10 clean ones: every cell is noisy); the machine's verdict with
    the signal that gave it; one peak GEMM, the same at the end as in the file, and at the
    start the faster of the two GEMMs measured then."""
    from harness.engine import explain
    (tmp_path / "m.toml").write_text(_matrix(rounds=4, min_clean=10))
    # one process set: 4 rounds + 2 re-measured stay short of 10 clean ones however quiet the
    # machine (the matrix's default of two sets would reach 10 when every round is clean)
    r = lstmbench("run", "--matrix", "m.toml", "--backends", "numpy-f32", "--out", "res",
                  "--processes", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = load_results(next((tmp_path / "res").rglob("*.json")))
    lines = r.stdout.splitlines()
    heads = [ln for ln in lines if ln.startswith("[")]
    assert [h[:5] for h in heads] == ["[1/3]", "[2/3]", "[3/3]"]
    assert heads[0].endswith("time left: known once rounds have been measured")
    assert heads[1].endswith("(33% of the planned rounds done)") and "left at the pace so far" in heads[1]
    assert heads[2].endswith("(67% of the planned rounds done)")
    cell_lines = [ln for ln in lines if ln.startswith("      numpy-f32 ")]
    assert len(cell_lines) == 3
    for ln, c in zip(cell_lines, doc["cells"]):
        res = c["result"]
        assert f"{res['clean_rounds']} of {len(res['samples'])} rounds clean" in ln and res["noisy"]
        assert ln.endswith("NOISY")
    rule = explain.noisy_rule(10)
    assert [ln.strip() for ln in lines].count(rule) == 1
    assert lines[lines.index(cell_lines[0]) + 1].strip() == rule  # where NOISY first shows
    assert f"machine noise: {explain.verdict_words(doc['noise'])}" in lines
    pk = doc["peak"]
    assert pk["gflops"] == max(pk["probe_gflops"], pk["gemm_gflops"]) > 0
    assert pk["probe_gflops"] == pytest.approx(doc["probe"]["best_gflops"])
    assert f"  efficiency denominator: {explain.peak_words(pk)}" in lines
    assert f"peak GEMM {pk['gflops']:.1f} GFLOP/s" in explain.peak_words(pk)
    start = next(ln for ln in lines if ln.startswith("machine at start: "))
    so_far = float(start.split("peak GEMM so far ")[1].split()[0])
    burst, big = float(start.split("probe GEMM (256x256) ")[1].split()[0]), \
        float(start.split("1024x1024 GEMM ")[1].split()[0])
    assert so_far == max(burst, big) <= round(pk["gflops"], 1)
    assert doc["noise"]["start"]["gflops"] == pytest.approx(burst, abs=0.05)


def test_killed_worker_loses_only_its_cell(tmp_path):
    # 400 rounds of ~30 ms would take 24 s; each workload stops after 3.5 s of rounds instead
    proc = _start(tmp_path, _matrix(rounds=400, workload_time=3.5))
    _wait_for(proc, "[1/3]")
    time.sleep(1.5)  # the first workload's rounds are under way
    pids = sorted(int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)],
                                                 capture_output=True, text=True).stdout.split())
    assert pids, "no worker process found"
    os.kill(pids[0], signal.SIGKILL)  # the oldest: numpy-f32's (the probe's started after it)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    cells = _cells(tmp_path)
    assert [c["result"]["status"] for c in cells] == ["killed", "ok", "ok"], out


def test_hung_cell_times_out_and_run_goes_on(tmp_path):
    # generating 200,000 characters takes far longer than the 2 s limit: a timeout
    proc = _start(tmp_path, _matrix(timeout=2, hidden=64, gen_len=200000, modes='["generate", "train"]'))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    statuses = [c["result"]["status"] for c in _cells(tmp_path)]
    assert statuses == ["timeout", "ok"] and "timeout" in out


def test_bad_matrix_is_one_line(tmp_path):
    (tmp_path / "m.toml").write_text('name = "../../../tmp/pwn"\n[[group]]\nvocab_size = 5\nhidden_size = 4\n')
    r = lstmbench("run", "--matrix", "m.toml", "--backends", "numpy-f32", "--out", "res", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not allowed" in r.stderr
    assert not (tmp_path / "res").exists()
    r = lstmbench("run", "--matrix", "smoke", "--processes", "0", "--out", "res", cwd=tmp_path)
    assert r.returncode == 2 and "--processes" in r.stderr


def test_ctrl_c_keeps_finished_workloads_and_resume_completes(tmp_path):
    import importlib.util
    has_journal = importlib.util.find_spec("harness.session.journal") is not None
    proc = _start(tmp_path, _matrix(rounds=40))
    _wait_for(proc, "[2/3]")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "interrupted" in out, out
    if not has_journal:  # before harness.session.journal (H2): the finished workload in a partial file
        files = list((tmp_path / "res").rglob("*.json"))
        doc = load_results(files[0])
        assert len(files) == 1 and doc["interrupted"] and len(doc["cells"]) == 1
        assert doc["cells"][0]["result"]["status"] == "ok"
        pytest.skip("harness.session.journal is not there yet: resume not tested")
    journals = list((tmp_path / "res").rglob("*.journal.jsonl"))
    assert len(journals) == 1 and not list((tmp_path / "res").rglob("*.json"))
    r = lstmbench("run", "--resume", str(journals[0]), "--out", "res", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 workloads already measured" in r.stdout
    cells = _cells(tmp_path)
    assert sorted(c["cell"]["mode"] for c in cells) == ["eval", "generate", "train"]
    assert all(c["result"]["status"] == "ok" for c in cells)
    assert not list((tmp_path / "res").rglob("*.journal.jsonl"))


def test_nan_is_recorded_not_raised(monkeypatch):
    import harness.engine.bench
    import numpy as np
    real = harness.engine.bench.init_params

    def poisoned(m, seed):  # one NaN weight: every loss is NaN from the first step
        p = real(m, seed)
        p["out.b"][0] = np.nan
        return p
    monkeypatch.setattr(harness.engine.bench, "init_params", poisoned)
    cell = Cell("numpy-f32", "train", "nan", ModelConfig(10, 8), TrainConfig(), 2, 5)
    res = measure_cell(cell, min_time=0.05)
    assert res["status"] == "nan" and "non-finite" in res["error"]


def test_chainer_reached_through_its_own_environment(tmp_path):
    """`case run` for a backend of another environment runs in that environment's python."""
    from harness.envs.interpreters import interpreter_for
    try:
        py = interpreter_for("chainer")
    except registry.BackendError as e:
        if os.environ.get("LSTMBENCH_REQUIRE_ALL"):
            raise
        pytest.skip(str(e))
    lstmbench("case", "make", "--preset", "tiny-embed", "--seed", "7", "--out", "c.npz", cwd=tmp_path)
    r = lstmbench("case", "run", "c.npz", "--backend", "chainer", "--out", "o.npz",
                  "--python", f"chainer={py}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lstmbench("case", "run", "c.npz", "--backend", "numpy", "--out", "e.npz", cwd=tmp_path)
    r = lstmbench("case", "diff", "o.npz", "e.npz", "--case", "c.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert "(chainer, float32)" in r.stdout and " 0 failed" in r.stdout


def test_case_diff_verifies_a_documented_deviation(tmp_path):
    """Keras Adagrad puts eps inside the root: `case diff` accepts the difference only because
    it matches the reference run with that native formula; a further error still fails."""
    if not registry.availability("tensorflow")[0]:
        if os.environ.get("LSTMBENCH_REQUIRE_ALL"):
            pytest.fail("tensorflow unavailable")
        pytest.skip("tensorflow unavailable")
    lstmbench("case", "make", "--vocab", "9", "--hidden", "6", "--optimizer", "adagrad", "--lr", "0.5",
              "--clip", "value:0.001", "--seed", "3", "--out", "c.npz", cwd=tmp_path)
    assert lstmbench("case", "run", "c.npz", "--backend", "tensorflow", "--out", "tf.npz", cwd=tmp_path).returncode == 0
    assert lstmbench("case", "run", "c.npz", "--backend", "numpy", "--out", "ref.npz", cwd=tmp_path).returncode == 0
    r = lstmbench("case", "diff", "tf.npz", "ref.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert "deviation" in r.stdout and "Adagrad" in r.stdout and " 0 failed" in r.stdout
    import numpy as np
    from impls.case import load_outputs
    out, meta = load_outputs(tmp_path / "tf.npz")
    out["after/out.b"] = out["after/out.b"] + 1e-3  # an error the native formula cannot explain
    np.savez(tmp_path / "bad.npz", meta=np.array(json.dumps(meta)), **out)
    r = lstmbench("case", "diff", "bad.npz", "ref.npz", cwd=tmp_path)
    assert r.returncode == 1 and "not explained by the native formula" in r.stdout, r.stdout
