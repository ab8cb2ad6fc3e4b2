"""The temporary file of an atomic write, with the permissions a plain open() would give.

Every file lstmbench writes for users to keep or share (results, journals' final files,
checkpoints, case files, `check --json`, `compare --json`, quality results) is written to a
temporary file beside its target, fsynced, then linked or renamed into place, so that no
interruption leaves half a file. `tempfile.mkstemp` creates that file mode 0600 whatever the
umask, and the mode travels with the link or rename: a results file would be unreadable to
the colleague it was meant for. `temp_beside` is mkstemp with the mode set back to what
`open(path, "w")` would have given (0666 less the umask), before anything is written.
Standard library only: every environment (chainer's NumPy < 2 one too) imports it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
