"""The quality matrix's lanes, journal and resume (harness/training/quality.py).

End to end, as a user runs it (the installed `lstmbench` entry point): `run --matrix
quality-tiny` in two lanes on numpy-f32, torch, onnxruntime and chainer (in its own
environment; skipped where it has none, unless LSTMBENCH_REQUIRE_ALL is set, as in tox's
harness environment): every trainable backend ends `ok` with real losses, onnxruntime is
`unsupported` with the reason, both lanes are used, the journal is gone once the results are
written. SIGTERM during a run kills every lane's child and keeps the finished backend in the
journal; `run --resume` trains only the missing one and records the finished one exactly as
the journal holds it. SIGKILL of the parent keeps the journal too, and leaves no child. Bad --jobs values end with one line and exit status 2.

In-process, with `_run_one` replaced by a fake: the lane scheduler's bookkeeping (lanes,
concurrent_with) under a forced interleaving, the journal written as each backend finishes,
and an interruption followed by a resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.commands.quality import cmd_quality
from harness.envs.host import default_jobs, lane_cpus
from harness.engine.lanes import Children
from harness.errors import UsageError
from harness.training import quality
from harness.engine import signals
from harness.envs.interpreters import bootstrap_code, child_vars
from harness.envs.interpreters import interpreter_for
from impls import registry

ROOT = Path(__file__).resolve().parent.parent
_EXE = Path(sys.executable).parent / "lstmbench"
LSTMBENCH = [str(_EXE)] if _EXE.is_file() else [sys.executable, "-m", "harness"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A corpus cache of the module's own (children inherit it): ~/.cache stays clean."""
    return tmp_path_factory.mktemp("cache")


