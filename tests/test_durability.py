"""Nothing lost, nothing left behind: the run journal and its torn lines, the final file's
fallback when the target cannot be written, a worker protocol that stray prints and broken
answers cannot derail, workers that die with their parent, no temporary files left, signal
handling (exit 130/143), failure kinds, and results files (v1 migration, bad values, names)."""
from __future__ import annotations

import errno
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.session import journal as jmod
from harness.engine.failures import classify, classify_message
from harness.session.journal import Journal, finalize, journal_path
from harness.engine.workers import Worker, WorkerFailed
from harness.results.schema import ResultsError, load_results
from harness.results.store import default_path
from harness.engine.signals import Interrupted, interruptible, restore

ROOT = Path(__file__).resolve().parent.parent
FAULTS = {"LSTMBENCH_TEST_FAULTS": "1"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# ---- the journal ----------------------------------------------------------------------------

def _rec(i: int) -> dict:
    return {"workload": {"id": f"w{i}"}, "cells": [{"cell": {"backend": "b"}, "result": {"status": "ok"}}]}


def test_journal_round_trip_and_torn_last_line(tmp_path):
    path = journal_path(tmp_path / "run.json")
    assert path.name == "run.json.journal.jsonl"
    j = Journal(path)
    j.write_header({"schema": "lstmbench.results", "matrix": {"name": "m"}, "cells": [1], "workloads": [2]})
    j.append(_rec(0))
    j.append(_rec(1))
    with open(path, "ab") as f:  # a crash in the middle of the third record
        f.write(b'{"workload": {"id": "w2"}, "cel')
    header, records = Journal.read(path)
    assert header == {"schema": "lstmbench.results", "matrix": {"name": "m"}}  # no cells/workloads
    assert [r["workload"]["id"] for r in records] == ["w0", "w1"]
    # resuming appends after the torn line is cut off: nothing is glued onto it
    j2 = Journal(path)
    j2.append(_rec(3))
    _, records = Journal.read(path)
    assert [r["workload"]["id"] for r in records] == ["w0", "w1", "w3"]
    assert path.read_bytes().endswith(b"\n") and b"cel{" not in path.read_bytes()
    with pytest.raises(ResultsError, match="already there"):
        Journal(path).write_header({"schema": "x"})


def _doc() -> dict:
    return {"schema": "lstmbench.results", "schema_version": 2, "cells": [{"x": 1}], "_big_peak": 3}


def test_finalize_writes_atomically_never_over_and_removes_journal(tmp_path):
    target = tmp_path / "out" / "m" / "run.json"
    jf = journal_path(target)
    Journal(jf).write_header({"schema": "lstmbench.results"})
    written = finalize(jf, target, _doc())
    assert written == target and not jf.exists()
    assert json.loads(target.read_text()) == {k: v for k, v in _doc().items() if k != "_big_peak"}
    second = finalize(jf, target, {**_doc(), "cells": []})  # the name is taken: a sibling
    assert second == target.with_name("run.1.json") and json.loads(target.read_text())["cells"] == [{"x": 1}]
    assert not list(target.parent.glob(".*.tmp"))


@pytest.mark.parametrize("fault,cause", [
    ("file", "is a file, not a folder"),
    ("dangling", "is a symbolic link to"),
    ("readonly", "is read-only (EROFS)"),
    ("full", "is full (ENOSPC)"),
])
def test_finalize_falls_back_and_names_the_cause(tmp_path, monkeypatch, fault, cause):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    out.mkdir()
    jf = out / "run.json.journal.jsonl"
    Journal(jf).write_header({"schema": "lstmbench.results"})
    target = out / "machine" / "run.json"
    if fault == "file":  # the target's folder replaced by a file
        (out / "machine").write_text("not a folder")
    elif fault == "dangling":
        (out / "machine").symlink_to(tmp_path / "gone")
    else:  # read-only file system / disk full (simulated: root may write anywhere)
        code = errno.EROFS if fault == "readonly" else errno.ENOSPC
        real = jmod.tempfile.mkstemp

        def mkstemp(*a, dir=None, **kw):
            if Path(dir).resolve().is_relative_to(out.resolve()):
                raise OSError(code, os.strerror(code), str(dir))
            return real(*a, dir=dir, **kw)
        monkeypatch.setattr(jmod.tempfile, "mkstemp", mkstemp)
    with pytest.raises(ResultsError) as ei:
        finalize(jf, target, _doc())
    msg = str(ei.value)
    rescued = tmp_path / "lstmbench-rescued-run.json"
    assert cause in msg and str(rescued) in msg and str(target) in msg, msg
    assert json.loads(rescued.read_text())["cells"] == [{"x": 1}]
    assert jf.exists()  # kept: the target was not written


# ---- signals --------------------------------------------------------------------------------

def test_first_signal_interrupts_later_ones_are_held_off():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as ei:
        with interruptible() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # never reached in full
    assert ei.value.signum == signal.SIGTERM and ei.value.exit_status == 143 and stop.signum == signal.SIGTERM
    assert isinstance(ei.value, KeyboardInterrupt)
    os.kill(os.getpid(), signal.SIGINT)  # clean-up mode: ignored, no KeyboardInterrupt
    time.sleep(0.05)
    assert stop.count == 1
    restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_no_signal_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with interruptible() as stop:
        pass
    assert not stop.requested and signal.getsignal(signal.SIGTERM) is before


# ---- failure kinds ----------------------------------------------------------------------------

class ResourceExhaustedError(Exception):  # tensorflow's class name, without importing it
    pass


class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name
    pass


@pytest.mark.parametrize("exc,kind", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 29000000000000 bytes."), "oom"),
    (MemoryError("Unable to allocate 29.1 TiB for an array"), "oom"),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (ResourceExhaustedError("OOM when allocating tensor"), "oom"),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB"), "oom"),
    (ValueError("shapes (3,4) and (5,6) not aligned"), "error"),
    (KeyError("stats"), "error"),
])
def test_classify(exc, kind):
    assert classify(exc) == kind
    assert classify_message(f"{type(exc).__name__}: {exc}") == kind


