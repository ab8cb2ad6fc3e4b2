"""One results file's life, whatever run makes it: the typed document, claiming its name, the
journal, resuming, interruption and the final atomic write. Every run-like command goes through
it (a benchmark matrix, locally or on a cluster with one session per machine kind; baselines;
a quality matrix), each contributing only what differs: the document's fields, its records,
and how it words an interruption.

    session = RunSession.new(doc, path)         # the name, ours alone, before anything runs
    with running([session], words, log):       # Ctrl-C/SIGTERM: every kept record stays
        session.begin()                        # line 1 of the journal: the document's header
        session.keep(record)                   # each finished piece, durable on return
    session.finish(doc)                        # the results file, atomically; journal removed

A session begins (writes its header) once what the header says is known: a local run after
describing its participants, a cluster run at a kind's first finished workload, a quality run
at once. One that ends before it began gives its name back (journal.unclaim).
`RunSession.resume(Resume.read(path))` continues an interrupted one: its journal is read once."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..engine.signals import interruptible
from .journal import Journal, claim, finalize, resume_journal, target_of, unclaim

Log = Callable[[str], None]
Record = dict[str, Any]


@dataclass(frozen=True)
class Resume:
    """An interrupted run's journal, read once: the journal, the results file it is beside, its
    header (the document without what is only known at the end) and its finished records."""
    journal: Path
    target: Path
    header: dict[str, Any]
    records: tuple[Record, ...]

    @staticmethod
    def read(path: str | Path) -> "Resume":
        """The journal PATH names (itself, or the one beside the results file PATH), every line
        after the header kept (a kind keeps its own records: only); UsageError where there is none."""
        journal = resume_journal(path)
        header, records = Journal.read(journal, lambda obj: True)
        return Resume(journal, target_of(journal), header, tuple(records))

    def only(self, is_record: Callable[[Record], bool]) -> "Resume":
        """The journal with the records its kind keeps (a line of another shape passed over)."""
        return replace(self, records=tuple(r for r in self.records if is_record(r)))


class RunSession:
    """One results file: its document, target, journal and finished records (module docstring)."""

    def __init__(self, doc: dict[str, Any], target: Path, journal: Path, records: Sequence[Record] = (),
                 *, begun: bool = False) -> None:
        self.doc, self.target, self.journal_file = doc, Path(target), Path(journal)
        self.records: list[Record] = list(records)
        self.begun = begun  # its header is in the journal (a resumed session's always is)
        self.resumed = begun
        self._journal = Journal(journal)

    @staticmethod
    def new(doc: dict[str, Any], path: Path) -> "RunSession":
        """A new run's session at `path`, or the first free numbered sibling (journal.claim)."""
        target, journal = claim(path)
        return RunSession(doc, target, journal)

    @staticmethod
    def resume(r: Resume) -> "RunSession":
        """An interrupted run's session: its document is the journal's header."""
        return RunSession({k: v for k, v in r.header.items() if k != "target"}, r.target, r.journal,
                          r.records, begun=True)

    def begin(self) -> None:
        """The journal's header, once: the document as it stands (without what is only known at
        the end), naming the target."""
        if not self.begun:
            self._journal.write_header({**self.doc, "target": str(self.target)})
            self.begun = True

    def keep(self, record: Record) -> None:
        """One finished piece (a workload, a backend), durable on return; the header first where
        it is not written yet."""
        self.begin()
        self._journal.append(record)
        self.records.append(record)

    def release(self) -> None:
        """A session that never began gives its name back (the run ended first)."""
        if not self.begun:
            unclaim(self.journal_file)

    def finish(self, doc: dict[str, Any] | None = None) -> Path:
        """The results file, atomically and never over a file (journal.finalize); the journal
        goes once it is written. The path written."""
        doc = self.doc if doc is None else doc
        doc.pop("target", None)
        return finalize(self.journal_file, self.target, doc)


@contextmanager
def running(sessions: Sequence[RunSession], words: Callable[[list[RunSession]], str], log: Log
            ) -> Iterator[None]:
    """The run between its sessions' claims and their final files: SIGINT and SIGTERM interrupt
    it (harness.engine.signals); on the way out, sessions that never began give their names
    back; interrupted, `words` says what was kept (and how to continue), and the interruption
    goes on to the command (exit 130 or 143). `sessions` may grow inside the block."""
    interrupted: BaseException | None = None
    try:
        with interruptible():
            yield
    except KeyboardInterrupt as e:
        interrupted = e
    finally:
        for s in sessions:
            s.release()
    if interrupted is not None:
        log(words(list(sessions)))
        raise interrupted


def kept_words(sessions: list[RunSession], what: str = "workloads", note: str = "") -> str:
    """How a benchmark run says what an interruption kept: the finished pieces and their
    journals, and the command that continues them (`note`: what else happened, e.g. the
    cluster's tasks were cancelled)."""
    kept = [s for s in sessions if s.begun and s.records]
    if not kept:
        return f"\ninterrupted before any {what[:-1]} finished{note}"
    return (f"\ninterrupted: {sum(len(s.records) for s in kept)} finished {what} kept in "
            + ", ".join(str(s.journal_file) for s in kept)
            + f"{note}; continue with: lstmbench run --resume {kept[0].journal_file}")
