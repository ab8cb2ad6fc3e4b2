"""The hand-written baselines (benchmarks/baselines/) and `lstmbench baselines` (harness/commands/baselines.py).

- every baseline's make_step and make_eval run at tiny sizes, in its backend's own interpreter
  and environment variables (keras under KERAS_BACKEND=jax and =torch, chainer in its NumPy < 2
  environment), give finite losses, and training lowers the loss on a fixed window;
- every baseline's make_generate, in the same environments, draws exactly seq_len ids in
  [0, V), returns their sum, samples (not argmax), gives the same text for the same seed and
  another for another seed, and refuses a batch other than 1;
- the mapping backend -> baseline covers every registered backend (a backend added to the
  registry without an entry fails here);
- the command end to end on torch at the tiny preset, and its bad inputs (exit 2, one line).

Frameworks missing here are skipped, or fail where LSTMBENCH_REQUIRE_ALL is set (tox)."""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.commands import baselines
from harness.engine.bench import Cell
from harness.envs import interpreters as envs
from harness.cli import main
from harness.errors import UsageError
from impls import registry
from impls.config import get_preset

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "benchmarks" / "baselines"
STEPS = 30
GEN_LEN = 40

# The start of a check run in the backend's interpreter (harness.envs.interpreters.bootstrap_code loads this
# checkout's code by location): the baseline file sys.argv[1] as `mod`, or a SKIP line where
# its framework cannot load there.
LOAD = r"""
import json
try:
    from harness.engine.kinds.baseline import load_baseline
    mod = load_baseline(sys.argv[1])
except ImportError as e:
    print("SKIP " + f"{type(e).__name__}: {e}".splitlines()[0])
    raise SystemExit(0)
from impls.config import PRESETS
STEPS, GEN_LEN = int(sys.argv[2]), int(sys.argv[3])
result = {}
"""

# Each tiny preset, "tiny" with dropout on, STEPS train steps, 3 eval steps: result["check"].
CHECK = r"""
from dataclasses import replace
out = {}
for name in ("tiny", "tiny-embed", "tiny-deep"):
    p = PRESETS[name]
    m = replace(p.model, dropout=0.25) if name == "tiny" else p.model
    step = mod.make_step(m, p.batch_size, p.seq_len, train=p.train, seed=0)
    losses = [float(step()) for _ in range(STEPS)]
    ev = mod.make_eval(m, p.batch_size, p.seq_len, train=p.train, seed=0)
    out[name] = {"train": losses, "eval": [float(ev()) for _ in range(3)]}
result["check"] = out
"""


def _unavailable(why: str) -> None:
    if os.environ.get("LSTMBENCH_REQUIRE_ALL"):
        pytest.fail(f"LSTMBENCH_REQUIRE_ALL is set but {why}")
    pytest.skip(why)


# one backend per baseline participant: the environment each baseline is run in
HOSTS = ["torch", "tensorflow", "keras-jax", "keras-torch", "jax", "chainer"]


@functools.cache
def _run_in_host(host: str) -> dict:
    """Run LOAD, CHECK and GEN_CHECK on `host`'s baseline in that backend's interpreter and
    worker environment (KERAS_BACKEND, threads, code root), one process per host (its framework
    imported once for both tests); its RESULT line's JSON (skips or fails, as
    LSTMBENCH_REQUIRE_ALL says, where the framework is missing)."""
    name = baselines.BASELINES[host].baseline
    assert name is not None
    try:
        py = envs.interpreter_for(host)
    except registry.BackendError as e:
        _unavailable(f"no interpreter for {host}: {e}")
    env = envs.worker_env(1, backend=host)
    script = LOAD + CHECK + GEN_CHECK + 'print("RESULT " + json.dumps(result))\n'
    r = subprocess.run([py, "-c", envs.bootstrap_code(script), str(DIR / baselines.baseline_file(name)),
                        str(STEPS), str(GEN_LEN)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(("RESULT ", "SKIP "))), "")
    if line.startswith("SKIP "):
        _unavailable(f"{name} baseline cannot load under {host}'s environment: {line[5:]}")
    assert line, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("host", HOSTS)
def test_baseline_trains_and_evaluates(host: str) -> None:
    name = baselines.BASELINES[host].baseline
    for preset, got in _run_in_host(host)["check"].items():
        tr, ev = got["train"], got["eval"]
        assert all(math.isfinite(x) and x > 0 for x in tr + ev), (preset, tr, ev)
        assert sum(tr[-3:]) / 3 < tr[0] - 0.02, f"{name} under {host}, {preset}: loss did not fall: {tr}"