def _env(cache: Path, tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LSTMBENCH_CACHE"] = str(cache)
    env["TMPDIR"] = str(tmp)  # the lanes' training folders: a leftover child names this path
    return env


def lstmbench(*args: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*LSTMBENCH, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _chainer_or_skip() -> list[str]:
    """["chainer"] where its environment is found; [] otherwise (a failure under REQUIRE_ALL)."""
    try:
        interpreter_for("chainer")
    except registry.BackendError as e:
        if os.environ.get("LSTMBENCH_REQUIRE_ALL"):
            pytest.fail(f"LSTMBENCH_REQUIRE_ALL is set but chainer is unavailable: {e}")
        return []
    return ["chainer"]


def _only_file(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    assert len(found) == 1, found
    return found[0]


def _leftover_children(tmp: Path) -> list[str]:
    """Processes whose command line names `tmp` (a lane's child trains in TMPDIR=tmp)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp) in cmd and "pytest" not in cmd:
            out.append(f"{d.name}: {cmd[:200]}")
    return out


# ---- end to end ------------------------------------------------------------------------

def test_two_lanes_every_backend(tmp_path, cache):
    chainer = _chainer_or_skip()
    backends = ["numpy-f32", "torch", "onnxruntime", *chainer]
    r = lstmbench("run", "--matrix", "quality-tiny", "--backends", ",".join(backends), "--jobs", "2",
                  "--out", "res", cwd=tmp_path, env=_env(cache, tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(_only_file(tmp_path / "res", "*.json").read_text())
    assert not list((tmp_path / "res").rglob("*.journal.jsonl"))  # removed after the final write
    assert doc["schema"] == "lstmbench.quality" and doc["jobs"] == 2 and doc["threads"] == 1
    assert list(doc["backends"]) == backends and doc["requested_backends"] == backends
    assert "2 lanes" in doc["noise"] and "steps_to_target is exact" in doc["noise"]
    trainable = [b for b in backends if b != "onnxruntime"]
    for b in trainable:
        res = doc["backends"][b]
        assert res["status"] == "ok", (b, res)
        # 4.59 nats at step 0 (near ln 97); 4.26 at 10, 4.13 at 20: the 4.2 target at step 20
        assert res["steps_to_target"] == 20 and res["seconds_to_target"] > 0, (b, res)
        assert [c["step"] for c in res["curve"]] == [0, 10, 20, 30]
        assert res["final_val_loss"] < res["curve"][0]["val_loss"] - 0.4, (b, res["curve"])
        assert res["median_step_s"] > 0 and len(res["train_losses"]) == 30 and res["sample"]
        assert res["lane"] in (1, 2) and 0 <= res["start_s"] < res["end_s"] <= doc["wall_s"] + 1
        assert set(res["concurrent_with"]) <= set(trainable) - {b}
        assert f"{b}: training in lane {res['lane']}" in r.stdout  # progress names the backend
    assert {doc["backends"][b]["lane"] for b in trainable} == {1, 2}
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2:
        # each lane on a CPU of its own, the same one whenever that lane trains
        by_lane = {doc["backends"][b]["lane"]: tuple(doc["backends"][b]["cpus"]) for b in trainable}
        assert len(set(by_lane.values())) == 2 and all(len(c) == 1 for c in by_lane.values()), by_lane
        for b in trainable:
            assert tuple(doc["backends"][b]["cpus"]) == by_lane[doc["backends"][b]["lane"]]
    first, second = sorted(trainable, key=lambda b: doc["backends"][b]["start_s"])[:2]
    assert second in doc["backends"][first]["concurrent_with"]  # both lanes started at once
    assert first in doc["backends"][second]["concurrent_with"]
    onnx = doc["backends"]["onnxruntime"]
    assert onnx["status"] == "unsupported" and "no train mode" in onnx["error"] and onnx["lane"] is None
    if chainer:  # the same training on another framework, in another interpreter
        assert doc["backends"]["chainer"]["final_val_loss"] == pytest.approx(
            doc["backends"]["numpy-f32"]["final_val_loss"], rel=1e-4)


def test_sigterm_keeps_the_finished_backend_and_resume_trains_only_the_other(tmp_path, cache):
    env = _env(cache, tmp_path)
    proc = subprocess.Popen([*LSTMBENCH, "run", "--matrix", "quality-tiny", "--backends", "numpy-f32,torch",
                             "--jobs", "1", "--out", "res"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # numpy-f32 first (one lane, the given order), then torch
            seen.append(line)
            if line.startswith("torch: training in lane 1"):
                proc.send_signal(signal.SIGTERM)  # torch is starting: its import alone takes seconds
                break
        out = "".join(seen) + proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out  # 128 + SIGTERM
    assert "numpy-f32: target at step 20" in out and "continue with: lstmbench run --resume" in out
    assert not _leftover_children(tmp_path), _leftover_children(tmp_path)  # torch's group is gone
    journal = _only_file(tmp_path / "res", "*.journal.jsonl")
    assert not list((tmp_path / "res").rglob("*.json"))  # nothing final yet: the journal holds it
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert lines[0]["schema"] == "lstmbench.quality" and [x["backend"] for x in lines[1:]] == ["numpy-f32"]
    kept = lines[1]["result"]

    r = lstmbench("run", "--resume", str(journal), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 of 2 backends already finished (numpy-f32)" in r.stdout
    assert "torch: training in lane" in r.stdout and "numpy-f32: training" not in r.stdout
    target = Path(str(journal)[: -len(".journal.jsonl")])
    doc = json.loads(target.read_text())
    assert not journal.exists() and doc["resumed"] is True
    assert doc["backends"]["numpy-f32"] == kept  # exactly as journaled, not trained again
    torch = doc["backends"]["torch"]
    assert torch["status"] == "ok" and torch["steps_to_target"] == 20 and torch["session"] == 1
    assert kept["session"] == 0 and [s["index"] for s in doc["sessions"]] == [0, 1]
    assert torch["concurrent_with"] == [] and kept["concurrent_with"] == []  # one lane each time


def test_sigkill_of_the_parent_keeps_the_journal_and_leaves_no_child(tmp_path, cache):
    proc = subprocess.Popen([*LSTMBENCH, "run", "--matrix", "quality-tiny", "--backends", "numpy-f32,torch",
                             "--jobs", "1", "--out", "res"], cwd=tmp_path, env=_env(cache, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("torch: training in lane 1"):
                proc.kill()  # no clean-up at all: the journal and PR_SET_PDEATHSIG must do
                break
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    t0 = time.monotonic()
    while _leftover_children(tmp_path) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not _leftover_children(tmp_path), _leftover_children(tmp_path)
    journal = _only_file(tmp_path / "res", "*.journal.jsonl")
    assert [json.loads(x).get("backend") for x in journal.read_text().splitlines()[1:]] == ["numpy-f32"]


@pytest.mark.parametrize("jobs,message", [("0", "--jobs must be an integer >= 1, got 0"),
                                          ("x", "--jobs must be an integer >= 1, got 'x'")])
def test_bad_jobs_end_in_one_line(tmp_path, cache, jobs, message):
    r = lstmbench("run", "--matrix", "quality-tiny", "--jobs", jobs, "--out", "res", cwd=tmp_path,
                  env=_env(cache, tmp_path), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [f"lstmbench: error: {message}"], r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "res").exists()


@pytest.mark.parametrize("args,message", [
    (["--matrix", "quality-tiny", "--jobs", "-3"], "--jobs must be an integer >= 1, got -3"),
    (["--matrix", "smoke", "--jobs", "2"], "--jobs applies to the quality matrices"),
    (["--matrix", "quality-tiny", "--threads", "0"], "--threads must be between 1 and 1024"),
    (["--resume", "nowhere.json"], "no journal at nowhere.json.journal.jsonl"),
])
def test_other_bad_inputs_in_one_line(tmp_path, capsys, args, message):
    from harness.cli import main
    assert main(["run", *args, "--out", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


# ---- in-process: the scheduler and the journal, with a fake trainer ---------------------

def test_lane_bookkeeping_is_the_schedulers_own():
    """Forced interleaving: a runs until c has finished; b waits until a has started. So a
    and b start in different lanes, c follows b in b's lane, a ran beside both, b and c beside
    a only (they never overlapped)."""
    started = {k: threading.Event() for k in "abc"}
    c_done = threading.Event()

    def train_one(b: str, lane: int) -> dict[str, Any]:
        started[b].set()
        if b == "a":
            assert c_done.wait(20)
        elif b == "b":
            assert started["a"].wait(20)
        else:
            c_done.set()
        return {"status": "ok"}

    got: dict[str, dict[str, Any]] = {}
    quality.train_in_lanes(["a", "b", "c"], 2, train_one, got.__setitem__, children=Children())
    assert list(got) == ["b", "c", "a"]  # the order they finished (and were recorded) in
    assert got["a"]["lane"] != got["b"]["lane"] and got["c"]["lane"] == got["b"]["lane"]
    assert {r["lane"] for r in got.values()} == {1, 2}
    assert got["a"]["concurrent_with"] == ["b", "c"]
    assert got["b"]["concurrent_with"] == ["a"] and got["c"]["concurrent_with"] == ["a"]
    assert got["b"]["end_s"] <= got["c"]["start_s"] and got["a"]["end_s"] >= got["c"]["end_s"]


def test_more_lanes_than_backends_and_a_crashing_trainer():
    def train_one(b: str, lane: int) -> dict[str, Any]:
        if b == "bad":
            raise RuntimeError("the harness itself failed")
        return {"status": "ok"}

    got: dict[str, dict[str, Any]] = {}
    quality.train_in_lanes(["ok", "bad"], 8, train_one, got.__setitem__, children=Children())
    assert got["ok"]["status"] == "ok" and got["bad"]["status"] == "error"
    assert "RuntimeError: the harness itself failed" in got["bad"]["error"]
    assert {got["ok"]["lane"], got["bad"]["lane"]} <= {1, 2}  # two lanes, not eight


def test_default_jobs_and_queue_order():
    assert default_jobs(1, cores=2) == 2 and default_jobs(2, cores=2) == 1
    assert default_jobs(4, cores=2) == 1 and default_jobs(None, cores=2) == 1
    order = quality.schedule_order(["numpy-f32", "torch", "chainer", "jax", "keras-torch"])
    assert order[:2] == ["chainer", "keras-torch"] and order.index("numpy-f32") < order.index("torch")


def _fake_result(b: str) -> dict[str, Any]:
    curve = [{"step": s, "seconds": s / 100, "train_loss": None if s == 0 else 3.0,
              "val_loss": 4.0 - s / 10} for s in (0, 10, 20)]
    return {"status": "ok", "steps": 20, "train_seconds": 0.2, "first_step_s": 0.02, "median_step_s": 0.01,
            "chars_per_s": 1000.0, "steps_to_target": 10, "seconds_to_target": 0.1,
            "estimate_s_to_target": 0.1, "final_val_loss": 2.0 + len(b) / 100, "final_val_bpc": 3.0,
            "best_val_loss": 2.0, "curve": curve, "train_losses": [3.0] * 20, "sample": f"from {b}"}


@pytest.fixture
def small_corpus(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("LSTMBENCH_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "text.txt"
    f.write_text("the cat sat on the mat and the dog ran to it.\n" * 200)
    return str(f)


def test_journal_per_backend_then_interrupt_then_resume(tmp_path, small_corpus, monkeypatch):
    cfg = quality.QualityConfig("quality-fake", "tiny", small_corpus, steps=20, eval_every=10,
                                target_loss=3.5, val_chars=0)
    out = tmp_path / "res"
    trained: list[str] = []
    seen_in_journal: dict[str, list[str]] = {}

    def journaled() -> list[str]:
        js = list(out.rglob("*.journal.jsonl"))
        return [json.loads(x)["backend"] for x in js[0].read_text().splitlines()[1:]] if js else []

    def fake(backend, cfg, out_dir, threads, overrides, log, children=None, cpus=None):
        trained.append(backend)
        seen_in_journal[backend] = journaled()
        if backend == "numpy-f32":  # Ctrl-C while it trains: it must not be recorded
            os.kill(os.getpid(), signal.SIGINT)
            t0 = time.monotonic()
            while not children.closed and time.monotonic() - t0 < 20:
                time.sleep(0.01)
            return {"status": "error", "error": "exit status 130: interrupted"}
        return _fake_result(backend)

    monkeypatch.setattr(quality, "_run_one", fake)
    backends = ["jax", "torch-cell", "numpy-f32", "torch"]
    assert quality.schedule_order(backends) == backends  # the queue keeps this order
    try:
        with pytest.raises(KeyboardInterrupt):
            quality.run_quality(cfg, backends, out, threads=1, jobs=1, log=lambda s: None)
    finally:
        signals.restore()  # the run leaves the handlers in clean-up mode, as for a process's exit
    assert trained == ["jax", "torch-cell", "numpy-f32"]  # the queue closed: torch never started
    assert seen_in_journal["torch-cell"] == ["jax"] and seen_in_journal["numpy-f32"] == ["jax", "torch-cell"]
    assert journaled() == ["jax", "torch-cell"] and not list(out.rglob("*.json"))
    journal = next(out.rglob("*.journal.jsonl"))
    kept = {x["backend"]: x["result"] for x in map(json.loads, journal.read_text().splitlines()[1:])}

    trained.clear()
    both = threading.Barrier(2, timeout=20)  # numpy-f32 and torch overlap: one in each lane

    def fake2(backend, *args, **kw):
        trained.append(backend)
        both.wait()
        return _fake_result(backend)

    monkeypatch.setattr(quality, "_run_one", fake2)
    with pytest.raises(UsageError, match="matrix is 'quality-fake', not 'quality-tiny'"):
        cmd_quality(_args(matrix="quality-tiny", resume=str(journal)))
    with pytest.raises(UsageError, match="--threads 1; leave --threads out"):
        cmd_quality(_args(resume=str(journal), threads=2))
    path = quality.run_quality(cfg, [], out, resume=journal, jobs=2, log=lambda s: None)
    assert sorted(trained) == ["numpy-f32", "torch"]
    doc = json.loads(path.read_text())
    assert list(doc["backends"]) == backends and not journal.exists()
    assert {b: doc["backends"][b] for b in kept} == kept
    assert doc["backends"]["numpy-f32"]["session"] == doc["backends"]["torch"]["session"] == 1
    assert doc["backends"]["numpy-f32"]["concurrent_with"] == ["torch"]  # two lanes this time
    assert [s["jobs"] for s in doc["sessions"]] == [1, 2] and doc["resumed"] is True


def _args(**kw: Any) -> Any:
    import argparse
    base = dict(matrix=None, backends=None, threads=None, jobs=None, resume=None, out="results",
                python=None, device="cpu", precision="float32")
    return argparse.Namespace(**{**base, **kw})


def test_lanes_own_distinct_cpus_where_they_fit() -> None:
    # two lanes of one thread on two CPUs: one CPU each (jax-family backends pin themselves to
    # the first CPU of their mask; without this both lanes' children shared CPU 0)
    assert lane_cpus(1, 1, 2, available=[0, 1]) == [0]
    assert lane_cpus(2, 1, 2, available=[0, 1]) == [1]
    assert lane_cpus(2, 2, 2, available=[0, 1, 2, 3, 5]) == [2, 3]
    # oversubscribed, or no thread count: no pinning rather than a shared core
    assert lane_cpus(1, 2, 2, available=[0, 1]) is None
    assert lane_cpus(1, None, 2, available=[0, 1]) is None


def test_a_lane_child_runs_on_its_cpus() -> None:
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs CPU affinity control and two CPUs")
    cpu = sorted(os.sched_getaffinity(0))[1]
    code = bootstrap_code("print(sorted(os.sched_getaffinity(0)), 'LSTMBENCH_CPUS' in os.environ)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **child_vars(os.getpid(), [cpu])},
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"[{cpu}] False", out  # pinned; its own children not told again