def test_classify_follows_the_cause():
    try:
        try:
            raise MemoryError("x")
        except MemoryError as e:
            raise RuntimeError("backend failed") from e
    except RuntimeError as e:
        assert classify(e) == "oom"


# ---- the worker protocol -----------------------------------------------------------------------

def _logs() -> set[str]:
    return set(glob.glob(os.path.join("/tmp", "lstmbench-worker-*.log")))


def test_stray_prints_cannot_reach_the_protocol():
    before = _logs()
    with Worker(sys.executable, 1, extra_env=FAULTS) as w:
        assert w.request({"op": "_stray"}, 60) == {"ok": True, "value": 1}
        assert "a stray line written to fd 1 from C" in w.stderr_tail(5)
        ans = w.request({"op": "_oom"}, 60)  # an allocation failure answered, worker alive
        assert ans["ok"] is False and ans["kind"] == "oom" and "DefaultCPUAllocator" in ans["error"]
        ans = w.request({"op": "no-such-op"}, 60)
        assert ans["ok"] is False and ans["kind"] == "error" and "unknown op" in ans["error"]
        assert w.request({"op": "_stray"}, 60)["value"] == 1
    assert w.proc.poll() is not None and _logs() <= before


@pytest.mark.parametrize("op,text", [("_garbage", "not JSON"), ("_truncate", "truncated answer")])
def test_malformed_answer_fails_that_request_and_a_fresh_worker_goes_on(op, text):
    w = Worker(sys.executable, 1, extra_env=FAULTS)
    try:
        with pytest.raises(WorkerFailed) as ei:
            w.request({"op": op}, 60)
        assert ei.value.kind == "malformed" and text in str(ei.value), str(ei.value)
        assert w.proc.poll() is not None  # killed (or gone): the caller starts a new one
    finally:
        w.close()
    with Worker(sys.executable, 1, extra_env=FAULTS) as w2:
        assert w2.request({"op": "_stray"}, 60)["ok"] is True


def test_timeout_kills_the_worker():
    with Worker(sys.executable, 1, extra_env=FAULTS) as w:
        with pytest.raises(WorkerFailed) as ei:
            w.request({"op": "_sleep", "s": 60}, 1)
        assert ei.value.kind == "timeout" and w.proc.poll() is not None


