"""What `run`'s marks and figures mean, in one place for the run's output and the report: the
rule behind NOISY, which signal gave the machine's noise verdict, and what the efficiency
denominator (the run's peak GEMM) is made of. The numbers come from harness.engine.stats and the
run's own matrix, never retyped here."""
from __future__ import annotations

from typing import Any

from . import stats

PEAK_NAME = "peak GEMM"  # the efficiency denominator's one name, at the start, the end and in reports


def noisy_rule(min_clean: int | None = None) -> str:
    """Why a cell is NOISY, with the thresholds the run used."""
    n = min_clean if min_clean is not None else stats.MIN_CLEAN
    return (f"NOISY: fewer than {n} of the cell's rounds were clean, even after re-measuring within "
            f"its workload's budget. A round is clean when the noise probe in it ran within "
            f"{stats.CLEAN_FACTOR:g}x the fastest probe round of the run and the cell's own round was "
            f"no collapse (over {stats.COLLAPSE_FACTOR:g}x the cell's median). A noisy figure is taken "
            "over every round, is not a clean measurement, and compare leaves it inconclusive.")


def min_clean_of(doc: dict[str, Any]) -> int | None:
    """The clean rounds a cell needed in the run `doc` (its matrix), if recorded."""
    m = doc.get("matrix")
    v = m.get("min_clean") if isinstance(m, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


VERDICTS = ["unknown", "quiet", "noisy", "contended"]  # the noise verdicts, mildest first


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def probe_verdict_of(noise: dict[str, Any]) -> str:
    """The verdict the probe alone gave: recorded since this module exists; for older files
    from the contended share as stats.noise_verdict reads it (collapses: any counts)."""
    got = noise.get("probe_verdict")
    if isinstance(got, str):
        return got
    frac = _num(noise.get("contended_fraction"))
    if frac is None:
        return "unknown"
    collapses = _num(noise.get("collapse_rounds")) or 0
    if frac >= 0.5:
        return "contended"
    return "quiet" if frac < 0.1 and not collapses else "noisy"


def neighbour_verdict(foreign_max: float | None) -> str | None:
    """What the neighbour count alone makes of the busiest workload (None: not recorded):
    noisy from stats.FOREIGN_LIMIT cores busy, contended from twice that."""
    if foreign_max is None:
        return None
    if foreign_max >= 2 * stats.FOREIGN_LIMIT:
        return "contended"
    return "noisy" if foreign_max >= stats.FOREIGN_LIMIT else "quiet"


PROBE_RULE = ("the probe says quiet under 10% with no collapse, contended from 50% or with collapses in "
              "over 5% of rounds, noisy between")  # stats.noise_verdict


def verdict_rule() -> str:
    """How a run's verdict is reached, for a report's legend."""
    return (f"A run's verdict comes from two signals and the more severe stands: the noise probe, by "
            f"the share of its rounds that ran over {stats.CLEAN_FACTOR:g}x its best ({PROBE_RULE}), "
            f"and the neighbour count, other processes' CPU use around each workload (noisy from "
            f"{stats.FOREIGN_LIMIT:g} cores busy, contended from {2 * stats.FOREIGN_LIMIT:g}); "
            "'by' names the signal that gave it.")


def verdict_source(noise: dict[str, Any]) -> str:
    """Which signal gave the verdict, in a few words: the noise probe, the neighbour count, or
    both alike."""
    words = verdict_words(noise)
    for key in ("the noise probe and the neighbour count alike", "the neighbour count", "the noise probe"):
        if f" by {key}" in words:
            return key.replace("the ", "").replace(" alike", "")
    return "-"


def verdict_words(noise: dict[str, Any]) -> str:
    """The machine's verdict and the signal that gave it: the probe (its contended share and
    collapses) or the neighbour count (other processes' CPU use around each workload)."""
    verdict = str(noise.get("verdict") or "unknown")
    frac = _num(noise.get("contended_fraction"))
    collapses = int(_num(noise.get("collapse_rounds")) or 0)
    foreign = _num(noise.get("foreign_cores_max"))
    pv = probe_verdict_of(noise)
    nv = neighbour_verdict(foreign)
    probe = (f"{100 * frac:.0f}% of the probe's rounds ran over {stats.CLEAN_FACTOR:g}x its best, "
             f"{collapses} collapse round{'s' * (collapses != 1)}" if frac is not None else "no probe rounds")
    rule = PROBE_RULE
    if frac is None and foreign is None:
        return f"{verdict.upper()}: neither the noise probe nor the neighbour count was recorded"
    if foreign is None:
        return f"{verdict.upper()} by the noise probe: {probe} ({rule}); other processes not counted"
    neighbours = (f"other processes kept up to {foreign:.2f} cores busy during a workload (noisy from "
                  f"{stats.FOREIGN_LIMIT:g}, contended from {2 * stats.FOREIGN_LIMIT:g})")
    if nv is not None and VERDICTS.index(nv) > VERDICTS.index(pv) and nv == verdict:
        return (f"{verdict.upper()} by the neighbour count: {neighbours}; the probe alone said "
                f"{pv.upper()} ({probe})")
    if nv == pv == verdict and verdict != "quiet":
        return f"{verdict.upper()} by the noise probe and the neighbour count alike: {probe}; {neighbours}"
    return f"{verdict.upper()} by the noise probe: {probe} ({rule}); {neighbours}"


def peak_words(peak: dict[str, Any] | None) -> str:
    """The efficiency denominator and what it is: the fastest float32 GEMM the run measured,
    the noise probe's small GEMM or the larger one timed at the start and the end (CPU), or a
    backend's device_matmul_peak hook (GPU)."""
    pk = peak or {}
    g = _num(pk.get("gflops"))
    if not g:
        return f"{PEAK_NAME}: not measured" + (f" ({pk['error']})" if pk.get("error") else "")
    head = f"{PEAK_NAME} {g:.1f} GFLOP/s {pk.get('dtype') or 'float32'}"
    probe, big = _num(pk.get("probe_gflops")), _num(pk.get("gemm_gflops"))
    if probe is None and big is None:  # files written before the parts were recorded
        return f"{head} (via {pk.get('via', '?')})"
    parts = []
    if probe is not None:
        parts.append(f"the {pk.get('probe_n', '?')}x{pk.get('probe_n', '?')} noise probe's best {probe:.1f}")
    if big is not None:
        parts.append(f"the {pk.get('gemm_n', '?')}x{pk.get('gemm_n', '?')} GEMM's best {big:.1f}")
    threads = pk.get("threads")
    return (f"{head}, the fastest of {' and '.join(parts)}"
            + (f" ({threads} thread{'s' * (threads != 1)}, as the backends)" if threads else "")
            + f", via {pk.get('via', '?')}")


def peak_of(device: str, probe_gflops: float | None, gemm_gflops: float | None) -> float | None:
    """The peak GEMM (the efficiency denominator): on the CPU the faster of the noise probe's
    best and the larger GEMM (both NumPy's BLAS, the run's threads); on a GPU the backend's
    device_matmul_peak figure (the probe runs on the CPU)."""
    if device != "cpu":
        return gemm_gflops or None
    got = [g for g in (probe_gflops, gemm_gflops) if g]
    return max(got) if got else None


def start_words(what: str, burst: dict[str, Any] | None, big: float | None, blas: str,
                probe_n: int, gemm_n: int, device: str = "cpu") -> str:
    """The machine's speed at the start of a run: the noise probe's burst, the larger GEMM
    (on a GPU: the device_matmul_peak hook's), and the peak GEMM so far (peak_of: what
    efficiencies are divided by, unless the run measures a faster GEMM later)."""
    s = burst or {}
    big_name = f"{gemm_n}x{gemm_n} GEMM" if device == "cpu" else f"{device} GEMM (device_matmul_peak)"
    if s.get("gflops"):
        out = (f"{what}: probe GEMM ({probe_n}x{probe_n}) {s['gflops']:.1f} GFLOP/s best, cv "
               f"{100 * (s.get('cv') or 0):.0f}% over {s.get('rounds')} rounds")
    else:
        out = f"{what}: no noise probe"
    if big:
        out += f"; {big_name} {big:.1f} GFLOP/s"
    peak = peak_of(device, s.get("gflops"), big)
    if peak:
        out += (f"; {PEAK_NAME} so far {peak:.1f} GFLOP/s (" + ("the faster; " if device == "cpu" else "")
                + "efficiencies are divided by the run's fastest)")
    return out + f" ({blas})"
