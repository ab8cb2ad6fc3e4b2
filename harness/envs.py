"""Which Python interpreter runs each backend, and `lstmbench setup` for the environments the
harness builds itself (chainer needs NumPy < 2, so it cannot share the main environment).

Resolution order for a backend whose environment is E:
  1. --python BACKEND=INTERPRETER on the command line
  2. the variable LSTMBENCH_PYTHON_<E> (e.g. LSTMBENCH_PYTHON_CHAINER)
  3. E == "main": this interpreter
  4. the environments the README's set-up creates: .venv-<E> (lstmbench setup), .tox/<E> (tox)
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from impls.registry import BACKENDS, BackendError, get_spec

ROOT = Path(__file__).resolve().parent.parent  # the repository root

# environment name -> (pip arguments in order, each list one `pip install` call)
RECIPES: dict[str, list[list[str]]] = {
    "chainer": [
        # setuptools < 81 keeps pkg_resources (chainer's setup.py); < 70 keeps
        # distutils.msvccompiler, which numpy.distutils imports when chainer loads
        ["numpy<2", "setuptools<70", "wheel"],
        # Chainer 7.8.1's sdist imports pkg_resources in setup.py: build without isolation
        ["--no-build-isolation", "chainer==7.8.1"],
    ],
}


class UsageError(Exception):
    """Bad command-line input; the message says what and how to fix it."""


def parse_python_overrides(items: list[str] | None) -> dict[str, str]:
    """--python BACKEND=INTERPRETER (repeatable) -> {backend: interpreter path}."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--python takes BACKEND=INTERPRETER, got {item!r}")
        get_spec(name)  # unknown backend -> BackendError
        p = Path(path).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise UsageError(f"--python {name}={path}: no executable interpreter there; "
                             "give the path of a python inside that environment")
        out[name] = str(p)
    return out


def env_candidates(env: str) -> list[Path]:
    return [ROOT / f".venv-{env}" / "bin" / "python", ROOT / ".tox" / env / "bin" / "python"]


def interpreter_for(backend: str, overrides: dict[str, str] | None = None) -> str:
    """The interpreter that runs `backend`; BackendError with the fix if there is none."""
    spec = get_spec(backend)
    if overrides and backend in overrides:
        return overrides[backend]
    var = f"LSTMBENCH_PYTHON_{spec.env.upper()}"
    if os.environ.get(var):
        return os.environ[var]
    if spec.env == "main":
        return sys.executable
    for cand in env_candidates(spec.env):
        if cand.is_file():
            return str(cand)
    raise BackendError(f"backend {backend} needs its own environment ({spec.env}, NumPy < 2) and "
                       f"none was found; run `lstmbench setup {spec.env}` or pass "
                       f"--python {backend}=/path/to/python")


def worker_env(threads: int | None) -> dict[str, str]:
    """Environment for a worker: the repo importable, thread pools pinned alike everywhere."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def setup(env_name: str, *, log=print) -> Path:
    """Create (or update) .venv-<env_name> with its recipe; idempotent."""
    if env_name not in RECIPES:
        raise UsageError(f"no environment named {env_name!r} to set up; choose from {', '.join(RECIPES)} "
                         "(the main environment is this one: pip install -e '.[torch,tensorflow,jax]')")
    where = ROOT / f".venv-{env_name}"
    py = where / "bin" / "python"
    if not py.exists():
        log(f"creating {where}")
        venv.EnvBuilder(with_pip=True, clear=False).create(where)
    for i, args in enumerate(RECIPES[env_name], 1):
        log(f"[{i}/{len(RECIPES[env_name])}] pip install {' '.join(args)}")
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args])
        if r.returncode:
            raise UsageError(f"installing {' '.join(args)} into {where} failed (pip exit {r.returncode}); "
                             "see pip's output above")
    users = [b.name for b in BACKENDS.values() if b.env == env_name]
    log(f"ready: {py} (backends: {', '.join(users)})")
    return py
