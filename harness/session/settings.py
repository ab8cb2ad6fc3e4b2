"""A benchmark run's settings (`run`, `ab`): one frozen object, checked once where the command
reads its options (harness.commands.run.run_settings), passed whole to the run
(harness.session.benchmark) and its executor, never re-threaded as loose values. An
interrupted run's settings come from its journal's header, which is read once (Resume)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from impls.registry import DEVICES

from ..engine import stats
from ..engine.assemble import group_workloads
from ..engine.matrix import Matrix
from ..engine.scheduler import Schedule
from ..envs.variants import Variant, participant
from ..errors import UsageError
from ..results.store import new_document
from .session import Resume

OMP_WAIT_POLICIES = ("passive", "active")


@dataclass(frozen=True)
class RunSettings:
    """What a benchmark run measures and how (README, "Benchmarks"), validated on creation."""
    matrix: Matrix
    backends: tuple[str, ...]
    device: str = "cpu"
    precision: str = "float32"
    threads: int | None = None
    processes: int = 1
    omp_wait_policy: str | None = None
    seed: int | None = None  # the interleaving order's seed (None: from the clock, recorded)
    overrides: tuple[tuple[str, str], ...] = ()  # --python BACKEND=INTERPRETER
    out_dir: Path = Path("results")
    variants: tuple[Variant, ...] = ()
    resume: Resume | None = None  # the interrupted run's journal, read once
    command: tuple[str, ...] = ()
    cluster: str | None = None  # --cluster ADDRESS (or the resumed run's)
    on: str | None = None  # --on KIND[,KIND]
    pinned: dict[str, str] = field(default_factory=dict)  # variant -> the commit a resumed run measured

    def __post_init__(self) -> None:
        if not self.backends:
            raise UsageError("no backends to measure: name at least one with --backends")
        if self.device not in DEVICES:
            raise UsageError(f"--device {self.device!r}: choose from {', '.join(DEVICES)}")
        if self.precision not in ("float32", "tf32"):
            raise UsageError(f"--precision {self.precision!r}: choose float32 or tf32")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise UsageError(f"--threads must be between 1 and 1024, got {self.threads}")
        if self.processes < 1:
            raise UsageError(f"--processes must be an integer >= 1, got {self.processes}")
        if self.omp_wait_policy not in (None, *OMP_WAIT_POLICIES):
            raise UsageError(f"--omp-wait-policy {self.omp_wait_policy!r}: choose passive or active")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise UsageError(f"--variant names must differ, got {', '.join(names)}")

    @property
    def executor(self) -> str:
        """Where the workloads are measured (harness.engine.executor.EXECUTORS)."""
        return "cluster" if self.cluster else "local"

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def participants(self) -> list[str]:
        """Every backend once per variant (BACKEND@VARIANT), in order."""
        return [participant(b, v) for b in self.backends for v in (self.variant_names or [None])]

    @property
    def extra_env(self) -> dict[str, str]:
        return {"OMP_WAIT_POLICY": self.omp_wait_policy.upper()} if self.omp_wait_policy else {}

    def schedule(self) -> Schedule:
        """A workload's rounds, from the matrix and --processes."""
        m = self.matrix
        return Schedule(rounds=m.rounds, processes=self.processes, min_clean=m.min_clean,
                        extra_rounds=m.extra_rounds, extra_time=m.extra_time, max_time=m.workload_time)

    def workloads(self) -> list[tuple[str, list[Any]]]:
        """The matrix's workloads on these backends, in matrix order."""
        return group_workloads(self.matrix.cells(list(self.backends), self.device, self.precision))

    def seeded(self) -> "RunSettings":
        """These settings with the seed fixed: the resumed run's, the one given, else the clock's."""
        if self.resume is not None and self.resume.header.get("seed") is not None:
            return replace(self, seed=int(self.resume.header["seed"]))
        return self if self.seed is not None else replace(self, seed=int(time.time_ns() % 2**31))

    def document(self, **fields: Any) -> dict[str, Any]:
        """A new results document of this run (harness.results.store.new_document); `fields`:
        what its machine adds (cpus, python)."""
        return new_document(command=list(self.command), matrix=self.matrix.to_dict(), device=self.device,
                            precision=self.precision, threads=self.threads,
                            omp_wait_policy=self.omp_wait_policy, processes=self.processes, seed=self.seed,
                            backends={}, cpus=fields.pop("cpus", None), python=fields.pop("python", None),
                            interrupted=False, estimator=stats.estimator_info(), **fields)
