"""`--cluster`: the matrix, the checks and a quality run on a Ray cluster, against Ray's
multi-node test cluster (ray.cluster_utils.Cluster: several raylets on this one machine).

One cluster for the module: a head that takes no work and three one-CPU nodes with
`lstmbench_node: 1`, two of kind "a" (a0, a1) and one of kind "b" (b0). Every command runs as
a user runs it: `python -m harness ...` in a subprocess, joining the cluster by its address.
The Ray environment below is what this VM needs (node IP 127.0.0.1, token auth; README,
"Running on a Ray cluster") and is set before Ray is imported anywhere in this process, because
Ray reads it at import. The first test needs no Ray at all: `--cluster` without it installed."""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                   "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
                   "RAY_USAGE_STATS_ENABLED": "0"})

import harness  # noqa: E402

SOURCE = Path(harness.__file__).resolve().parent.parent  # the harness/ and impls/ the nodes run

# numpy-f32 only (it needs no framework): 2 modes x 2 batches = 4 workloads, each a few seconds
MATRIX = """
rounds = 4
workload_time = 60
threads = 1
min_clean = 2
extra_rounds = 2
extra_time = 1
timeout = 120
[[group]]
name = "m"
vocab_size = 20
hidden_size = 32
seq_len = 20
gen_len = 20
batch = {batch}
modes = ["train", "eval"]
"""
NO_RAY = "import runpy, sys; sys.modules['ray'] = None; sys.argv[0] = 'lstmbench'; runpy.run_module('harness', run_name='__main__')"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def lstmbench(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True,
                          text=True, env=_env(), timeout=timeout)


def _matrix(tmp: Path, batch: str = "[4, 8]") -> str:
    (tmp / "m.toml").write_text(MATRIX.format(batch=batch))
    return "m.toml"


def _one_line_error(r: subprocess.CompletedProcess, text: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("lstmbench")]
    assert len(lines) == 1 and text in lines[0], r.stderr


@pytest.mark.parametrize("args", [
    ["run", "--matrix", "smoke", "--backends", "numpy-f32", "--cluster", "127.0.0.1:1"],
    ["check", "--backends", "numpy-f32", "--cluster", "auto"],
    ["run", "--matrix", "quality-tiny", "--backends", "numpy-f32", "--cluster", "auto"],
])
def test_cluster_without_ray_names_the_extra(tmp_path: Path, args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-c", NO_RAY, *args], cwd=tmp_path, capture_output=True,
                       text=True, env=_env(), timeout=120)
    _one_line_error(r, "--cluster needs Ray, which is not installed: pip install 'lstmbench[cluster]'")
    assert not (tmp_path / "results").exists()


# ---- the multi-node cluster ----------------------------------------------------------------------

def _add(c, kind: str, name: str, **kw):
    return c.add_node(num_cpus=1, resources={"lstmbench_node": 1},
                      labels={"lstmbench/kind": kind, "lstmbench/name": name}, **kw)


@pytest.fixture(scope="module")
def cluster():
    why = "the multi-node tests need Ray: pip install 'lstmbench[cluster]'"
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("LSTMBENCH_REQUIRE_ALL"):  # tox's cluster environment has it, or fails
            pytest.fail(f"LSTMBENCH_REQUIRE_ALL is set but {why}")
        pytest.skip(why)
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {}
    try:
        for kind, name in (("a", "a0"), ("a", "a1"), ("b", "b0")):
            nodes[name] = _add(c, kind, name)
        c.wait_for_nodes()
        yield c, nodes
    finally:
        c.shutdown()