def test_worker_env_and_same_code():
    with Worker(sys.executable, 3, extra_env={**FAULTS, "OMP_WAIT_POLICY": "PASSIVE"}) as w:
        ans = w.request({"op": "_pid", "env": ["OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LSTMBENCH_PROTO_FD"]}, 60)
    import harness
    assert ans["env"] == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE", "LSTMBENCH_PROTO_FD": None}
    assert Path(ans["harness"]).resolve() == Path(harness.__file__).resolve()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie is dead, waiting for a reaper


PARENT = """
import os, sys, time
sys.path.insert(0, {root!r})
from harness.engine.workers import Worker
w = Worker(sys.executable, 1, extra_env={{"LSTMBENCH_TEST_FAULTS": "1"}})
print(w.request({{"op": "_pid"}}, 60)["pid"], flush=True)
{then}
"""


def _parent(then: str) -> tuple[subprocess.Popen, int]:
    code = PARENT.format(root=str(ROOT), then=textwrap.dedent(then))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_env())
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip().isdigit(), line + p.stderr.read()
    return p, int(line)


def _gone(pid: int, limit: float = 20) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_no_orphan_when_the_parent_is_killed():
    before = _logs()
    p, child = _parent("time.sleep(600)")
    assert _alive(child)
    p.send_signal(signal.SIGKILL)  # no atexit, no finally: only PR_SET_PDEATHSIG can help
    p.wait(30)
    assert _gone(child), f"worker {child} outlived its SIGKILLed parent"
    assert _logs() <= before


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_request_leaves_no_worker_and_no_log(sig, status):
    before = _logs()
    p, child = _parent("""
    from harness.engine.signals import interruptible
    from harness.cli import main
    import harness.cli as cli
    def fn(a):
        with interruptible():
            print("busy", flush=True)
            w.request({"op": "_sleep", "s": 600}, 900)
    cli.build_parser = lambda: type("P", (), {"parse_args": lambda self, argv: type("A", (), {"fn": staticmethod(fn)})()})()
    sys.exit(main())
    """)
    assert p.stdout is not None and p.stdout.readline().strip() == "busy"
    time.sleep(0.3)
    p.send_signal(sig)
    time.sleep(0.3)
    if p.poll() is None:
        p.send_signal(signal.SIGINT)  # a second Ctrl-C 0.3 s later must not break the clean-up
    out, err = p.communicate(timeout=60)
    assert p.returncode == status, err
    assert "Traceback" not in err and "interrupted" in err
    assert _gone(child), "the worker outlived the interrupted request"
    assert _logs() <= before


# ---- results files --------------------------------------------------------------------------

def _v1_doc() -> dict:
    cell = {"backend": "numpy-f32", "mode": "train", "preset": "p", "batch": 4, "seq_len": 10,
            "device": "cpu", "precision": "float32",
            "model": {"vocab_size": 5, "hidden_size": 4, "num_layers": 1, "input": "onehot"}}
    return {"schema": "lstmbench.results", "schema_version": 1, "created": "2026-11-22T10:00:00+00:00",
            "machine": {"slug": "m-2c"}, "device": "cpu", "matrix": {"name": "x"},
            "cells": [{"cell": cell, "result": {"status": "ok", "samples_s": [0.002, 0.001, 0.003],
                                                 "stats": {"median": 0.002, "rounds": 3},
                                                 "chars_per_s": 20000.0}}]}


def test_v1_is_migrated_on_read(tmp_path):
    p = tmp_path / "v1.json"
    p.write_text(json.dumps(_v1_doc()))
    doc = load_results(p)
    res = doc["cells"][0]["result"]
    assert res["samples"] == [{"s": 0.002, "process": 0, "round": 0, "probe_s": None, "clean": True},
                              {"s": 0.001, "process": 0, "round": 1, "probe_s": None, "clean": True},
                              {"s": 0.003, "process": 0, "round": 2, "probe_s": None, "clean": True}]
    assert res["estimate_s"] == 0.002 and doc["workloads"] == [] and doc["probe"] is None
    assert doc["noise"] is None and doc["migrated"] is True and doc["schema_version"] == 1
    pd = pytest.importorskip("pandas")
    from harness.results import load_dataframe
    df = load_dataframe([p])
    assert isinstance(df, pd.DataFrame) and len(df) == 1
    assert df.loc[0, "estimate_s"] == 0.002 and df.loc[0, "chars_per_s"] == pytest.approx(4 * 10 / 0.002)


