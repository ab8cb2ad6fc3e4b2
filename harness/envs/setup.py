"""`lstmbench setup`: the environments the harness builds itself (chainer needs NumPy < 2, so it
cannot share the main environment; `--name NAME PACKAGE...` one with other releases for a
variant), in the checkout when run inside one, else in the user data folder."""
from __future__ import annotations

import os
import re
import subprocess
import venv
from pathlib import Path

from impls.files import write_atomic
from impls.registry import BACKENDS

from ..errors import UsageError
from .interpreters import RECIPES, data_dir, project_root

def setup_dir(env_name: str) -> Path:
    """Where `lstmbench setup ENV` builds: the checkout's .venv-ENV when the working directory
    is in a checkout, else the user data folder; never beside the installed package."""
    root = project_root()
    return root / f".venv-{env_name}" if root is not None else data_dir() / f"venv-{env_name}"


def pip_command(python: str | os.PathLike[str], *args: str) -> list[str]:
    """pip of the environment `python` belongs to, seeing that environment alone: -I keeps the
    working directory, PYTHONPATH and the user's site off its sys.path. Otherwise, run from a
    checkout or under tox (PYTHONPATH = the checkout), pip found lstmbench's own metadata there
    (lstmbench.egg-info), took it for installed, and after installing NumPy < 2 printed
    "ERROR: pip's dependency resolver ... lstmbench 0.1.0 requires tqdm" although the
    install had worked; a PYTHONPATH holding NumPy 2 would even pass for NumPy installed."""
    return [str(python), "-I", "-m", "pip", *args]


def pip_env() -> dict[str, str]:
    """This process's environment less what points Python at other packages (PYTHONPATH,
    PYTHONHOME), for pip and the builds it starts (a --no-build-isolation setup.py runs in a
    child that -I does not reach)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


_ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def setup_named(name: str, packages: list[str], *, log=print) -> Path:
    """`lstmbench setup --name NAME PACKAGE...`: an environment at setup_dir(NAME) holding NumPy
    and the packages given (e.g. jax==0.9.2 jaxlib==0.9.2), for a variant that runs another
    release of a framework (`--variant old:python.jax=PATH`). The workers need nothing else: the
    harness's code reaches them by location (bootstrap_code). Idempotent; the packages asked
    for are recorded beside the interpreter (lstmbench-env.json)."""
    if not _ENV_NAME.match(name) or ".." in name:
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '-', '+' and '.' (it names "
                         "the folder .venv-NAME)")
    if name in RECIPES:
        raise UsageError(f"--name {name}: that is the recipe `lstmbench setup {name}` builds; choose "
                         "another name")
    if not packages:
        raise UsageError(f"--name {name}: give the packages to install, e.g. `lstmbench setup --name "
                         f"{name} jax==0.9.2`")
    bad = [p for p in packages if p.startswith("-")]
    if bad:
        raise UsageError(f"--name {name}: {bad[0]!r} is not a package; give requirement specifiers only")
    return _build(name, [["numpy", *packages]], log=log,
                  record={"name": name, "packages": packages})


def setup(env_name: str, *, log=print) -> Path:
    """Create (or update) the environment at setup_dir(env_name) with its recipe; idempotent."""
    if env_name not in RECIPES:
        raise UsageError(f"no environment named {env_name!r} to set up; choose from {', '.join(RECIPES)} "
                         "(the main environment is this one: pip install -e '.[torch,tensorflow,jax]')")
    py = _build(env_name, RECIPES[env_name], log=log)
    users = [b.name for b in BACKENDS.values() if b.env == env_name]
    log(f"ready: {py} (backends: {', '.join(users)})")
    return py


def _build(env_name: str, steps: list[list[str]], *, log=print, record: dict | None = None) -> Path:
    """Create (or update) the venv at setup_dir(env_name) and pip install each step into it."""
    where = setup_dir(env_name)
    py = where / "bin" / "python"
    if not py.exists():
        log(f"creating {where}")
        venv.EnvBuilder(with_pip=True, clear=False).create(where)
    for i, args in enumerate(steps, 1):
        log(f"[{i}/{len(steps)}] pip install {' '.join(args)}")
        r = subprocess.run(pip_command(py, "install", "-q", "--disable-pip-version-check", *args),
                           env=pip_env())
        if r.returncode:
            raise UsageError(f"installing {' '.join(args)} into {where} failed (pip exit {r.returncode}); "
                             "see pip's output above")
    if record is not None:
        import json
        write_atomic(where / "lstmbench-env.json", (json.dumps(record, indent=1) + "\n").encode(), replace=True)
        log(f"ready: {py}\n  use it as a variant's interpreter, e.g. "
            f"--variant {env_name}:python={py} (or python.BACKEND={py} for one backend)")
    return py
