"""Ctrl-C and SIGTERM that end a run cleanly: the first SIGINT or SIGTERM raises Interrupted in
the main thread (where the run stops, keeps what it measured, and stops its workers); any
further signal while that clean-up runs is not allowed to abort it.

    with interruptible():
        ...                      # a long measurement
    # Interrupted (a KeyboardInterrupt) propagates; cli.main exits with 128 + signum (130, 143)

After an interruption the handlers stay in "cleaning up" mode past the `with` block (the
clean-up is the code that follows it): a second signal only runs the registered hooks (the
worker pool kills its processes at once instead of waiting for them to exit) and is otherwise
ignored. `restore()` puts the previous handlers back; cli.main calls it on its way out."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `signum` gives the exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class Stop:
    """What `interruptible()` yields: whether (and by which signal) the run was stopped."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal
        self.count = 0  # every signal received

    @property
    def requested(self) -> bool:
        return self.signum is not None


_hooks: list[Callable[[], None]] = []  # run on a second signal: make the clean-up quicker
_saved: dict[int, Any] = {}  # the handlers to restore, by signal
_depth = 0


def on_second_signal(fn: Callable[[], None]) -> None:
    """Register `fn` to run (in the main thread) when a signal arrives during clean-up."""
    if fn not in _hooks:
        _hooks.append(fn)


def _run_hooks() -> None:
    for fn in list(_hooks):
        try:
            fn()
        except Exception:  # noqa: BLE001 - a hook must never turn into a second interruption
            pass


def _cleanup_handler(signum: int, frame: Any) -> None:
    _run_hooks()  # and nothing else: the clean-up in progress goes on


def restore() -> None:
    """Put back the handlers interruptible() replaced (no-op when none are replaced)."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, old in list(_saved.items()):
        try:
            signal.signal(sig, old)
        except (ValueError, TypeError, OSError):
            pass
    _saved.clear()
    _depth = 0


@contextlib.contextmanager
def interruptible() -> Iterator[Stop]:
    """First SIGINT/SIGTERM -> Interrupted(signum) in the main thread; later ones are held off.
    Outside the main thread (signals cannot be caught there) this does nothing."""
    global _depth
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        stop.count += 1
        if stop.signum is not None:  # a second signal while the first is handled
            _run_hooks()
            return
        stop.signum = signum
        for sig in HANDLED:  # from now on: clean-up mode, even past the `with` block
            signal.signal(sig, _cleanup_handler)
        raise Interrupted(signum)

    if _depth == 0:
        for sig in HANDLED:
            _saved[sig] = signal.getsignal(sig)
    outer = {sig: signal.getsignal(sig) for sig in HANDLED}
    _depth += 1
    for sig in HANDLED:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        _depth = max(0, _depth - 1)
        if stop.signum is None:  # not interrupted: back to what was there before
            for sig in HANDLED:
                signal.signal(sig, outer[sig])
            if _depth == 0:
                _saved.clear()
        # interrupted: stay in clean-up mode until restore() (cli.main's way out)


def exit_status(e: BaseException) -> int:
    """128 + signum for Interrupted, 130 for a plain KeyboardInterrupt."""
    return e.exit_status if isinstance(e, Interrupted) else 130


class terminate_as_interrupt:
    """SIGTERM (a job scheduler, `kill`) stops training like Ctrl-C: the last checkpoint,
    the log and run.json are kept. Also the only stop a background job has, whose SIGINT
    the shell ignores."""

    def __enter__(self) -> None:
        import signal
        import threading
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt
            self.old = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, *exc: Any) -> None:
        import signal
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