# For each tiny preset, two generate steps of seed 0 and one of seed 1, each called twice
# (returned value, ids); then the sizes a generate step refuses: result["generate"].
GEN_CHECK = r"""
n = GEN_LEN
out = {}
for name in ("tiny", "tiny-embed", "tiny-deep"):
    p = PRESETS[name]
    runs = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 1)):
        step = mod.make_generate(p.model, 1, n, train=p.train, seed=seed)
        runs[key] = [(float(step()), step.tokens.tolist()) for _ in range(2)]
    out[name] = {"V": p.model.vocab_size, "runs": runs}
refused = []
for b, t in ((2, n), (1, 0)):
    try:
        mod.make_generate(PRESETS["tiny"].model, b, t)
        refused.append(None)
    except ValueError as e:
        refused.append(str(e))
out["refused"] = refused
result["generate"] = out
"""


@pytest.mark.parametrize("host", HOSTS)
def test_baseline_generates(host: str) -> None:
    got = dict(_run_in_host(host)["generate"])
    b_msg, t_msg = got.pop("refused")
    assert b_msg and "batch must be 1" in b_msg, b_msg
    assert t_msg and "seq_len" in t_msg, t_msg
    assert set(got) == {"tiny", "tiny-embed", "tiny-deep"}
    for preset, g in got.items():
        V, runs = g["V"], g["runs"]
        for key, calls in runs.items():
            for value, toks in calls:
                assert len(toks) == GEN_LEN and all(0 <= t < V for t in toks), (preset, key, toks)
                assert math.isfinite(value) and value == sum(toks), (preset, key, value, toks)
                # random weights give a near-uniform softmax: a sampler draws many ids, an
                # argmax (or a constant) few
                assert len(set(toks)) >= 3, (preset, key, toks)
            # the sampler's state goes on from call to call: the second text is another draw
            assert calls[0][1] != calls[1][1], (preset, key, calls)
        assert runs["a"] == runs["b"], f"{host}, {preset}: seed 0 gave two texts: {runs['a']} {runs['b']}"
        assert runs["a"][0][1] != runs["c"][0][1], f"{host}, {preset}: seeds 0 and 1 gave the same text"


# ---- the mapping -----------------------------------------------------------------------------

def test_every_registered_backend_has_a_baseline_or_a_reason() -> None:
    # the mapping is read from the registry, so a backend added there is in it by existing
    assert set(baselines.BASELINES) == set(registry.BACKENDS)
    for b, e in baselines.BASELINES.items():
        spec = registry.get_spec(b)
        assert (e.baseline, e.note) == (spec.baseline, spec.baseline_note), b
        assert e.note.strip(), b
        if e.baseline is None:
            continue
        path = DIR / baselines.baseline_file(e.baseline)
        assert path.is_file(), f"{b}'s baseline {path} is missing"
        text = path.read_text()
        assert all(f"def {f}(" in text for f in ("make_step", "make_eval", "make_generate")), path
    # every framework that can train has some baseline: only NumPy itself and the no-train
    # backends go without
    without = {b for b, e in baselines.BASELINES.items() if e.baseline is None}
    assert without == {b for b in without
                       if b.startswith("numpy") or "train" not in registry.get_spec(b).modes}


def test_a_spec_without_a_baseline_note_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline_note"):
        registry.BackendSpec("x", "impls.x_impl", "X", "numpy", "main", "float32", "x", baseline="torch")


def test_reasons_name_real_backends_and_modes() -> None:
    """A backend's measured reason for being slower than its baseline is in its registry entry."""
    reasons = {(b, mode): why for b, s in registry.BACKENDS.items() for mode, why in s.baseline_slower.items()}
    assert reasons, "no reason recorded: the README's table has two"
    for (b, mode), why in reasons.items():
        assert baselines.BASELINES[b].baseline is not None, b
        assert mode in (*baselines.MODES, "*") and why.strip(), (b, mode)
    assert baselines.reason_for("torch-cell", "generate") == reasons[("torch-cell", "*")]
    assert baselines.reason_for("tensorflow-xla", "eval") is None


def test_participants_share_a_baseline_only_within_an_environment() -> None:
    names = {b: baselines.participant_name(b) for b in baselines.with_baseline()}
    assert names["torch"] == names["torch-cell"] == names["torch-compile"] == "baseline:torch"
    assert names["keras-jax"] != names["keras-torch"]  # KERAS_BACKEND differs
    assert "KERAS_BACKEND=jax" in baselines.baseline_label("keras-jax")
    for n in names.values():
        assert n not in registry.BACKENDS


