"""Variants (harness.envs.variants): parsing and its one-line errors, participant names, and the
worktree a src=REV variant is checked out into, removed on success, on error and on Ctrl-C."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.envs import variants as V
from harness.cli import main
from harness.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def test_parse_every_key(tmp_path):
    py = sys.executable
    v = V.parse_variant(f"new:python={py},python.torch={py},src={tmp_path},env.XLA_FLAGS=--a=1,--b,"
                        "env.OMP_WAIT_POLICY=passive,threads=2")
    assert v.name == "new" and v.python == os.path.abspath(py) and dict(v.pythons) == {"torch": os.path.abspath(py)}
    assert v.src == str(tmp_path) and v.threads == 2
    assert dict(v.env) == {"XLA_FLAGS": "--a=1,--b", "OMP_WAIT_POLICY": "passive"}  # a comma inside a value
    assert v.interpreter("torch") == os.path.abspath(py) and v.interpreter("jax") == os.path.abspath(py)
    assert V.parse_variant("plain") == V.Variant("plain", "plain")


def test_participant_names_round_trip():
    assert V.participant("torch", None) == "torch" and V.split("torch") == ("torch", None)
    assert V.participant("torch", "a") == "torch@a" and V.split("torch@a") == ("torch", "a")
    assert V.split("keras-jax@new-1.2") == ("keras-jax", "new-1.2")


@pytest.mark.parametrize("items, words", [
    (["a:colour=red", "b"], "unknown key 'colour'"),
    (["a:python=/no/such/python", "b"], "no executable interpreter at /no/such/python"),
    (["a:python.nope=/usr/bin/env", "b"], "unknown backend 'nope'"),
    (["a:threads=0", "b"], "threads='0': give an integer from 1 to 1024"),
    (["a:threads=two", "b"], "give an integer"),
    (["a:env.1X=y", "b"], "not an environment variable name"),
    (["a:src=", "b"], "has no value"),
    (["a:threads=1,threads=2", "b"], "given twice"),
    (["a b", "b"], "the name 'a b'"),
    (["a"], "one variant compares with nothing"),
    (["a", "a:threads=1"], "--variant a is given twice"),
    (["a:nonsense", "b"], "is not KEY=VALUE"),
])
def test_bad_variants_are_one_line(items, words):
    with pytest.raises((UsageError, Exception)) as e:
        V.parse_variants(items)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, words", [
    (["run", "--matrix", "smoke", "--variant", "a"], "one variant compares with nothing"),
    (["run", "--matrix", "smoke", "--variant", "a", "--variant", "a"], "given twice"),
    (["run", "--matrix", "smoke", "--variant", "a:src=no-such-rev-xyz", "--variant", "b"], "no-such-rev-xyz"),
    (["run", "--matrix", "smoke", "--variant", "a:python=/nope/python", "--variant", "b"], "/nope/python"),
    (["run", "--matrix", "smoke", "--variant", "a:flavour=x", "--variant", "b"], "unknown key"),
    (["run", "--matrix", "quality-tiny", "--variant", "a", "--variant", "b"], "--variant applies"),
    (["ab", "HEAD", "no-such-rev-xyz"], "no-such-rev-xyz"),
    (["ab", "python:/nope/python", "HEAD"], "/nope/python"),
    (["ab", "HEAD", "HEAD", "--threshold", "x"], "--threshold"),
])
def test_bad_variant_commands_exit_2_before_measuring(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(_repo(tmp_path))  # revisions are this checkout's
    rc = main([*argv, "--out", str(tmp_path / "res")] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], err
    assert not (tmp_path / "res").exists()  # nothing measured, nothing written


def _repo(tmp_path: Path) -> Path:
    """A git checkout of this source tree (harness, impls, pyproject.toml), one commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for d in ("harness", "impls"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env, capture_output=True)
    return repo


def _worktrees(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "worktree", "list", "--porcelain"],
                         capture_output=True, text=True, check=True).stdout
    return [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("worktree ")][1:]


def test_a_revision_is_checked_out_and_removed(tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    monkeypatch.chdir(repo)
    vs = V.parse_variants(["old:src=HEAD", "new"])
    with V.sources(vs) as src:
        root = src["old"].root
        assert src["old"].kind == "rev" and len(src["old"].commit) == 40
        assert (root / "harness" / "engine" / "worker.py").is_file() and str(root) in _worktrees(repo)
        assert src["new"].kind == "this"
    assert not root.exists() and _worktrees(repo) == []


def _flat_layout_commit() -> str | None:
    """The last commit of this checkout with the flat layout (harness/worker.py, before
    harness/engine/): the parent of the one that moved the file; None without that history."""
    r = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--no-renames",
                        "--diff-filter=D", "--", "harness/worker.py"], capture_output=True, text=True)
    return f"{r.stdout.strip()}^" if r.returncode == 0 and r.stdout.strip() else None


def test_a_revision_of_the_flat_layout_runs_its_own_worker(monkeypatch):
    """A variant's source tree from before harness/engine/ (a src=REV measured against today's
    code) is a source tree, and the bootstrap starts its worker (harness/worker.py): it answers
    the protocol from its own tree."""
    from harness.engine.workers import Worker
    rev = _flat_layout_commit()
    if rev is None:
        pytest.skip("no flat-layout commit in this checkout's history (a shallow clone)")
    monkeypatch.chdir(ROOT)
    with V.sources(V.parse_variants([f"old:src={rev}", "new"])) as src:
        root = src["old"].root
        assert (root / "harness" / "worker.py").is_file() and not (root / "harness" / "engine").exists()
        w = Worker(sys.executable, 1, backend="numpy-f32", extra_env={"LSTMBENCH_TEST_FAULTS": "1"},
                   code_root=str(root))
        try:
            where = w.request({"op": "_pid"}, 120)
            assert where["ok"] and where["harness"] == str(root / "harness" / "__init__.py")
            info = w.request({"op": "info", "backends": ["numpy-f32"], "threads": 1, "device": "cpu"}, 120)
            assert info["ok"] and info["backends"]["numpy-f32"]["available"], info
        finally:
            w.close()


def test_the_worktree_goes_on_error_too(tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    monkeypatch.chdir(repo)
    with pytest.raises(RuntimeError):
        with V.sources(V.parse_variants(["old:src=HEAD", "new"])) as src:
            root = src["old"].root
            raise RuntimeError("the run failed")
    assert not root.exists() and _worktrees(repo) == []


def test_a_folder_is_used_as_it_is(tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    with V.sources(V.parse_variants([f"old:src={repo}", "new"])) as src:
        assert src["old"].kind == "dir" and src["old"].root == repo.resolve()
    assert repo.is_dir()  # not ours to remove


@pytest.mark.slow
def test_the_worktree_goes_on_ctrl_c(tmp_path):
    """A run interrupted while its variants' workers start: exit 130, no worktree left."""
    repo = _repo(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                             "from harness.cli import main; sys.exit(main(sys.argv[2:]))", str(ROOT),
                             "run", "--matrix", "smoke", "--backends", "numpy-f32", "--variant", "old:src=HEAD",
                             "--variant", "new", "--out", str(tmp_path / "res")],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("variant old:"):
            assert _worktrees(repo), "the worktree should exist while the run goes"
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, "".join(seen) + rest
    assert _worktrees(repo) == []
    assert not [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("lstmbench-src-*")
                if any(str(p) in ln for ln in seen)]
