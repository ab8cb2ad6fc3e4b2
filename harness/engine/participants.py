"""Participants: what the interleaved scheduler (harness.engine.scheduler) times, round by round.

A participant is prepared once, then timed in rounds, then released (the Participant
protocol). Each lives in a worker process of its own (harness.engine.workers.WorkerParticipant
sends the requests); what tells the kinds apart is how the worker prepares one: a Kind, one
module each in harness/engine/kinds/ (a backend's cell, the noise probe, a hand-written
baseline), registered in harness.engine.kinds.KINDS.

A Kind has two halves: `fields`, the request the harness sends (run here), and `build`, the
prepared step the worker makes of it (run in the worker's interpreter, which may be chainer's
NumPy < 2 environment: this module and the kinds import the standard library, NumPy and impls
only). A new kind is one module and its entry in KINDS: the worker answers every kind's op
(harness.engine.worker), WorkerParticipant(..., kind=KINDS[name]) drives it, and an executor's
Setup names the participants of that kind (Setup.kinds) with their request fields (Setup.extra)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .bench import Cell, Prepared

PROBE = "probe"  # the noise probe's participant name (in a workload's `order`)
PROBE_N = 256  # the probe GEMM's size: ~1 ms per multiply on a laptop core, many per round
ROUND_TIME = 0.03  # target seconds per timed round (20-50 ms)


class ParticipantFailed(Exception):
    """A participant could not prepare or time a round; `kind` is a results status."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Participant(Protocol):
    """One thing timed in the rotation: a backend's prepared cell, a baseline, the noise probe."""
    name: str

    def prepare(self) -> dict[str, Any]: ...  # {"status": "ok"|"nan", "first_step_s", "inner", ...}

    def round(self) -> float: ...  # seconds per step of one timed round

    def release(self) -> dict[str, Any]: ...  # {"finite": bool, "peak_rss_bytes", ...}


@dataclass
class Built:
    """What a kind's build gives the worker: the prepared step, the answer's own fields, the
    cell whose device memory the release reports (None: no such cell), whether the first step
    is timed apart (and must be finite), and the warm-up before a round is sized."""
    prep: Prepared
    info: dict[str, Any]
    cell: Cell | None = None
    first_step: bool = True
    warmup: float = 0.2


@dataclass(frozen=True)
class Kind:
    """One way of preparing a participant in its worker (module docstring)."""
    name: str
    op: str  # the worker request that prepares it
    fields: Callable[[Cell | None, int | None, dict[str, Any]], dict[str, Any]]  # harness side
    build: Callable[[dict[str, Any]], Built]  # worker side