@pytest.mark.parametrize("edit,text", [
    (lambda d: d.update(schema_version=7), "results schema version 7"),
    (lambda d: d.update(machine=None), "'machine' is None"),
    (lambda d: d["cells"][0]["result"].update(samples_s=["fast", 1.0]), "cell 0 (numpy-f32 train): sample 0 is 'fast'"),
    (lambda d: d["cells"][0]["result"].update(samples_s=[0.0]), "sample 0 is 0.0; times must be finite and above zero"),
    (lambda d: d["cells"][0]["result"].update(samples_s=[-1.0]), "sample 0 is -1.0"),
    (lambda d: d["cells"][0]["result"].update(samples_s=[math.inf]), "sample 0 is inf"),
    (lambda d: d["cells"][0].update(cell=None), "cell 0 is malformed"),
])
def test_bad_results_are_one_line_errors(tmp_path, edit, text):
    d = _v1_doc()
    edit(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ResultsError) as ei:
        load_results(p)
    assert text in str(ei.value) and str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_nan_sample_is_kept_for_the_reader_to_mark():
    d = _v1_doc()
    d["cells"][0]["result"]["samples_s"] = [0.001, math.nan]
    from harness.results.schema import validate_samples
    out = validate_samples(d["cells"][0]["result"], "f: cell 0")
    assert math.isnan(out[1]["s"])


def test_default_path_cannot_escape_the_out_dir(tmp_path):
    doc = {"created": "2026-11-23T20:00:00+00:00", "matrix": {"name": "../../../../tmp/x/pwn"},
           "device": "../cpu", "machine": {"slug": "../../etc"}}
    p = default_path(tmp_path / "res", doc)
    assert p.parent.parent == tmp_path / "res" and ".." not in p.parts and "/" not in p.name


# ---- the run, interrupted and resumed (needs harness.session.benchmark's --resume) ---------------------------

TINY = """
rounds = 15
threads = 1
min_clean = 2
extra_rounds = 2
extra_time = 1
timeout = 120
processes = 1
[[group]]
name = "t"
vocab_size = 20
hidden_size = 16
seq_len = 10
gen_len = 10
batch = [2]
modes = ["train", "eval", "generate"]
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint", "double-sigint", "sigterm"])
def test_interrupted_run_keeps_cells_and_resume_completes(tmp_path, how):
    (tmp_path / "tiny.toml").write_text(TINY)
    before = _logs()
    p = subprocess.Popen([sys.executable, "-m", "harness", "run", "--matrix", "tiny.toml", "--backends",
                          "numpy-f32", "--out", "res", "--processes", "1", "--seed", "1"],
                         cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    seen = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240:  # wait until the second workload has begun
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.lstrip().startswith("[2/"):
            break
    assert any(s.lstrip().startswith("[2/") for s in seen), "".join(seen)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    if how == "double-sigint":
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == (143 if how == "sigterm" else 130), out
    assert "Traceback" not in out
    journals = list((tmp_path / "res").rglob("*.journal.jsonl"))
    assert len(journals) == 1 and str(journals[0].name) in out, out
    header, records = Journal.read(journals[0])
    assert len(records) >= 1  # the first workload was kept
    assert _logs() <= before
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--resume", str(journals[0]), "--out", "res"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = [f for f in (tmp_path / "res").rglob("*.json")]
    assert len(files) == 1 and not list((tmp_path / "res").rglob("*.journal.jsonl"))
    doc = load_results(files[0])
    keys = [(c["cell"]["mode"], c["cell"]["backend"]) for c in doc["cells"]]
    assert sorted(keys) == sorted({("train", "numpy-f32"), ("eval", "numpy-f32"), ("generate", "numpy-f32")})
    assert all(c["result"]["status"] == "ok" for c in doc["cells"]), doc["cells"]


# ---- permissions ----------------------------------------------------------------------------

@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_users_share_honour_the_umask(tmp_path, umask):
    """Every atomic write (a temporary file from tempfile.mkstemp, 0600 whatever the umask,
    then linked or renamed into place) gives the file the mode open() would: 0644 under
    umask 022, 0600 under 077, 0664 under 002; a report's folder 0755, 0700, 0775."""
    import numpy as np

    from harness.commands.options import write_json
    from harness.results.store import write_results
    from impls.case import write_file
    from impls.checkpoint import Checkpoint, save_checkpoint
    from impls.config import ModelConfig, TrainConfig
    from impls.files import current_umask, write_atomic
    from impls.params import init_params
    from tests.test_compare import synth_v2

    assert current_umask() == umask
    m = ModelConfig(vocab_size=3, hidden_size=2)
    written = [
        write_atomic(tmp_path / "a.bin", b"x"),
        write_atomic(tmp_path / "a.bin", lambda f: f.write(b"y"), replace=True),
        write_file(tmp_path / "check.json", lambda f: f.write(b"{}"), "--json"),
        write_results(synth_v2(["numpy-f32"]), tmp_path / "results.json"),
        jmod.write_unique(tmp_path / "final.json", b"{}"),
        write_json(tmp_path / "compare.json", {"cells": []}, log=lambda s: None),
        save_checkpoint(Checkpoint(m, TrainConfig(), 4, 2, "abc", init_params(m, 0), {}),
                        tmp_path / "checkpoint.npz"),
    ]
    assert (tmp_path / "a.bin").read_bytes() == b"y"
    for p in written:
        assert (p.stat().st_mode & 0o777) == 0o666 & ~umask, (p.name, oct(p.stat().st_mode))
    assert not list(tmp_path.glob(".*.tmp"))
    pytest.importorskip("matplotlib")
    from harness.report.page import write_report
    write_report([str(tmp_path / "results.json")], tmp_path / "rep", log=lambda s: None)
    assert ((tmp_path / "rep").stat().st_mode & 0o777) == 0o777 & ~umask
    for p in (tmp_path / "rep").iterdir():
        assert (p.stat().st_mode & 0o777) == 0o666 & ~umask, p.name
    assert np.load(tmp_path / "checkpoint.npz")["vocab"].size == 1


