"""The one way lstmbench writes a file: `write_atomic`.

Every file lstmbench writes (results, journals' final files, checkpoints, case and output
files, every `--json`, quality results, reports and their plots, run.json, the corpus cache)
is written to a temporary file beside its target, flushed and fsynced, then linked into place
(never over an existing name) or, for a file the program itself keeps up to date (a
checkpoint, a training run's run.json, a cache entry), renamed over it; then the folder's
entry is made durable. So no interruption leaves half a file, and nothing a user has is
overwritten unless the writer said `replace=True`.

`tempfile.mkstemp` creates the temporary file mode 0600 whatever the umask, and the mode
travels with the link or rename: a results file would be unreadable to the colleague it was
meant for. `temp_beside` is mkstemp with the mode set back to what `open(path, "w")` would
have given (0666 less the umask), before anything is written.

Standard library only: every environment (chainer's NumPy < 2 one too) imports it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Union

Data = Union[bytes, Callable[[IO[bytes]], object]]  # the bytes, or a function writing them to a file
MAX_NUMBERED = 1000  # x.1.json ... x.999.json before a numbered write gives up


def current_umask() -> int:
    """This process's umask, read without changing it where Linux says it (/proc/self/status,
    since 4.7); elsewhere set and restored at once (os.umask has no read-only form)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new regular file gets from open(): 0666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a new folder gets from mkdir(): 0777 less the umask."""
    return 0o777 & ~current_umask()


def temp_beside(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(fd, name) of a new temporary file in `path`'s folder (the same file system, so it can
    be linked or renamed onto `path`), named `.NAME.XXXX.tmp`, mode as open() would give.
    The folder must exist; an OSError propagates (nothing is left behind)."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def fsync_dir(d: str | os.PathLike[str]) -> None:
    """Make a new name in folder `d` durable (a file's own fsync does not cover its entry)."""
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def numbered(path: Path, i: int) -> Path:
    """The i-th name of `path`'s numbered siblings: x.json, x.1.json, x.2.json, ..."""
    return path if i == 0 else path.with_name(f"{path.stem}.{i}{path.suffix}")


def _write_one(path: Path, data: Data, replace: bool) -> Path:
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # never clobbers: EEXIST when the name (even a dangling link) exists
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # renamed into place
    fsync_dir(path.parent if str(path.parent) else ".")
    return path


def write_atomic(path: str | os.PathLike[str], data: Data, *, replace: bool = False,
                 number: bool = False, mkdir: bool = True) -> Path:
    """Write `data` (bytes, or a function given the open binary file) to `path` atomically
    (module docstring); the path written.

    - default: never over an existing name (FileExistsError, the file left as it was);
    - `replace=True`: over the previous version of a file this program keeps;
    - `number=True`: where `path` is taken, the first free numbered sibling (x.1.json, ...);
    - `mkdir=False`: the folder must exist (else FileNotFoundError), as for a path the user
      named, which is checked before any work (impls.case.check_new_path).

    An OSError (a full disk, a read-only file system) leaves nothing behind and propagates."""
    path = Path(path)
    if mkdir and str(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    if not number:
        if not replace and os.path.lexists(path):
            raise FileExistsError(f"{path} exists; choose another name (results are never overwritten)")
        return _write_one(path, data, replace)
    for i in range(MAX_NUMBERED):
        cand = numbered(path, i)
        if os.path.lexists(cand):
            continue
        try:
            return _write_one(cand, data, replace=False)
        except FileExistsError:
            if not os.path.lexists(cand):
                raise  # not the name: a part of the folder is in the way
            continue  # another writer took it meanwhile
    raise FileExistsError(f"could not find a free name beside {path} ({MAX_NUMBERED} taken)")


def file_head(path: Path, error: type[Exception], *, n: int = 8, not_file_hint: str = "",
              empty_hint: str = "") -> bytes:
    """The first `n` bytes of the regular file `path`, to recognise what it holds before it is
    parsed; `error` (one line naming the path, with the hint after "; ") where it is not a
    regular file, cannot be read or is empty."""
    def why(what: str, hint: str) -> Exception:
        return error(f"{path}: {what}" + (f"; {hint}" if hint else ""))
    if not path.is_file():
        raise why("not a regular file", not_file_hint)
    try:
        with open(path, "rb") as f:
            head = f.read(n)
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    if not head:
        raise why("the file is empty", empty_hint)
    return head