def _ours(session: str) -> list[str]:
    """Our worker processes (harness.engine.worker) still alive under this test cluster's
    raylets: their ancestors' command lines name its session."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if b"harness.engine.worker" not in (d / "cmdline").read_bytes():
                continue
            pid = d.name
            for _ in range(20):
                stat = Path(f"/proc/{pid}/stat").read_text()
                pid = stat.rsplit(")", 1)[1].split()[1]
                if pid in ("0", "1"):
                    break
                if session.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(d.name)
                    break
        except OSError:
            continue
    return out


def _no_workers_left(c) -> None:
    session = Path(c.head_node.get_session_dir_path()).name
    deadline = time.monotonic() + 60
    while _ours(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ours(session), "worker processes left on the cluster's nodes"


def _driver(tmp: Path, address: str, kind: str) -> subprocess.Popen:
    """`run` on one kind's nodes, its output read line by line as it comes."""
    return subprocess.Popen([sys.executable, "-m", "harness", "run", "--matrix", _matrix(tmp),
                             "--backends", "numpy-f32", "--out", "res", "--processes", "1",
                             "--cluster", address, "--on", kind],
                            cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _results(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.json") if not p.name.startswith("."))


def _doc(p: Path) -> dict:
    return json.loads(p.read_text())


def _once_each(doc: dict) -> None:
    """Every cell of the matrix exactly once, and measured."""
    seen = Counter((c["cell"]["backend"], c["workload"]) for c in doc["cells"])
    assert len(seen) == 4 and set(seen.values()) == {1}, seen
    assert {c["result"]["status"] for c in doc["cells"]} <= {"ok", "noisy"}


def test_workloads_spread_over_nodes_one_at_a_time_one_file_per_kind(cluster, tmp_path: Path) -> None:
    c, _ = cluster
    r = lstmbench("run", "--matrix", _matrix(tmp_path), "--backends", "numpy-f32", "--out", "res",
                  "--processes", "1", "--cluster", c.address, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = _results(tmp_path / "res")
    assert [p.stem.rsplit("-", 1)[1] for p in files] == ["a", "b"]  # one results file per kind
    spans: dict[str, list[tuple[float, float]]] = {}
    for p in files:
        doc = _doc(p)
        kind = doc["machine"]["kind"]
        assert doc["cluster"]["kind"] == kind and doc["cluster"]["address"] == c.address
        _once_each(doc)
        for w in doc["workloads"]:
            assert w["node"]["kind"] == kind and [t["outcome"] for t in w["tries"]] == ["ok"]
            assert w["machine"]["cores"] == os.cpu_count() and w["machine"]["cpu"] == doc["machine"]["cpu"]
            spans.setdefault(w["node"]["node"], []).append(tuple(w["ran"]))
        assert f"done on node {doc['workloads'][0]['node']['node']}" in r.stdout
    assert set(spans) == {"a0", "a1", "b0"}  # kind a's four workloads went to both of its nodes
    for node, ss in spans.items():  # never two workloads on one node at once
        ss.sort()
        assert all(a[1] <= b[0] for a, b in zip(ss, ss[1:])), (node, ss)
    assert "cluster run: 8 workloads" in r.stdout

    # the files are normal results files: the dataframe, compare and report read them
    from harness.results import load_dataframe
    df = load_dataframe(tmp_path / "res")
    assert sorted(set(df["machine"])) == ["a", "b"] and set(df["node"]) == {"a0", "a1", "b0"}
    assert len(df) == 8 and df["chars_per_s"].notna().all()
    cmp = lstmbench("compare", str(files[0]), str(files[1]), cwd=tmp_path)
    assert cmp.returncode == 0, cmp.stderr
    assert "old: 1 file(s), machine a" in cmp.stdout and "new: 1 file(s), machine b" in cmp.stdout
    counts = cmp.stdout.split("\n\n")[-1].splitlines()[0]  # "0 slower, 0 faster, ..., 0 incomparable"
    assert sum(int(x.split()[0]) for x in counts.split(", ")[:4]) == 4, cmp.stdout  # every cell paired
    rep = lstmbench("report", "res", "--out", "rep", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    side = text.split("## Machine kinds side by side", 1)[1].split("\n## ", 1)[0]
    assert side.count("| backend | a: ratio [95% CI] | a: chars/s | b: ratio [95% CI] | b: chars/s |") == 4
    assert side.count("| numpy-f32 | 1 (fastest)") == 4


def test_a_node_lost_mid_workload_runs_it_again_on_its_kind(cluster, tmp_path: Path) -> None:
    c, nodes = cluster
    proc = _driver(tmp_path, c.address, "a")
    removed = None
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if removed is None and ": started on node a" in line:
                removed = line.rsplit(" ", 1)[1].strip()
                c.remove_node(nodes.pop(removed))
        assert proc.wait(timeout=300) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        if removed is not None:  # the fixture's nodes as they were, for the tests after this one
            nodes[removed] = _add(c, "a", removed)
            c.wait_for_nodes()
    assert removed is not None
    [p] = _results(tmp_path / "res")
    doc = _doc(p)
    _once_each(doc)
    retried = [w for w in doc["workloads"] if len(w["tries"]) > 1]
    assert len(retried) == 1, doc["workloads"]
    w = retried[0]
    assert w["tries"][0]["node"] == removed and w["tries"][0]["outcome"].startswith("lost: ")
    assert w["tries"][-1]["outcome"] == "ok" and w["node"]["node"] != removed
    assert "workloads that lost a node on the way" in "".join(lines)


def test_driver_stopped_then_resumed_measures_every_cell_once(cluster, tmp_path: Path) -> None:
    c, _ = cluster
    proc = _driver(tmp_path, c.address, "b")
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if ": done on node b0" in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert "continue with: lstmbench run --resume" in out, out[-3000:]
    _no_workers_left(c)  # the cancelled workload's workers are gone with it
    journal = out.rsplit("--resume ", 1)[1].split()[0]
    assert _results(tmp_path / "res") == []
    r = lstmbench("run", "--resume", journal, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [p] = _results(tmp_path / "res")
    doc = _doc(p)
    _once_each(doc)
    assert doc["resumed"] is True and {w["node"]["node"] for w in doc["workloads"]} == {"b0"}


def test_a_node_with_other_code_is_refused(cluster, tmp_path: Path) -> None:
    c, _ = cluster
    stale = tmp_path / "stale"
    for pkg in ("harness", "impls"):
        shutil.copytree(SOURCE / pkg, stale / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    init = stale / "harness" / "__init__.py"
    init.write_text(init.read_text() + "\n# edited\n")
    node = _add(c, "a", "stale", env_vars={"PYTHONPATH": str(stale)})
    c.wait_for_nodes()
    try:
        r = lstmbench("run", "--matrix", _matrix(tmp_path), "--backends", "numpy-f32", "--out", "res",
                      "--cluster", c.address, cwd=tmp_path)
    finally:
        c.remove_node(node)
    _one_line_error(r, "node stale (")
    assert "runs other lstmbench code" in r.stderr and "install the same commit there" in r.stderr
    assert not (tmp_path / "res").exists() or _results(tmp_path / "res") == []


@pytest.mark.parametrize("args, text", [
    (["--backends", "numpy-f32", "--on", "c"], "--on c: the cluster has no node of kind 'c'; its kinds are a, b"),
    # torch runs on a GPU (numpy-f32 does not); it need not be installed where the driver runs
    (["--backends", "torch", "--device", "gpu"], "--device gpu: no kind of node in the cluster has a GPU"),
])
def test_kinds_the_cluster_lacks_are_refused(cluster, tmp_path: Path, args: list[str], text: str) -> None:
    c, _ = cluster
    r = lstmbench("run", "--matrix", _matrix(tmp_path), "--out", "res", "--cluster", c.address, *args,
                  cwd=tmp_path)
    _one_line_error(r, text)


def test_check_and_a_quality_run_go_through_the_cluster(cluster, tmp_path: Path) -> None:
    c, _ = cluster
    r = lstmbench("check", "--backends", "numpy-f32", "--threads", "1", "--cluster", c.address,
                  "--on", "a", "--json", "check.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "numpy-f32: ok (" in r.stdout and " on node a" in r.stdout
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["backends"]["numpy-f32"]["node"] in ("a0", "a1")

    r = lstmbench("run", "--matrix", "quality-tiny", "--backends", "numpy-f32,numpy", "--threads", "1",
                  "--out", "q", "--cluster", c.address, "--on", "b", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [p] = _results(tmp_path / "q")
    doc = _doc(p)
    assert doc["cluster"]["kinds"] == ["b"] and doc["machine"]["kind"] == "b"
    for b in ("numpy-f32", "numpy"):
        res = doc["backends"][b]
        assert res["status"] == "ok" and res["node"] == "b0", res
        assert res["final_val_loss"] < 4.3  # it trained: from ln(97) = 4.57 at the start