def _result(seconds: list[list[float]]) -> dict:
    """A cell result whose samples are seconds[p][r] (process p, round r)."""
    return {"status": "ok", "samples": [{"s": s, "process": p, "round": r, "clean": True}
                                        for p, rs in enumerate(seconds) for r, s in enumerate(rs)]}


def test_marks_are_the_in_run_comparisons() -> None:
    """A backend against its baseline is judged by harness.judge.duet, as compare --variants judges two
    variants: the same marks, the baseline as BASE, the backend as NEW."""
    rng = np.random.default_rng(0)
    phase = np.exp(rng.normal(0, 0.2, (3, 40)))  # the host's phases, shared round by round
    base = 1e-3 * phase * np.exp(rng.normal(0, 0.01, (3, 40)))

    def row(rb: dict, rq: dict) -> dict:
        _, rows = baselines.judge_rows([("tiny", "train", "tiny/train/B2xT4", "torch", rb, rq)])
        return rows[0]

    def judged(factor: float) -> str:
        new = factor * 1e-3 * phase * np.exp(rng.normal(0, 0.01, (3, 40)))
        r = row(_result(new.tolist()), _result(base.tolist()))
        assert r["ci"][0] <= r["ratio"] <= r["ci"][1] and abs(r["ratio"] / factor - 1) < 0.02, (factor, r)
        assert r["processes"] == 3 and not r["tau_assumed"]
        return r["mark"]
    assert judged(1.0) == "unchanged"
    assert judged(1.3) == "slower"
    assert judged(0.6) == "faster"
    failed = row({"status": "crash", "error": "worker exited"}, _result(base.tolist()))
    assert failed["mark"] == "failed" and failed["regression"] and "crash" in failed["reason"]


# ---- the command ---------------------------------------------------------------------------

