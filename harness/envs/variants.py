"""Variants: versions of the code or of its environment measured side by side, as participants
of one run (`run --variant`, `lstmbench ab`; docs/measurement.md, "Duet measurement").

    --variant NAME[:KEY=VALUE[,KEY=VALUE...]]      (repeatable; two or more, or none)

    python=PATH           the interpreter for every backend of this variant
    python.BACKEND=PATH   the interpreter for one backend (wins over python=)
    src=DIR|REV           another lstmbench source tree, or a git revision of the checkout in
                          the working directory, checked out into a worktree the run owns
    env.VAR=VALUE         a variable in the environment of the variant's workers
    threads=N             threads of the variant's workers (default: the run's)

A value may hold commas when the piece after the comma has no "=" (env.XLA_FLAGS=--a,--b).
Every (backend, variant) is one participant of each workload, named `BACKEND@VARIANT`: the
same randomized rotation, the same probe, rounds paired by (process, round), so that the
host's phases, which move every participant alike, cancel in the variants' ratio.

The worker protocol is what an older source tree must still speak: a revision whose worker
lacks an op the engine sends fails that cell with the worker's own message."""
from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from impls.registry import get_spec

from .interpreters import ROOT, _is_lstmbench_checkout, code_root, interpreter_for, project_root
from ..errors import UsageError
from .host import git_info

SEP = "@"  # participant names: BACKEND@VARIANT
KEYS = ("python", "python.BACKEND", "src", "env.VAR", "threads")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Variant:
    """One variant as the user defined it (`text`), validated."""
    name: str
    text: str  # the --variant argument, as given (recorded, and re-parsed on --resume)
    python: str | None = None
    pythons: tuple[tuple[str, str], ...] = ()  # (backend, interpreter)
    src: str | None = None  # a folder or a git revision, as given
    env: tuple[tuple[str, str], ...] = ()
    threads: int | None = None

    def interpreter(self, backend: str, overrides: dict[str, str] | None = None) -> str:
        """The interpreter that runs `backend` in this variant: python.BACKEND, python, or the
        run's own resolution (harness.envs.interpreters.interpreter_for, --python overrides included)."""
        own = dict(self.pythons)
        if backend in own:
            return own[backend]
        return self.python or interpreter_for(backend, overrides)

    def definition(self) -> dict[str, Any]:
        """What the results file records of the definition (resolution is added by the run)."""
        return {"text": self.text, "python": self.python, "pythons": dict(self.pythons),
                "src": self.src, "env": dict(self.env), "threads": self.threads}


def participant(backend: str, variant: str | None) -> str:
    """The participant name of `backend` in `variant` (the backend's own name without one)."""
    return f"{backend}{SEP}{variant}" if variant else backend


def split(name: str) -> tuple[str, str | None]:
    """(backend, variant) of a participant name."""
    b, sep, v = name.rpartition(SEP)
    return (b, v) if sep and b else (name, None)


def _pairs(body: str, text: str) -> list[tuple[str, str]]:
    """KEY=VALUE pieces, a piece without "=" continuing the previous value (commas in values)."""
    out: list[list[str]] = []
    for piece in body.split(","):
        if "=" in piece.split(",")[0] and piece.partition("=")[0].strip():
            k, _, v = piece.partition("=")
            out.append([k.strip(), v])
        elif out:
            out[-1][1] += "," + piece
        else:
            raise UsageError(f"--variant {text!r}: {piece!r} is not KEY=VALUE; keys are "
                             f"{', '.join(KEYS)}")
    return [(k, v) for k, v in out]


def _interpreter(path: str, where: str) -> str:
    p = Path(path).expanduser()
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise UsageError(f"{where}: no executable interpreter at {path}; give the path of a python "
                         "inside that environment (lstmbench setup --name NAME PACKAGES builds one)")
    return str(p.absolute())


def parse_variant(text: str) -> Variant:
    """One --variant argument; UsageError (one line) for anything malformed."""
    name, _, body = text.partition(":")
    if not _NAME_RE.match(name):
        raise UsageError(f"--variant {text!r}: the name {name!r} must be 1-32 letters, digits, "
                         "'_', '-' or '.' (it names the participants, e.g. torch@NAME)")
    kw: dict[str, Any] = {}
    pythons: dict[str, str] = {}
    env: dict[str, str] = {}
    seen: set[str] = set()
    for key, value in (_pairs(body, text) if body.strip() else []):
        where = f"--variant {name}: {key}"
        if key in seen:
            raise UsageError(f"{where} is given twice")
        seen.add(key)
        if not value:
            raise UsageError(f"{where} has no value")
        if key == "python":
            kw["python"] = _interpreter(value, where)
        elif key.startswith("python."):
            backend = key.partition(".")[2]
            get_spec(backend)  # unknown backend: BackendError naming the known ones
            pythons[backend] = _interpreter(value, where)
        elif key == "src":
            kw["src"] = value
        elif key.startswith("env."):
            var = key.partition(".")[2]
            if not _VAR_RE.match(var):
                raise UsageError(f"{where}: {var!r} is not an environment variable name")
            env[var] = value
        elif key == "threads":
            try:
                n = int(value)
            except ValueError:
                n = 0
            if not 1 <= n <= 1024:
                raise UsageError(f"{where}={value!r}: give an integer from 1 to 1024")
            kw["threads"] = n
        else:
            raise UsageError(f"--variant {name}: unknown key {key!r}; keys are {', '.join(KEYS)}")
    return Variant(name, text, pythons=tuple(sorted(pythons.items())),
                   env=tuple(sorted(env.items())), **kw)


