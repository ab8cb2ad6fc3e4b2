"""Which Python interpreter runs each backend and the environment its worker gets (the
environments the harness builds itself, `lstmbench setup`, are harness.envs.setup's).

Resolution order for a backend whose environment is E:
  1. --python BACKEND=INTERPRETER on the command line
  2. the variable LSTMBENCH_PYTHON_<E> (e.g. LSTMBENCH_PYTHON_CHAINER)
  3. E == "main", or this interpreter can import the backend's framework: this interpreter
  4. .venv-<E> (lstmbench setup) or .tox/<E> (tox) in the working directory or a parent of it,
     up to the checkout's root (a pyproject.toml naming lstmbench, or a git root); the checkout
     the code runs from when it is one (an editable install)
  5. the user data folder: $XDG_DATA_HOME/lstmbench/venv-<E> (~/.local/share/lstmbench/...)
Never the installed package's folder: in a non-editable install that is site-packages.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from impls.registry import BACKENDS, ENVIRONMENTS, BackendError, BackendSpec, get_spec

from ..errors import UsageError

# The folder holding the imported `harness` and `impls` packages: the checkout in an editable
# install or a source tree, site-packages in a non-editable one (never look for environments here).
ROOT = Path(__file__).resolve().parents[2]  # harness/envs/interpreters.py -> the folder holding harness/

# environment name -> (pip arguments in order, each list one `pip install` call): the registry's
RECIPES: dict[str, list[list[str]]] = ENVIRONMENTS


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


def _is_lstmbench_checkout(d: Path) -> bool:
    """A source tree of this project: its pyproject.toml names the project lstmbench."""
    try:
        text = (d / "pyproject.toml").read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"""^\s*name\s*=\s*["']lstmbench["']""", text, re.M) is not None


def project_root(start: Path | None = None) -> Path | None:
    """The lstmbench checkout holding `start` (default: the working directory), or None."""
    here = (start or Path.cwd()).resolve()
    for d in [here, *here.parents]:
        if _is_lstmbench_checkout(d):
            return d
        if (d / ".git").exists():
            return None  # another project's root: not ours
    return None


def _search_dirs() -> list[Path]:
    """The working directory and its parents up to a checkout's or a git root."""
    out: list[Path] = []
    try:
        here = Path.cwd().resolve()
    except OSError:  # the working directory was removed
        return out
    home = Path.home().resolve()
    for d in [here, *here.parents]:
        out.append(d)
        if _is_lstmbench_checkout(d) or (d / ".git").exists() or d == home:
            break
    return out


def data_dir() -> Path:
    """The user data folder for environments lstmbench builds outside a checkout."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lstmbench"


def env_candidates(env: str) -> list[Path]:
    """Interpreters that may hold environment `env`, in order of preference."""
    dirs = _search_dirs()
    if _is_lstmbench_checkout(ROOT) and ROOT not in dirs:  # an editable install used from elsewhere
        dirs.append(ROOT)
    out = [c for d in dirs for c in (d / f".venv-{env}" / "bin" / "python", d / ".tox" / env / "bin" / "python")]
    out.append(data_dir() / f"venv-{env}" / "bin" / "python")
    return out


def _can_import_here(spec: BackendSpec) -> bool:
    """This interpreter has every module the backend requires (e.g. run inside chainer's own
    env), and the NumPy its environment's recipe pins ("numpy<2"): a chainer installed beside
    NumPy 2 cannot load, and a proper environment elsewhere is then the better choice."""
    if not spec.requires:
        return False
    try:
        if any(importlib.util.find_spec(name) is None for name in spec.requires):
            return False
    except (ImportError, ValueError):
        return False
    from importlib import metadata
    for req in (r for step in RECIPES.get(spec.env, []) for r in step):
        m = re.fullmatch(r"numpy<(\d+)", req)
        if m:
            try:
                major = int(metadata.version("numpy").split(".")[0])
            except (metadata.PackageNotFoundError, ValueError):
                return False
            if major >= int(m.group(1)):
                return False
    return True


def interpreter_for(backend: str, overrides: dict[str, str] | None = None) -> str:
    """The interpreter that runs `backend`; BackendError with the fix if there is none."""
    spec = get_spec(backend)
    if overrides and backend in overrides:
        return overrides[backend]
    var = f"LSTMBENCH_PYTHON_{spec.env.upper()}"
    if os.environ.get(var):
        return os.environ[var]
    if spec.env == "main" or _can_import_here(spec):
        return sys.executable
    for cand in env_candidates(spec.env):
        if cand.is_file():
            return str(cand)
    raise BackendError(f"backend {backend} needs its own environment ({spec.env}, NumPy < 2) and "
                       f"none was found (looked for .venv-{spec.env} and .tox/{spec.env} from the "
                       f"working directory up, and {data_dir() / f'venv-{spec.env}'}); run "
                       f"`lstmbench setup {spec.env}` or pass --python {backend}=/path/to/python")


def code_root() -> Path:
    """The folder holding the `harness` package this process imported."""
    import harness
    return Path(harness.__file__).resolve().parent.parent


def _is_site_dir(d: Path) -> bool:
    return d.name in ("site-packages", "dist-packages")


def worker_env(threads: int | None, backend: str | None = None,
               extra: dict[str, str] | None = None, root: str | os.PathLike[str] | None = None
               ) -> dict[str, str]:
    """Environment for a worker: the same `harness`/`impls` code as this process importable,
    thread pools pinned alike everywhere, the backend spec's env_vars (KERAS_BACKEND=jax, set
    before any import), then `extra` (OMP_WAIT_POLICY). In a non-editable install the code's
    folder is site-packages, which must not reach another environment's path (it would bring
    NumPy 2 into chainer's): the worker then loads the two packages by location instead
    (pool.Worker's bootstrap), and LSTMBENCH_CODE_ROOT names that folder. `root` gives another
    source tree's folder instead (a variant's src=, harness.envs.variants)."""
    env = dict(os.environ)
    here = code_root()
    root = Path(root).resolve() if root is not None else here
    env["LSTMBENCH_CODE_ROOT"] = str(root)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) not in (root, here)]
    env["PYTHONPATH"] = os.pathsep.join(rest if _is_site_dir(root) else [str(root), *rest])
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    if backend:
        try:
            env.update(get_spec(backend).env_vars)
        except BackendError:
            pass  # "probe" and other non-backend participants
    env.update(extra or {})
    return env


# A child of the harness sets itself up first, before any framework starts a thread (set-up
# between fork and exec, subprocess's preexec_fn, is not safe in a parent with threads: `check
# --jobs` and the quality lanes start children from several threads). LSTMBENCH_CPUS pins it
# (every thread it starts inherits the mask); LSTMBENCH_PARENT asks the kernel to SIGKILL it
# when that parent dies (PR_SET_PDEATHSIG = 1, even after the parent's SIGKILL), and it exits
# if the parent is already gone (it died before the request took effect). Both are taken out
# of the environment its own children see.
_BOOT = """\
import importlib.util, os, sys
_cpus = os.environ.pop("LSTMBENCH_CPUS", "")
if _cpus and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(c) for c in _cpus.split(",")})
_parent = os.environ.pop("LSTMBENCH_PARENT", "")
if _parent and sys.platform.startswith("linux"):
    try:
        import ctypes, signal
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        os.kill(int(_parent), 0)
    except ProcessLookupError:
        os._exit(1)
    except OSError:
        pass
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
root = os.environ.get("LSTMBENCH_CODE_ROOT")
for name in ("impls", "harness"):
    d = os.path.join(root or "", name)
    if root and os.path.isfile(os.path.join(d, "__init__.py")) and name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(d, "__init__.py"),
                                                      submodule_search_locations=[d])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
"""


def child_vars(parent: int, cpus: "list[int] | None" = None) -> dict[str, str]:
    """The environment variables a child started with bootstrap_code needs to pin itself to
    `cpus` and to die with `parent` (see _BOOT)."""
    out = {"LSTMBENCH_PARENT": str(parent)}
    if cpus:
        out["LSTMBENCH_CPUS"] = ",".join(map(str, cpus))
    return out


def bootstrap_code(entry: str) -> str:
    """Python source for `python -c` in another interpreter: load `harness` and `impls` from
    LSTMBENCH_CODE_ROOT (set by worker_env) by location, so that interpreter runs this
    process's code without that folder (site-packages in a non-editable install, with NumPy 2
    in it) joining its sys.path; then run `entry`."""
    return _BOOT + entry + "\n"


def harness_command(python: str, *args: str) -> list[str]:
    """`lstmbench ARGS` in interpreter `python`, on this process's code; run it with
    env=worker_env(...). (`python -m harness` would import whatever `harness` that
    interpreter's path or working directory holds, or none: chainer's env has no lstmbench.)"""
    return [python, "-c", bootstrap_code("from harness.cli import main\nsys.exit(main())"), *args]
