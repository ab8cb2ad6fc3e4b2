"""Environments as users have them: backends' environments are found from the working
directory (or the user data folder), never from where the package is installed; the installed
(non-editable) package runs its workers on its own code; a backend whose framework this
interpreter has runs here; `setup` never builds inside site-packages.

In tox's `harness` environment lstmbench is installed non-editable and PYTHONPATH is unset,
so the first tests run the installed package as a user would."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.envs import interpreters as envs
from harness.envs import setup as envsetup

ROOT = Path(__file__).resolve().parent.parent
CHAINER_ENVS = [ROOT / ".venv-chainer" / "bin" / "python", ROOT / ".tox" / "chainer" / "bin" / "python"]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would point lstmbench at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LSTMBENCH_PYTHON_CHAINER", "LSTMBENCH_CODE_ROOT")}
    env.update(extra)
    return env


def _chainer_python() -> Path:
    found = [p for p in CHAINER_ENVS if p.is_file()]
    if not found:
        pytest.skip("no chainer environment in the checkout (.venv-chainer or .tox/chainer)")
    return found[0]


def test_installed_package_is_not_the_checkout(tmp_path):
    """In tox's harness env the package comes from site-packages (nothing hides a path bug)."""
    r = subprocess.run([sys.executable, "-c", "import harness; print(harness.__file__)"], cwd=tmp_path,
                       env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip()).resolve()
    if os.environ.get("TOX_ENV_NAME") != "harness":
        pytest.skip(f"not in tox's harness env (harness imported from {where})")
    assert not where.is_relative_to(ROOT) or ".tox" in where.parts, where