@pytest.mark.slow
def test_command_end_to_end_on_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    ok, why = registry.availability("torch")
    if not ok:
        _unavailable(f"torch is unavailable: {why}")
    monkeypatch.chdir(ROOT)  # --dir found from the working directory, as tox runs it
    rc = main(["baselines", "--presets", "tiny", "--backends", "torch", "--rounds", "3",
               "--modes", "train,eval", "--threads", "1", "--seed", "3", "--out", str(tmp_path / "res")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    out, = (tmp_path / "res").glob("*/*-baselines-cpu.json")  # FOLDER/<machine>/<time>-baselines-cpu.json
    doc = json.loads(out.read_text())
    assert doc["schema"] == baselines.SCHEMA and doc["seed"] == 3
    assert list(doc["backends"]) == ["torch"]  # the backends described; a baseline is its host's
    assert Path(doc["baselines_dir"]) == DIR.resolve()
    # one thread on a machine of more CPUs: every worker pinned to the last one, as `run` does
    from harness.envs.host import usable_cpus
    cpus = usable_cpus()
    assert doc["cpus"] == ([cpus[-1]] if cpus and len(cpus) > 1 else None)
    assert {(r["mode"], r["backend"]) for r in doc["rows"]} == {("train", "torch"), ("eval", "torch")}
    for row in doc["rows"]:
        (lo, hi), (elo, ehi) = row["ci"], row["ci90"]
        assert all(math.isfinite(x) and x > 0 for x in (row["ratio"], lo, hi, elo, ehi)), row
        assert lo <= elo <= row["ratio"] <= ehi <= hi, row
        assert row["mark"] in ("faster", "slower", "unchanged", "inconclusive"), row
        assert row["pairs"] >= 3 and row["processes"] == 1 and row["tau_assumed"], row
        assert row["baseline_s"] > 0 and row["backend_s"] > 0
    for w in doc["workloads"]:
        assert set(w["participants"]) == {"torch", "baseline:torch"}
        assert all(p["result"]["status"] == "ok" for p in w["participants"].values())
    assert "| tiny | train | torch | torch |" in cap.out
    # v3: each workload's backends to their fastest (baselines are no backend), the peak GEMM and
    # every result's efficiency against it, the frontier line per workload; and the file reads as
    # a run of its backends (report, compare, load_dataframe)
    assert doc["schema_version"] == 3 and doc["peak"]["gflops"] > 0
    assert doc["peak"]["gflops"] == max(doc["peak"]["probe_gflops"], doc["peak"]["gemm_gflops"])
    for w in doc["workloads"]:
        assert set(w["ratios"]) == {"torch"} and w["ratios"]["torch"]["ratio"] == 1.0
        for p in w["participants"].values():
            assert p["result"]["efficiency"] == pytest.approx(p["result"]["gflops"] / doc["peak"]["gflops"])
    assert cap.out.count("each framework at its fastest: torch 1.00") == 2
    from harness.results.model import read_run
    run, cells = read_run(out)
    assert [(c.cell.backend, c.cell.mode) for c in cells] == [("torch", "train"), ("torch", "eval")]
    assert run.doc["converted_from"] == baselines.SCHEMA and all(c.measured for c in cells)
    assert {c.workload for c in cells} == {w["id"] for w in doc["workloads"]}
    with pytest.raises(UsageError, match="give a folder"):  # a file's name: refused before measuring
        baselines.cmd_baselines(baselines_args(out=str(out)))


def baselines_args(**kw: str) -> object:
    import argparse
    ns = dict(presets="tiny", backends="torch", modes="train", threads=1, out="results", dir=None,
              seed=0, rounds=3, processes=1, workload_time=10.0, python=None)
    ns.update(kw)
    return argparse.Namespace(**ns)


@pytest.mark.parametrize("argv, words", [
    (["--backends", "nope"], "unknown backend 'nope'"),
    (["--backends", "numpy-f32"], "has no baseline"),
    (["--backends", "onnxruntime"], "has no baseline"),
    (["--modes", "predict"], "--modes"),
    (["--presets", "no-such-preset"], "unknown preset"),
    (["--dir", "/nonexistent/baselines"], "--dir"),
    (["--threads", "0"], "--threads"),
])
def test_bad_inputs_exit_2_with_one_line(argv: list[str], words: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["baselines", "--presets", "tiny", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], err


def test_no_baselines_folder_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Outside a checkout (the package installed, its folder no checkout), with no --dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(baselines, "ROOT", tmp_path)
    rc = main(["baselines", "--presets", "tiny", "--backends", "torch"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--dir" in lines[0], err


def test_a_folder_without_the_needed_file_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "jax_baseline.py").write_text("")
    rc = main(["baselines", "--presets", "tiny", "--backends", "torch", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "torch_baseline.py" in err and len(err.strip().splitlines()) == 1, err


def test_run_resume_continues_a_baselines_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An interrupted baselines run is a journal (harness.session) that `run --resume` continues
    (harness.session.kinds) with the settings its header records: only the workloads it lacks
    are measured, and the file holds them all, judged together."""
    from harness.engine.assemble import workload_record
    from harness.session.journal import Journal, journal_path
    plan = baselines.Plan(("tiny",), ("train", "eval"), ("torch",), 1, DIR.resolve(), 3, rounds=12)
    base = np.exp(np.random.default_rng(0).normal(0, 0.05, (1, 12))) * 1e-3
    measured: list[str] = []

    def record(wid: str, cells: list) -> dict:
        from harness.engine import stats
        res = {}
        for c in cells:
            r = _result((base * (1.3 if c.backend == "torch" else 1.0)).tolist())
            r.update(stats.cell_estimate(r["samples"], min_clean=5), first_step_s=0.1)
            res[c.backend] = {**r, "chars_per_s": c.chars_per_call() / r["estimate_s"]}
        return workload_record(wid, {c.backend: (c, None) for c in cells}, res, None, 1, None)

    class FakeExecutor:  # this machine's executor without workers: the session is what is tested
        setup = argparse.Namespace(launch=argparse.Namespace(cpus=None), extra={})
        probe = argparse.Namespace(flop=2 * 256 ** 3)

        def gemm_peak(self): return None

        def describe(self, log): return {"torch": {"available": True, "version": "2"}}
        def serve(self, name, host): pass
        def start_probe(self, log): return False
        def close(self): pass

        def run_workload(self, wid, cells, log, on_round=None):
            measured.append(wid)
            return record(wid, cells)

    doc = baselines.new_document(plan, None, ["lstmbench", "baselines"])
    doc.update(backends={"torch": {"available": True}}, baselines={})
    target = tmp_path / "m" / "x-baselines-cpu.json"
    target.parent.mkdir()
    journal = Journal(journal_path(target))
    journal.write_header({**doc, "target": str(target)})
    cells = [Cell.from_preset(get_preset("tiny"), n, "train") for n in ("torch", "baseline:torch")]
    journal.append(record(f"tiny/train/B{cells[0].batch}xT{cells[0].seq_len}", cells))
    monkeypatch.setattr(baselines, "_executor", lambda plan, overrides: FakeExecutor())
    assert main(["run", "--resume", str(journal.path)]) == 0, capsys.readouterr().err
    out = json.loads(target.read_text())
    assert measured == [w["id"] for w in out["workloads"]][1:] and len(measured) == 1  # eval only
    assert [(r["mode"], r["mark"]) for r in out["rows"]] == [("train", "slower"), ("eval", "slower")]
    assert out["seed"] == 3 and out["schedule"]["rounds"] == 12 and not journal.path.exists()