# ---- faults in a run: only the faulted cell fails, the run goes on ----------------------------

FIVE = """
rounds = 4
workload_time = 2.0
threads = 1
min_clean = 2
extra_rounds = 0
extra_time = 0
timeout = {timeout}
processes = 1
[[group]]
name = "f"
vocab_size = 20
hidden_size = 16
seq_len = 10
batch = {batch}
modes = ["eval"]
"""


def _faulty_run(tmp_path: Path, fault: str, *, batch: str = "[1, 2, 3, 4, 5]", timeout: float = 5,
                once: bool = False, limit: float = 240) -> tuple[str, dict]:
    """`run` of a tiny eval matrix (one workload per batch) on numpy-f32 with a fault in its
    workers (harness.engine.worker._fault_plan); the output and the results document. The run must
    end (within `limit` seconds), exit 0 and leave one results file and no journal."""
    (tmp_path / "f.toml").write_text(FIVE.format(timeout=timeout, batch=batch))
    env = {**_env(), **FAULTS, "LSTMBENCH_TEST_FAULT": fault}
    if once:
        env["LSTMBENCH_TEST_FAULT_ONCE"] = str(tmp_path / "fired")
    r = subprocess.run([sys.executable, "-m", "harness", "run", "--matrix", "f.toml", "--backends", "numpy-f32",
                        "--out", "res", "--seed", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=limit)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out[-4000:]
    files = [f for f in (tmp_path / "res").rglob("*.json")]
    assert len(files) == 1 and not list((tmp_path / "res").rglob("*.journal.jsonl")), files
    return out, load_results(files[0])


def _statuses(doc: dict) -> list[str]:
    return [c["result"]["status"] for c in sorted(doc["cells"], key=lambda c: c["cell"]["batch"])]


def test_a_run_whose_only_workload_runs_out_of_memory_finishes(tmp_path):
    """Every cell out of memory, so no workload times a probe round: the cell is recorded as
    `oom`, the noise report says no round ran, and the results file is written."""
    out, doc = _faulty_run(tmp_path, "prepare:oom", batch="[10000]")
    assert _statuses(doc) == ["oom"] and "DefaultCPUAllocator" in doc["cells"][0]["result"]["error"]
    assert "no probe round ran during the workloads" in out and "machine noise:" in out
    assert doc["probe"]["rounds_s"] == [] and doc["probe"]["median_gflops"] is None


@pytest.mark.parametrize("fault,statuses", [
    ("round:kill@B3", ["ok", "ok", "killed", "ok", "ok"]),  # killed while timing cell 3
    ("prepare:kill@B3", ["ok", "ok", "killed", "ok", "ok"]),  # ... while preparing it
    ("release:kill-after@B3", ["ok"] * 5),  # died idle after cell 3: cell 4 gets a fresh worker
    ("round:stop@B3", ["ok", "ok", "timeout", "ok", "ok"]),  # hung while timing cell 3
    ("release:stop-after@B3", ["ok"] * 5),  # hung idle after cell 3: not cell 4's fault
])
def test_a_faulted_worker_costs_only_its_own_cell(tmp_path, fault, statuses):
    out, doc = _faulty_run(tmp_path, fault)
    assert _statuses(doc) == statuses, out[-4000:]
    if "timeout" in statuses:  # killed at the matrix's timeout, and said so
        err = next(c["result"]["error"] for c in doc["cells"] if c["result"]["status"] == "timeout")
        assert "no answer within 5 s" in err, err


def test_a_hung_noise_probe_is_killed_at_the_timeout_and_comes_back(tmp_path):
    """The probe's worker stops (SIGSTOP) in its first round: it is killed at the matrix's
    timeout, not the harness's 300 s, and the next workload has a probe again."""
    out, doc = _faulty_run(tmp_path, "round:stop@probe", batch="[1, 2]", timeout=3, once=True, limit=150)
    assert "noise probe failed (no answer within 3 s" in out, out[-4000:]
    assert _statuses(doc) == ["ok", "ok"]
    assert all(any(s for s in w["probe_s"]) for w in doc["workloads"]), [w["probe_s"] for w in doc["workloads"]]


PIN_CLOCK = '''
import datetime, os
_now = os.environ.get("LSTMBENCH_TEST_NOW")
if _now:  # every run of the test starts "in the same second"
    class _Pinned(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            t = datetime.datetime.fromisoformat(_now)
            return t.astimezone(tz) if tz else t.replace(tzinfo=None)
    datetime.datetime = _Pinned
'''


def test_runs_started_in_the_same_second_each_get_their_own_file(tmp_path):
    """Three `run`s into one --out at the same second: each claims a name of its own (the
    numbered siblings x.json, x.1.json, x.2.json) before measuring, and all three finish."""
    (tmp_path / "pin").mkdir()
    (tmp_path / "pin" / "sitecustomize.py").write_text(PIN_CLOCK)
    (tmp_path / "f.toml").write_text(FIVE.format(timeout=60, batch="[1]"))
    env = {**_env(), "LSTMBENCH_TEST_NOW": "2026-12-05T10:00:00+00:00"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "pin"), env["PYTHONPATH"]])
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "run", "--matrix", "f.toml", "--backends",
                               "numpy-f32", "--out", "res", "--seed", str(i)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outs)
    files = sorted(f.name for f in (tmp_path / "res").rglob("*.json"))
    assert files == ["20261205T100000Z-f-cpu.1.json", "20261205T100000Z-f-cpu.2.json",
                     "20261205T100000Z-f-cpu.json"], files
    assert not list((tmp_path / "res").rglob("*.journal.jsonl"))
    seeds = sorted(load_results(f)["seed"] for f in (tmp_path / "res").rglob("*.json"))
    assert seeds == [0, 1, 2]  # three runs, three files: none lost to another


