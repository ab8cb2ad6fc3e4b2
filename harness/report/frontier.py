"""Each framework at its fastest: per workload, the fastest backend of every framework (the
library a user writes the model in: impls.registry.BackendSpec.framework), with its time ratio
to the workload's fastest backend (the paired-round interval the workload stored, as the
report's ratio tables show it), its efficiency against the run's peak GEMM, chars/s and, for
generation, microseconds per character. One computation for the report's section of that name
and for `run`'s summary line per workload, so the two never disagree.

A framework's fastest backend is the one with the smallest headline estimate (the run's own
estimator, the figure the ratios are taken to); participants that are no registered backend
(a baseline in `lstmbench baselines`) belong to no framework and are left out. With variants,
each (framework, variant) has its own row."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from impls import registry

from ..envs.variants import participant, split


@dataclass(frozen=True)
class Frontier:
    """One framework's fastest backend in one workload."""
    framework: str  # a registry.FRAMEWORKS name, "@variant" appended in a variants run
    backend: str  # its fastest participant: BACKEND or BACKEND@VARIANT
    status: str  # "ok", or why none of the framework's backends measured (the first failure)
    estimate_s: float = math.nan  # seconds per step (the headline estimate)
    ratio: float = math.nan  # time ratio to the workload's fastest backend (1: it is the fastest)
    lo: float = math.nan  # 95% interval from the paired rounds (nan: none stored)
    hi: float = math.nan
    noisy: bool = False
    chars_per_s: float = math.nan
    efficiency: float | None = None  # achieved GFLOP/s over the run's peak GEMM
    us_per_char: float | None = None  # generation only
    of: int = 1  # how many of the framework's backends measured in this workload
    fastest: bool = False  # the workload's fastest backend overall


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def framework_of(name: str) -> str | None:
    """The framework a participant's backend is written in, None for a non-backend (a baseline)."""
    backend, variant = split(name)
    spec = registry.BACKENDS.get(backend)
    if spec is None:
        return None
    return spec.framework + (f"@{variant}" if variant else "")


def frontier(cells: list[tuple[str, dict[str, Any]]], ratios: dict[str, Any] | None,
             peak_gflops: float | None = None) -> list[Frontier]:
    """`cells`: (participant name, result) of one workload; `ratios`: the workload's stored
    ratios to its fastest (harness.engine.assemble.workload_ratios), or None (a v1 file: the
    ratio of the estimates, no interval). Rows fastest first; frameworks none of whose backends
    measured come last with the first failure's status (an unsupported mode is no row)."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, res in cells:
        fw = framework_of(name)
        if fw is not None and res.get("status") != "unsupported":
            groups.setdefault(fw, []).append((name, res))
    ok = {n: r for grp in groups.values() for n, r in grp
          if r.get("status") == "ok" and _num(r.get("estimate_s")) and r["estimate_s"] > 0}
    fastest = min(ok, key=lambda n: ok[n]["estimate_s"]) if ok else None
    rows: list[Frontier] = []
    for fw, grp in groups.items():
        mine = [n for n, _ in grp if n in ok]
        if not mine:
            rows.append(Frontier(fw, grp[0][0], str(grp[0][1].get("status") or "no result")))
            continue
        best = min(mine, key=lambda n: ok[n]["estimate_s"])
        res = ok[best]
        r = (ratios or {}).get(best)
        if isinstance(r, dict) and _num(r.get("ratio")):
            ratio, lo, hi = float(r["ratio"]), float(r.get("lo", math.nan)), float(r.get("hi", math.nan))
            noisy = bool(r.get("noisy"))
        else:  # no stored ratio (v1, or a participant the workload's ratios left out)
            ratio, lo, hi, noisy = res["estimate_s"] / ok[fastest]["estimate_s"], math.nan, math.nan, False
        eff = res.get("efficiency")
        if not _num(eff) and _num(res.get("gflops")) and peak_gflops:
            eff = res["gflops"] / peak_gflops
        rows.append(Frontier(fw, best, "ok", float(res["estimate_s"]), ratio, lo, hi,
                             noisy or bool(res.get("noisy")),
                             float(res["chars_per_s"]) if _num(res.get("chars_per_s")) else math.nan,
                             float(eff) if _num(eff) else None,
                             float(res["us_per_char"]) if _num(res.get("us_per_char")) else None,
                             len(mine), best == fastest))
    return sorted(rows, key=lambda f: (f.status != "ok", f.ratio if f.status == "ok" else 0.0))


def ratio_text(f: Frontier) -> str:
    """`1 (fastest)`, `2.31 [2.20, 2.44]`, or `2.31` where no interval was stored; `noisy` marked."""
    if f.status != "ok":
        return f.status
    if f.fastest:
        txt = "1 (fastest)"
    elif _num(f.lo) and _num(f.hi):
        txt = f"{f.ratio:.2f} [{f.lo:.2f}, {f.hi:.2f}]"
    else:
        txt = f"{f.ratio:.2f}"
    return txt + (" noisy" if f.noisy else "")


def summary_line(rows: list[Frontier]) -> str:
    """`run`'s line per workload: each framework's fastest backend and its ratio (us/char for
    generation), fastest first, e.g. `jax 1.00 (jax, 13.7 us/char); torch 2.31x [2.20, 2.44]
    (torch-genloop, 31.6 us/char); ...`."""
    parts = []
    for f in rows:
        if f.status != "ok":
            parts.append(f"{f.framework} {f.status} ({f.backend})")
            continue
        r = "1.00" if f.fastest else f"{f.ratio:.2f}x" + (
            f" [{f.lo:.2f}, {f.hi:.2f}]" if _num(f.lo) and _num(f.hi) else "")
        detail = f.backend + (f", {f.us_per_char:.1f} us/char" if f.us_per_char is not None else "")
        parts.append(f"{f.framework} {r}{'*' if f.noisy else ''} ({detail})")
    return "; ".join(parts)


def name_of(cell_entry: dict[str, Any]) -> str:
    """A results file's cell entry as a participant name."""
    return participant(cell_entry["cell"]["backend"], cell_entry.get("variant"))