def test_backends_from_the_checkout_finds_chainer(tmp_path):
    """`lstmbench backends --json` run in the checkout, with no variable naming the interpreter,
    finds chainer's environment there."""
    py = _chainer_python()
    exe = Path(sys.executable).parent / "lstmbench"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "harness"]
    r = subprocess.run([*cmd, "backends", "--json"], cwd=ROOT, env=_clean_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["chainer"]["available"], info["chainer"]
    assert Path(info["chainer"]["python"]).parent.parent.resolve() in {p.parent.parent.resolve() for p in CHAINER_ENVS}
    assert Path(info["chainer"]["python"]) == py or py.parent.parent.name != ".venv-chainer"


def _fake_install(tmp_path: Path) -> Path:
    """harness and impls copied into a folder named site-packages: a non-editable install."""
    site = tmp_path / "lib" / "site-packages"
    site.mkdir(parents=True)
    for pkg in ("harness", "impls"):
        shutil.copytree(ROOT / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_non_editable_install_runs_workers_on_its_own_code(tmp_path):
    """A copy in site-packages, run from the checkout: chainer is found from the working
    directory, and its worker (another environment, NumPy < 2) runs the installed copy
    without that site-packages on its path."""
    py = _chainer_python()
    site = _fake_install(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv[1:] = ['backends', '--json'];"
            "from harness.cli import main; sys.exit(main())")
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=ROOT, env=_clean_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["chainer"]["available"], info["chainer"]
    assert Path(info["chainer"]["python"]) == py
    assert info["chainer"]["numpy"].startswith("1.") if "numpy" in info["chainer"] else True
    # the worker ran the installed copy's code
    from harness.engine.workers import Worker
    probe = ("import sys, json; sys.path.insert(0, sys.argv[1]);"
             "from harness.engine.workers import Worker;"
             "w = Worker(sys.argv[2], 1, extra_env={'LSTMBENCH_TEST_FAULTS': '1'});"
             "a = w.request({'op': '_pid', 'env': ['PYTHONPATH']}, 120); w.close();"
             "import numpy; print(json.dumps(a))")
    r = subprocess.run([sys.executable, "-c", probe, str(site), str(py)], cwd=tmp_path,
                       env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ans = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(ans["harness"]).resolve() == (site / "harness" / "__init__.py").resolve()
    assert str(site) not in (ans["env"]["PYTHONPATH"] or "")  # NumPy 2 must not reach chainer's env
    assert Worker  # imported above: the module loads in this process too


def test_outside_a_checkout_nothing_is_found_and_setup_goes_to_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("LSTMBENCH_PYTHON_CHAINER", raising=False)
    monkeypatch.setattr(envs, "ROOT", tmp_path / "lib" / "site-packages")  # as installed
    monkeypatch.setattr(envs, "_can_import_here", lambda spec: False)
    assert envs.project_root() is None
    assert envsetup.setup_dir("chainer") == tmp_path / "data" / "lstmbench" / "venv-chainer"
    cands = envs.env_candidates("chainer")
    assert all("site-packages" not in str(c) for c in cands)
    assert cands[-1] == tmp_path / "data" / "lstmbench" / "venv-chainer" / "bin" / "python"
    with pytest.raises(envs.BackendError, match="lstmbench setup chainer"):
        envs.interpreter_for("chainer")
    # a user-data environment is found from anywhere
    fake = tmp_path / "data" / "lstmbench" / "venv-chainer" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    assert envs.interpreter_for("chainer") == str(fake)


def test_in_a_checkout_setup_builds_there(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "lstmbench"\n')
    sub = tmp_path / "results" / "x"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert envs.project_root() == tmp_path
    assert envsetup.setup_dir("chainer") == tmp_path / ".venv-chainer"
    assert envs.env_candidates("chainer")[0] == sub / ".venv-chainer" / "bin" / "python"
    assert tmp_path / ".tox" / "chainer" / "bin" / "python" in envs.env_candidates("chainer")


def test_inside_chainers_own_interpreter_chainer_runs_here(tmp_path):
    py = _chainer_python()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from harness.envs.interpreters import interpreter_for;"
            "print(interpreter_for('chainer'))")
    r = subprocess.run([str(py), "-c", code, str(ROOT)], cwd=tmp_path,
                       env=_clean_env(XDG_DATA_HOME=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == py


def test_worker_env_applies_spec_vars_extra_and_keeps_site_packages_out(monkeypatch, tmp_path):
    keras = [n for n, s in envs.BACKENDS.items() if getattr(s, "env_vars", None)]
    site = tmp_path / "site-packages"
    monkeypatch.setattr(envs, "code_root", lambda: site)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}/elsewhere")
    env = envs.worker_env(2, backend=keras[0] if keras else None, extra={"OMP_WAIT_POLICY": "PASSIVE"})
    assert env["OMP_NUM_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["LSTMBENCH_CODE_ROOT"] == str(site) and env["PYTHONPATH"] == "/elsewhere"
    if keras:
        assert all(env[k] == v for k, v in envs.BACKENDS[keras[0]].env_vars.items())
    monkeypatch.setattr(envs, "code_root", lambda: ROOT)
    assert envs.worker_env(None)["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_harness_command_runs_this_code_in_chainers_interpreter(tmp_path):
    """train/quality re-run `lstmbench ...` in a backend's interpreter: chainer's env has no
    lstmbench installed, yet the command runs (on this process's code)."""
    py = _chainer_python()
    r = subprocess.run(envs.harness_command(str(py), "presets"), cwd=tmp_path,
                       env=envs.worker_env(1), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "char-rnn" in r.stdout, r.stderr[-2000:]


def _wheel(folder: Path, name: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel (PEP 427) of `name` 1.0 holding `files`."""
    import base64
    import hashlib
    import zipfile
    dist = f"{name.replace('-', '_')}-1.0"
    files = {**files, f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record = "".join(f"{k},sha256={digest(v)},{len(v.encode())}\n" for k, v in files.items())
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{dist}.dist-info/RECORD", record + f"{dist}.dist-info/RECORD,,\n")
    return path


def test_setup_pip_sees_only_its_environment(tmp_path, monkeypatch, capfd):
    """`lstmbench setup` run from a checkout or under tox (PYTHONPATH = the checkout, which
    holds lstmbench.egg-info) made pip take lstmbench for installed in the new environment and
    print "ERROR: pip's dependency resolver ... requires tqdm" after an install that worked.
    Here a distribution on PYTHONPATH and in the working directory requires the package being
    installed and one that is missing: the same pip command without isolation prints that
    ERROR, setup's prints nothing of the kind and succeeds."""
    site = tmp_path / "checkout"
    info = site / "fake_project-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-project\nVersion: 1.0\n"
                                   "Requires-Dist: dep-a\nRequires-Dist: missing-b\n")
    wheel = _wheel(tmp_path, "dep-a", {"dep_a/__init__.py": "X = 1\n"})
    monkeypatch.setitem(envs.RECIPES, "scratch", [["--no-index", str(wheel)]])
    monkeypatch.setattr(envsetup, "setup_dir", lambda name: tmp_path / f"venv-{name}")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.chdir(site)
    py = envsetup.setup("scratch", log=lambda s: None)
    out = capfd.readouterr()
    assert "ERROR" not in out.out + out.err, out.err
    r = subprocess.run([str(py), "-c", "import dep_a; print(dep_a.X)"], env=_clean_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "1", r.stderr
    # the fixture does provoke pip's complaint when pip looks beyond its environment
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "dep-a"], capture_output=True, timeout=120)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-index", str(wheel)], capture_output=True, text=True,
                       timeout=120)
    assert "fake-project 1.0 requires missing-b" in r.stderr, r.stderr
