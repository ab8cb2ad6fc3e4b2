"""The run journal: every finished workload of `lstmbench run`, kept on disk the moment it ends,
so that an interrupted or crashed run loses nothing it measured (and `run --resume` measures
only what is missing), and the final results file written atomically from it.

The journal is JSON lines beside the target, `<target>.journal.jsonl`:
    line 1    the header: the results document without cells/workloads (+ "target")
    line 2..  one record per finished workload: {"workload": {...}, "cells": [...]}
              (the quality matrix, harness.training.quality: one per finished backend,
              {"backend": name, "result": {...}})
Each line is flushed and fsynced before `append` returns. A line torn by a crash (the last
one) is ignored when reading, and cut off before the next append.

`finalize` writes the results document to its target atomically and never over an existing
file; when the target cannot be written (disk full, read-only, its folder replaced by a file,
a dangling symbolic link) it writes to a fallback path and raises ResultsError naming both
the fallback and the real cause. The journal is removed only once the target is written."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from impls.files import MAX_NUMBERED, fsync_dir, numbered, write_atomic

from ..errors import UsageError
from ..results.schema import ResultsError

SUFFIX = ".journal.jsonl"


def journal_path(target: str | os.PathLike[str]) -> Path:
    """The journal beside `target` (results/m/x.json -> results/m/x.json.journal.jsonl)."""
    t = Path(target)
    return t.with_name(t.name + SUFFIX)


def target_of(journal: str | os.PathLike[str]) -> Path:
    """The results file a journal is beside (x.json.journal.jsonl -> x.json)."""
    s = str(journal)
    return Path(s[: -len(SUFFIX)]) if s.endswith(SUFFIX) else Path(journal)


def locate(path: str | os.PathLike[str]) -> Path:
    """The journal PATH names: PATH itself (*.journal.jsonl), or the one beside the results
    file PATH."""
    p = Path(path)
    return p if str(p).endswith(SUFFIX) else journal_path(p)


def resume_journal(path: str | os.PathLike[str]) -> Path:
    """The journal `run --resume PATH` continues (locate); UsageError, one line, where there
    is none."""
    journal = locate(path)
    if not journal.is_file():
        raise UsageError(f"--resume {path}: no journal at {journal}; give the journal "
                         "(*.journal.jsonl) an interrupted run left, or its target file")
    return journal


def claim(target: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A results name of the caller's own for a new run: `target`, else the first numbered
    sibling (x.1.json, x.2.json, ...) where neither the file nor its journal exists, taken by
    creating the (empty) journal exclusively (O_EXCL), so that runs started in the same second
    into one folder never share a name; (target, journal). Called before anything is measured;
    Journal.write_header fills the journal, unclaim gives it back if the run ends first."""
    t = Path(target)
    try:
        t.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"cannot create {t.parent}: {explain(t, e)}") from None
    for i in range(MAX_NUMBERED):
        cand = numbered(t, i)
        if os.path.lexists(cand):
            continue
        jf = journal_path(cand)
        try:
            os.close(os.open(jf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue  # another run's (or an interrupted run's) journal: not ours
        except OSError as e:
            raise ResultsError(f"cannot write the journal {jf}: {explain(jf, e)}") from None
        fsync_dir(jf.parent)
        return cand, jf
    raise ResultsError(f"could not find a free name beside {t}")


def unclaim(journal: str | os.PathLike[str]) -> None:
    """Give back a name claim() took, when the run ended before its header was written (an
    empty journal); a journal with anything in it is left alone."""
    try:
        p = Path(journal)
        if p.stat().st_size == 0:
            p.unlink()
    except OSError:
        pass


class Journal:
    """Append-only JSON lines, each made durable before returning."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._checked_tail = False

    def _write_line(self, obj: dict[str, Any]) -> None:
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if not self._checked_tail:  # a torn last line (crash mid-write) is cut off first
                self._cut_torn_tail(fd)
                self._checked_tail = True
            view = memoryview(line)
            while view:  # os.write may write less than asked (a signal, a pipe-like fs)
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.path.parent)

    def _cut_torn_tail(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size == 0:
            return
        tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = (size - len(tail) + cut + 1) if cut >= 0 else (0 if size <= len(tail) else size)
        os.ftruncate(fd, keep)

    def write_header(self, header: dict[str, Any]) -> None:
        """Line 1: everything of the results document except cells and workloads."""
        if self.path.exists() and self.path.stat().st_size > 0:
            raise ResultsError(f"{self.path}: a journal is already there; continue it with "
                               f"`lstmbench run --resume {self.path}` or remove it")
        self._write_line({k: v for k, v in header.items() if k not in ("cells", "workloads")})

    def append(self, record: dict[str, Any]) -> None:
        """One finished workload, {"workload": {...}, "cells": [...]}; durable on return."""
        self._write_line(record)

    @staticmethod
    def read(path: str | os.PathLike[str], is_record: Callable[[dict[str, Any]], bool] | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(header, records). Lines that do not parse (a torn last line) are passed over; a
        journal without a readable header gives ({}, records). `is_record` says which lines
        after the header are records (default: a workload's, {"workload": {...}, "cells": [...]};
        the quality matrix keeps {"backend": ..., "result": {...}})."""
        is_record = is_record or is_workload_record
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ResultsError(f"{p}: cannot read the journal ({e.strerror or e})") from None
        header: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        for i, raw in enumerate(data.split(b"\n")):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # torn by a crash mid-write: that workload is measured again on resume
            if not isinstance(obj, dict):
                continue
            if i == 0:
                header = obj
            elif is_record(obj):
                records.append(obj)
        return header, records


def is_workload_record(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("workload"), dict) and isinstance(obj.get("cells"), list)


# ---- the final file ---------------------------------------------------------------------

def write_unique(path: Path, data: bytes) -> Path:
    """`data` at `path`, or at the first free numbered sibling (x.1.json, x.2.json, ...):
    impls.files.write_atomic, never over an existing file."""
    return write_atomic(path, data, number=True)


def explain(path: Path, e: OSError) -> str:
    """The real reason `path` could not be written, in words."""
    # a component replaced by a file, or a dangling symbolic link on the way
    for anc in [*reversed(path.parents), path.parent]:
        if anc.is_symlink() and not anc.exists():
            return f"{anc} is a symbolic link to {os.readlink(anc)}, which does not exist"
        if anc.exists() and not anc.is_dir():
            return f"{anc} is a file, not a folder"
    code = e.errno
    if code == errno.ENOSPC:
        return f"the disk holding {path.parent} is full (ENOSPC)"
    if code == errno.EDQUOT:
        return f"the disk quota for {path.parent} is used up (EDQUOT)"
    if code == errno.EROFS:
        return f"the file system holding {path.parent} is read-only (EROFS)"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {path.parent} ({errno.errorcode.get(code, code)})"
    if code == errno.ENOTDIR:
        return f"a part of {path.parent} is not a folder"
    return f"{e.strerror or e} ({errno.errorcode.get(code or 0, code)})"


def fallback_paths(target: Path) -> list[Path]:
    """Where the cells go when the target cannot be written, in order of preference."""
    name = target.name
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return [Path.cwd() / f"lstmbench-rescued-{name}", data / "lstmbench" / "rescued" / name,
            Path(tempfile.gettempdir()) / f"lstmbench-rescued-{name}"]


def finalize(journal: str | os.PathLike[str], target: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    """Write `doc` to `target` atomically, never over an existing file (a clash gets x.1.json);
    remove the journal and return the path written. If the target cannot be written, write a
    fallback path and raise ResultsError naming it and the cause (the journal is kept)."""
    journal, target = Path(journal), Path(target)
    data = json.dumps({k: v for k, v in doc.items() if not k.startswith("_")}, indent=1).encode()
    try:
        written = write_unique(target, data)
    except OSError as e:
        cause = explain(target, e)
        failures = []
        for fb in fallback_paths(target):
            try:
                saved = write_unique(fb, data)
            except OSError as e2:
                failures.append(f"{fb}: {explain(fb, e2)}")
                continue
            raise ResultsError(
                f"could not write {target}: {cause}; the results were written to {saved} instead"
                + (f" (the journal {journal} is kept)" if journal.exists() else "")) from None
        kept = (f"every finished cell is still in the journal {journal}" if journal.exists()
                else "nothing could be saved")
        raise ResultsError(f"could not write {target}: {cause}; no fallback could be written either "
                           f"({'; '.join(failures)}); {kept}") from None
    try:
        if journal.exists() and journal.resolve() != written.resolve():
            journal.unlink()
            fsync_dir(journal.parent)
    except OSError:
        pass  # the results are safe; a journal left behind is harmless (resume finds all done)
    return written