def parse_variants(items: list[str] | None) -> list[Variant]:
    """Every --variant, checked as a set: none, or at least two with distinct names."""
    vs = [parse_variant(t) for t in items or []]
    if len(vs) == 1:
        raise UsageError(f"--variant {vs[0].name}: one variant compares with nothing; give a "
                         f"second (e.g. --variant base --variant {vs[0].name}:...) or none")
    names = [v.name for v in vs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise UsageError(f"--variant {dup} is given twice; every variant needs its own name")
    return vs


# ---- source trees ------------------------------------------------------------------------

@dataclass
class Source:
    """Where a variant's code comes from: this process's code, a folder, or a worktree."""
    root: Path  # the folder holding harness/ and impls/ (the worker's LSTMBENCH_CODE_ROOT)
    kind: str  # "this" | "dir" | "rev"
    commit: str | None = None
    dirty: bool | None = None
    rev: str | None = None  # as given, for kind "rev"
    owned: bool = False  # a worktree this run made: removed when the run ends
    repo: Path | None = None  # the checkout the worktree belongs to

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "commit": self.commit,
                "dirty": self.dirty, "rev": self.rev}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


# A tree's worker: harness/engine/worker.py, or harness/worker.py in a tree from before
# harness/engine/ (its worker answers the same requests: harness.engine.workers starts either).
WORKER_FILES = ("harness/engine/worker.py", "harness/worker.py")


def _is_source_tree(d: Path) -> bool:
    return (all((d / p).is_file() for p in ("harness/__init__.py", "impls/__init__.py"))
            and any((d / w).is_file() for w in WORKER_FILES))


def _repo() -> Path | None:
    """The lstmbench checkout revisions are taken from: the working directory's, else the one
    this code runs from (an editable install)."""
    root = project_root()
    if root is None and _is_lstmbench_checkout(ROOT):
        root = ROOT
    if root is None or _git(root, "rev-parse", "--git-dir").returncode:
        return None
    return root


def _commit_of(d: Path) -> tuple[str | None, bool | None]:
    r = _git(d, "rev-parse", "HEAD")
    if r.returncode:
        return None, None
    dirty = bool(_git(d, "status", "--porcelain", "--untracked-files=no").stdout.strip())
    return r.stdout.strip(), dirty


def resolve_commit(rev: str, where: str = "src") -> tuple[Path, str]:
    """(checkout, full commit hash) of a revision of the working directory's checkout."""
    repo = _repo()
    if repo is None:
        raise UsageError(f"{where}={rev}: a revision needs an lstmbench git checkout in the working "
                         "directory (run from one, or give src=DIR with a source tree)")
    r = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if r.returncode or not r.stdout.strip():
        raise UsageError(f"{where}={rev}: no such revision in {repo} (git rev-parse found none); "
                         "give a commit, branch or tag of that checkout, or a folder")
    return repo, r.stdout.strip()


def check_src(src: str, where: str) -> None:
    """Refuse, before anything is measured, a src= that is neither a source tree nor a revision."""
    d = Path(src).expanduser()
    if d.is_dir():
        if not _is_source_tree(d):
            raise UsageError(f"{where}={src}: the folder holds no lstmbench source tree (harness/ "
                             "and impls/ packages); give a checkout's root folder")
        return
    resolve_commit(src, where)


_owned: list[Source] = []  # worktrees made and not yet removed (removed at exit at the latest)


def checkout(src: str, *, commit: str | None = None) -> Source:
    """The Source of src=DIR|REV: a folder as it is, or a revision checked out (detached) into a
    new worktree of its checkout, in a temporary folder this run owns. `commit` pins a revision
    already resolved (a resumed run checks out the commit its first part measured)."""
    d = Path(src).expanduser()
    if commit is None and d.is_dir():
        if not _is_source_tree(d):
            raise UsageError(f"src={src}: the folder holds no lstmbench source tree")
        c, dirty = _commit_of(d)
        return Source(d.resolve(), "dir", c, dirty)
    repo, full = resolve_commit(commit or src)
    where = Path(tempfile.mkdtemp(prefix="lstmbench-src-"))
    r = _git(repo, "worktree", "add", "--detach", "--force", str(where), full)
    if r.returncode:
        shutil.rmtree(where, ignore_errors=True)
        raise UsageError(f"src={src}: git could not check out {full[:12]} "
                         f"({(r.stderr.strip().splitlines() or ['no reason'])[-1]})")
    s = Source(where, "rev", full, False, rev=src, owned=True, repo=repo)
    _owned.append(s)
    return s


def remove(s: Source) -> None:
    """Remove a worktree this run made (its folder and git's record of it); idempotent."""
    if not s.owned:
        return
    if s.repo is not None:
        _git(s.repo, "worktree", "remove", "--force", str(s.root))
        _git(s.repo, "worktree", "prune")
    shutil.rmtree(s.root, ignore_errors=True)
    s.owned = False
    if s in _owned:
        _owned.remove(s)


@atexit.register
def _remove_all() -> None:  # an exit that bypassed the run's own clean-up
    for s in list(_owned):
        remove(s)


@contextmanager
def sources(variants: list[Variant], pinned: dict[str, str] | None = None) -> Iterator[dict[str, Source]]:
    """Each variant's Source for the run's duration; worktrees are removed on the way out,
    whether the run ended, failed or was interrupted. `pinned`: variant -> commit (resume)."""
    made: dict[str, Source] = {}
    try:
        for v in variants:
            if v.src is None:  # the run's own code: the commit its results file records
                g = git_info()
                made[v.name] = Source(code_root(), "this", g.get("commit"), g.get("dirty"))
            else:
                made[v.name] = checkout(v.src, commit=(pinned or {}).get(v.name))
        yield made
    finally:
        for s in made.values():
            remove(s)