def test_claim_takes_a_free_name_and_unclaim_gives_it_back(tmp_path):
    target = tmp_path / "m" / "run.json"
    assert jmod.claim(target) == (target, journal_path(target))  # the folder made, the journal claimed
    t1, j1 = jmod.claim(target)  # the first run's journal is there: the next name
    assert t1 == target.with_name("run.1.json") and j1.exists() and j1.stat().st_size == 0
    (target.parent / "run.2.json").write_text("{}")  # a finished run's file: passed over too
    assert jmod.claim(target)[0] == target.with_name("run.3.json")
    jmod.unclaim(j1)
    assert not j1.exists()
    Journal(journal_path(target)).write_header({"schema": "x"})
    jmod.unclaim(journal_path(target))  # a journal with a header is a run's: left alone
    assert journal_path(target).exists()


# ---- results files: every field a reader uses, by type; folders; an empty run -----------------

def _good_v2() -> dict:
    from tests.test_compare import synth_v2
    return synth_v2(["numpy-f32", "torch"], workload_probes=True, foreign=0.01)


def _set(path: str, value: object):
    """An edit: the field at `path` ("a.b[0].c"; "+" creates a missing last key) set to `value`."""
    import re

    def edit(doc: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
        obj = doc
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


# (the edit, the field the one-line error must name): each once crashed a reader (compare,
# report or load_dataframe) with a TypeError, AttributeError or ValueError, or was misread
ILL_TYPED = [
    (_set("threads", [1]), "threads is [1], not an integer"),
    (_set("machine.gpu", "yes"), "machine.gpu is 'yes', not an object"),
    (_set("machine.memory_bytes", "lots"), "machine.memory_bytes is 'lots', not an integer"),
    (_set("matrix", ["smoke"]), "matrix is ['smoke'], not an object"),
    (_set("peak", "fast"), "peak is 'fast', not an object"),
    (_set("peak.gflops", "fast"), "peak.gflops is 'fast', not a number"),
    (_set("wall_s", "long"), "wall_s is 'long', not a number"),
    (_set("command", ["lstmbench", 3]), "command[1] is 3, not a string"),
    (_set("git", "abc"), "git is 'abc', not an object"),
    (_set("backends.torch", "2.13"), "backends.torch is '2.13', not an object"),
    (_set("backends.torch", None), "backends.torch is null, not an object"),
    (_set("probe.rounds_s", "fast"), "probe.rounds_s is 'fast', not a list"),
    (_set("probe.best_gflops", [1]), "probe.best_gflops is [1], not a number"),
    (_set("noise", []), "noise is [], not an object"),
    (_set("noise.verdict", 3), "noise.verdict is 3, not a string"),
    (_set("estimator", "min"), "estimator is 'min', not an object"),
    (_set("workloads", {"a": 1}), "workloads is {'a': 1}, not a list"),
    (_set("workloads[0].probe_s[1]", "x"), "workloads[0].probe_s[1] is 'x', not a number"),
    (_set("workloads[0].foreign_cores", "busy"), "workloads[0].foreign_cores is 'busy', not a number"),
    (_set("workloads[0].ratios.torch.lo", "x"), "workloads[0].ratios.torch.lo is 'x', not a number"),
    (_set("cells[0].workload", 5), "cells[0].workload is 5, not a string"),
    (_set("cells[1].cell.batch", "8"), "cells[1].cell.batch is '8', not an integer"),
    (_set("cells[1].cell.model.hidden_size", 8.5), "cells[1].cell.model.hidden_size is 8.5, not an integer"),
    (_set("cells[1].result.status", ["ok"]), "cells[1].result.status is ['ok'], not a string"),
    (_set("cells[1].result.estimate_s", "x"), "cells[1].result.estimate_s is 'x', not a number"),
    (_set("cells[1].result.ci_s", "x"), "cells[1].result.ci_s is 'x', not a list"),
    (_set("cells[1].result.stats", {"median": "x"}), "cells[1].result.stats.median is 'x', not a number"),
    (_set("cells[1].result.first_step_s", "x"), "cells[1].result.first_step_s is 'x', not a number"),
    (_set("cells[1].result.peak_rss_bytes", 1.5), "cells[1].result.peak_rss_bytes is 1.5, not an integer"),
]


@pytest.mark.parametrize("edit,text", ILL_TYPED, ids=[t.split(" is ")[0] for _, t in ILL_TYPED])
def test_ill_typed_fields_are_one_line_errors_in_every_reader(tmp_path, capsys, edit, text):
    """compare (either side), report and load_dataframe read a results file through one check
    (results.RESULTS_FIELDS): a field of the wrong type is one line naming the file and the
    field, exit 2; nothing is written."""
    from harness.cli import main
    from harness.results import load_dataframe
    from harness.results.store import write_results
    good = write_results(_good_v2(), tmp_path / "good.json")
    doc = _good_v2()
    edit(doc)
    bad = write_results(doc, tmp_path / "bad.json")
    for args in (["compare", str(good), str(bad)], ["compare", str(bad), str(good), "--fail-on-regression"],
                 ["report", str(bad), "--out", str(tmp_path / "rep")]):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"lstmbench: error: {bad}: {text}"), (args, err)
    assert not (tmp_path / "rep").exists()
    with pytest.raises(ResultsError, match=re.escape(f"{bad}: {text}")):
        load_dataframe([bad])


