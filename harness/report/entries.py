"""The report's view of the cells: each cell as measured in one context (machine, device,
precision, threads), its runs pooled (harness.results.model.Pooled), with the figures the
tables and plots show (the headline estimate and its interval, characters per second, GFLOP/s,
efficiency, first step, peak memory)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from impls import registry
from impls.config import flops_per_char

from ..engine.stats import estimate
from ..judge import significance as sig
from ..engine.bench import Cell
from ..results.model import Pooled, Run, RunCell

BACKEND_ORDER = list(registry.BACKENDS)  # the tables' and plots' order of backends


def _positive(v: Any, kind: type = float) -> bool:
    ok = isinstance(v, int) if kind is int else isinstance(v, (int, float))
    return ok and v > 0


@dataclass
class Entry:
    """One cell as measured in one context (machine, device, precision, threads); runs pooled."""
    pool: Pooled
    context: tuple[str, str, str, Any]  # machine slug, device, precision, threads

    # derived, filled by finish()
    label: str = ""
    group: str = ""
    estimate_s: float = math.nan  # the headline seconds per step
    lo_s: float = math.nan  # its 95% interval
    hi_s: float = math.nan
    cps: float = math.nan
    cps_lo: float = math.nan
    cps_hi: float = math.nan
    us_per_char: float = math.nan
    us_lo: float = math.nan
    us_hi: float = math.nan
    noisy: bool = False
    estimator: str = "median"

    @property
    def cell(self) -> Cell:
        return self.pool.cell

    @property
    def measured(self) -> list[RunCell]:
        """The runs that timed it."""
        return self.pool.measured

    @property
    def runs(self) -> int:
        return len(self.pool.runs)

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(status, error) of each run that did not time it."""
        return [(r.status, r.error) for r in self.pool.runs if not r.measured]

    @property
    def first_steps(self) -> list[float]:
        return [float(r.result["first_step_s"]) for r in self.measured if _positive(r.result.get("first_step_s"))]

    @property
    def peaks(self) -> list[float]:
        """The peak GEMM GFLOP/s of each run that timed it (the efficiency denominator)."""
        out = []
        for r in self.measured:
            peak = r.run.doc.get("peak")
            g = peak.get("gflops") if isinstance(peak, dict) else None
            if _positive(g):
                out.append(float(g))
        return out

    @property
    def rss(self) -> list[int]:
        return [int(r.result["peak_rss_bytes"]) for r in self.measured if _positive(r.result.get("peak_rss_bytes"), int)]

    @property
    def device_bytes(self) -> list[int]:
        return [int(r.result["peak_device_bytes"]) for r in self.measured
                if _positive(r.result.get("peak_device_bytes"), int)]

    @property
    def samples(self) -> list[float]:
        return [s["s"] for r in self.measured for s in r.samples]

    @property
    def clean_rounds(self) -> int:
        return sum(s["clean"] for r in self.measured for s in r.samples)

    @property
    def ok(self) -> bool:
        return bool(self.measured) and math.isfinite(self.estimate_s) and self.estimate_s > 0

    def finish(self, label: str) -> None:
        c = self.cell
        self.label = label
        self.group = f"{c.preset} {c.mode}" + ("" if c.mode == "generate" else f" B{c.batch}")
        if not self.measured:
            return
        self.noisy = any(r.noisy for r in self.measured)
        self.estimator = self.measured[0].run.estimator
        one = self.measured[0].result if len(self.measured) == 1 else {}
        est, ci = one.get("estimate_s"), one.get("ci_s")
        if (isinstance(est, (int, float)) and math.isfinite(est) and est > 0 and isinstance(ci, list)
                and len(ci) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci)):
            self.estimate_s, self.lo_s, self.hi_s = float(est), float(ci[0]), float(ci[1])
        else:  # v1, or runs pooled: the estimator over the clean rounds, bootstrap interval
            side = [r.values() for r in self.measured]
            self.estimate_s = estimate(sig.pooled(side), self.estimator)
            reps = sig.replicates(side, self.estimator, reps=500)
            reps = reps[np.isfinite(reps)]
            if reps.size:
                self.lo_s, self.hi_s = (float(x) for x in np.percentile(reps, [2.5, 97.5]))
        n = c.chars_per_call()
        self.cps = n / self.estimate_s
        self.cps_lo = n / self.hi_s if self.hi_s > 0 else math.nan
        self.cps_hi = n / self.lo_s if self.lo_s > 0 else math.nan
        if c.mode == "generate":
            self.us_per_char, self.us_lo, self.us_hi = (1e6 * q / c.seq_len
                                                        for q in (self.estimate_s, self.lo_s, self.hi_s))

    @property
    def median_s(self) -> float:
        return self.estimate_s

    @property
    def gflops(self) -> float:
        return flops_per_char(self.cell.model, self.cell.mode) * self.cps / 1e9

    @property
    def efficiency(self) -> float:
        return self.gflops / float(np.median(self.peaks)) if self.peaks else math.nan


def entries(runs: list[tuple[Run, list[RunCell]]]) -> list[Entry]:
    """Every cell of `runs`, pooled by context and what it measures (Cell.key), each labelled
    with its backend and, where the report holds several, its context."""
    out: dict[tuple, Entry] = {}
    for run, rcs in runs:
        for rc in rcs:
            cell = rc.cell
            ctx = (run.machine, cell.device, cell.precision, run.threads)
            out.setdefault((ctx, cell.key()), Entry(Pooled(cell, run.threads), ctx)).pool.runs.append(rc)
    contexts = {e.context for e in out.values()}
    varying = [i for i in range(4) if len({c[i] for c in contexts}) > 1]
    for e in out.values():  # name the context only where it differs within the report
        parts = [str(e.context[i]) if i < 3 else f"{e.context[i]} thread" + "s" * (e.context[i] != 1)
                 for i in varying]
        e.finish(e.cell.backend + (f" ({', '.join(parts)})" if parts else ""))
    return list(out.values())


def labels(es: list[Entry]) -> list[str]:
    """The entries' labels in the backends' order."""
    seen = {e.label: e.cell.backend for e in es}
    order = {b: i for i, b in enumerate(BACKEND_ORDER)}
    return sorted(seen, key=lambda lab: (order.get(seen[lab], 99), lab))


def groups(es: list[Entry]) -> list[str]:
    """The entries' groups (preset, mode, batch), in the order they first come."""
    out: list[str] = []
    for e in es:
        if e.group not in out:
            out.append(e.group)
    return out
