"""Where each format's part runs: one worker per environment for a whole convert or crosscheck
(and for a test module), started on first use. The main environment's worker runs torch,
Keras, ONNX Runtime and Flax (Keras on the torch engine where torch is installed, unless
KERAS_BACKEND says otherwise: the .keras files are engine-neutral; keras_engine says why); chainer's runs in its NumPy < 2 environment (envs.interpreter_for, as the chainer
backend's workers do); the NumPy-only canonical format runs here. Models, probes and outputs
travel as .npz files in a private folder removed on close (impls.porting.ops).

A format whose framework is missing is refused before any work, naming what brings it."""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from impls import registry
from impls.porting import FORMATS, PortError, get_format, ops
from impls.porting.model import Outputs, Ported, Probe, load_outputs, load_ported, save_ported

from ..envs.interpreters import interpreter_for
from .workers import Worker, WorkerFailed

TIMEOUT = 1800.0  # seconds for one read, write or run (a large model's first framework import included)


class RunFailed(Exception):
    """A framework failed on a file (its loader refused it, or it raised): one line."""


def keras_engine() -> str:
    """KERAS_BACKEND for the main worker: the user's, else the first engine installed of torch
    (imported for the torch format anyway; its eager RNN ran a tiny probe in 0.08 s where the
    JAX engine traced its scan anew on every call, 1.8 s), jax, tensorflow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    for name in ("torch", "jax", "tensorflow"):
        if not _missing(name):
            return name
    return "tensorflow"


class PortSession:
    """Workers by environment, and the private folder the requests' files live in."""

    def __init__(self, overrides: dict[str, str] | None = None, timeout: float = TIMEOUT) -> None:
        self.overrides = overrides or {}
        self.timeout = timeout
        self.dir: Path | None = None  # the private folder, made on first use
        self.workers: dict[str, Worker] = {}
        self._n = 0
        self._runs: dict[tuple, Outputs] = {}
        self._reads: dict[tuple, Ported] = {}

    def __enter__(self) -> "PortSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers and remove the private folder; idempotent (a later request starts
        what it needs again)."""
        for w in self.workers.values():
            w.kill()  # nothing to flush: every answer came after its file was complete; an
            w.close()  # interpreter holding torch, JAX and Orbax took 5 s to exit on its own
        self.workers.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _file(self, what: str) -> str:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="lstmbench-port-"))
        self._n += 1
        return str(self.dir / f"{self._n}-{what}.npz")

    # ---- availability -------------------------------------------------------------------

    def require(self, fmt: str) -> None:
        """Refuse now a format whose framework (or environment) is not here, naming the fix."""
        f = get_format(fmt)
        if f.env == "main":
            missing = [m for m in f.needs if _missing(m)]
            if fmt == "keras" and not missing and all(_missing(e) for e in ("jax", "torch", "tensorflow")):
                missing = ["a Keras engine (jax, torch or tensorflow)"]
            if missing:
                raise PortError(f"the {fmt} format needs {', '.join(missing)}, not installed here: {f.install}")
        elif f.env == "chainer":
            try:
                self._python("chainer")
            except registry.BackendError:
                raise PortError("the chainer format runs in Chainer's own environment (NumPy < 2), which "
                                "was not found: run `lstmbench setup chainer`, or set "
                                "LSTMBENCH_PYTHON_CHAINER=/path/to/its/python") from None

    def _python(self, env: str) -> str:
        if env == "main":
            return sys.executable
        backend = next(b.name for b in registry.BACKENDS.values() if b.env == env)
        return interpreter_for(backend, self.overrides)

    # ---- requests -------------------------------------------------------------------------

    def _call(self, fmt: str, req: dict[str, Any]) -> dict[str, Any]:
        env = FORMATS[fmt].env
        req = {"format": fmt, **req}
        if env == "any":
            ans = ops.handle(req)
        else:
            w = self.workers.get(env)
            if w is None or not w.usable():
                w = self.workers[env] = Worker(self._python(env), None, extra_env={"KERAS_BACKEND": keras_engine()})
            try:
                ans = w.request({"op": "port", **req}, self.timeout)
            except WorkerFailed as e:
                self.workers.pop(env, None)
                raise RunFailed(f"{fmt}'s worker {e.kind}: {str(e).splitlines()[0][:200]}") from None
            if not ans.get("ok"):
                raise RunFailed(f"{fmt}: {ans.get('error')}")
        if "refused" in ans:
            raise PortError(ans["refused"])
        return ans

    def read(self, path: str | Path, fmt: str, like: str | Path | None = None, lenient: bool = False) -> Ported:
        """The file as the canonical model (read once per version of the file)."""
        key = (*_stamp(path), fmt, str(like), lenient)
        if key not in self._reads:
            self._reads[key] = self._read(path, fmt, like, lenient)
        return copy.deepcopy(self._reads[key])

    def _read(self, path: str | Path, fmt: str, like: str | Path | None, lenient: bool) -> Ported:
        out = self._file("ported")
        try:
            self._call(fmt, {"action": "read", "path": str(Path(path).resolve()),
                             "like": str(Path(like).resolve()) if like else None, "lenient": lenient, "out": out})
        except RunFailed as e:
            raise PortError(f"{path}: {e}") from None
        p = load_ported(out)
        p.path = str(path)
        return p

    def write(self, p: Ported, fmt: str, path: str | Path, like: str | Path | None = None) -> str:
        src = self._file("model")
        save_ported(p, src)
        try:
            return self._call(fmt, {"action": "write", "ported": src, "path": str(Path(path).resolve()),
                                    "like": str(Path(like).resolve()) if like else None})["describe"]
        except RunFailed as e:
            raise PortError(f"writing {path}: {e}") from None

    def run(self, path: str | Path, fmt: str, probe: Probe, like: str | Path | None = None) -> Outputs:
        """The file run by its framework's own loader (RunFailed if it cannot); a file run
        once per probe (tests share files across pairs)."""
        path = Path(path).resolve()
        key = (*_stamp(path), fmt, str(like), probe.tokens.tobytes(), None if probe.h0 is None else probe.h0.tobytes())
        if key not in self._runs:
            pr, out = self._file("probe"), self._file("outputs")
            probe.save(pr)
            try:
                self._call(fmt, {"action": "run", "path": str(path), "like": str(Path(like).resolve()) if like else None,
                                 "probe": pr, "out": out})
            except PortError as e:
                raise RunFailed(str(e)) from None
            self._runs[key] = load_outputs(out)
        return self._runs[key]


def _stamp(path: str | Path) -> tuple:
    """A file's (or an Orbax folder's) identity and version, for the caches."""
    p = Path(path).resolve()
    st = p.stat()
    if p.is_dir():  # an Orbax checkpoint: its newest entry
        return (str(p), max([st.st_mtime_ns] + [q.stat().st_mtime_ns for q in p.rglob("*")]))
    return (str(p), st.st_mtime_ns, st.st_size, st.st_ino)


def _missing(module: str) -> bool:
    """Whether `module` cannot be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError, AttributeError):  # a parent missing; a module set to None
        return True