def test_threads_as_a_list_is_one_line_as_a_user_sees_it(tmp_path):
    """The reported case, end to end: `compare` with `threads: [1]` died of an unhashable list."""
    from harness.results.store import write_results
    good = write_results(_good_v2(), tmp_path / "good.json")
    doc = _good_v2()
    doc["threads"] = [1]
    bad = write_results(doc, tmp_path / "bad.json")
    r = subprocess.run([sys.executable, "-m", "harness", "compare", str(good), str(bad)], cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"lstmbench: error: {bad}: threads is [1], not an integer; the file is " \
                               "corrupt or was edited (re-run to get a valid one)"


def _check_report(tmp_path: Path, edit) -> Path:
    from tests.test_report import check_json
    p = check_json(tmp_path / "check.json")
    rep = json.loads(p.read_text())
    edit(rep)
    p.write_text(json.dumps(rep))
    return p


@pytest.mark.parametrize("edit,text", [
    (_set("backends.torch.cases.c1[0].rel", "abc"), "backends.torch.cases.c1[0].rel is 'abc', not a number"),
    (_set("backends.torch.cases.c1[1].tol", [1]), "backends.torch.cases.c1[1].tol is [1], not a number"),
    (_set("backends.torch.cases.c1[1]", None), "backends.torch.cases.c1[1] is null, not an object"),
    (_set("backends.torch.cases.c1", 5), "backends.torch.cases.c1 is 5, not a list or an object"),
    (_set("backends.torch.cases.c2.error", 5), "backends.torch.cases.c2.error is 5, not a string"),
    (_set("backends.torch.status", ["ok"]), "backends.torch.status is ['ok'], not a string"),
    (_set("backends.torch", "ok"), "backends.torch is 'ok', not an object"),
    (_set("precision", 32), "precision is 32, not a string"),
])
def test_ill_typed_check_reports_are_one_line_errors(tmp_path, capsys, edit, text):
    """`report --check`: the check report's fields are checked by type the same way."""
    from harness.cli import main
    from harness.results.store import write_results
    run = write_results(_good_v2(), tmp_path / "run.json")
    check = _check_report(tmp_path, edit)
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--check", str(check)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lstmbench: error: {check}: {text}"), err
    assert not (tmp_path / "rep").exists()


def test_folders_pass_over_what_is_not_a_regular_file(tmp_path):
    """A FIFO (which would block the read forever), a socket and a broken link named *.json in
    a results folder are passed over with a note; the results beside them are read."""
    import socket
    from harness.results import load_dataframe
    from harness.results.store import write_results
    d = tmp_path / "runs"
    good = write_results(_good_v2(), d / "m" / "good.json")
    os.mkfifo(d / "m" / "fifo.json")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.json"))
    (d / "gone.json").symlink_to(tmp_path / "nowhere.json")
    try:
        for args in (["compare", str(d), str(good)], ["report", str(d), "--out", "rep"]):
            r = subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path, env=_env(),
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
            for name in ("fifo.json", "sock.json", "gone.json"):
                assert f"{name}: not a regular file" in r.stderr, r.stderr
        assert len(load_dataframe([d])) == len(_good_v2()["cells"])
        r = subprocess.run([sys.executable, "-m", "harness", "compare", str(d / "m" / "fifo.json"), str(good)],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "fifo.json: not a regular file" in r.stderr  # named: never opened
    finally:
        sock.close()


def test_a_new_run_without_cells_fails_on_regression(tmp_path, capsys):
    """No new cell measured (a run with no cells at all) is a regression under
    --fail-on-regression, as the README says; without the flag it is reported and exit 0."""
    from harness.cli import main
    from harness.results.store import write_results
    old = write_results(_good_v2(), tmp_path / "old.json")
    doc = _good_v2()
    doc["cells"], doc["workloads"] = [], []
    new = write_results(doc, tmp_path / "new.json")
    assert main(["compare", str(old), str(new), "--fail-on-regression"]) == 1
    assert "regression: no new cell was measured" in capsys.readouterr().out
    assert main(["compare", str(old), str(new)]) == 0
