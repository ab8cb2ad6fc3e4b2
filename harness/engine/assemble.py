"""From measurements to the results document (schema v3): one cell's result from its rounds,
a workload's ratios from the rounds its cells shared, and the document's probe, peak, noise
and efficiency figures from the run's workloads."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from impls.config import flops_per_char

from . import explain, stats
from .bench import PEAK_N, Cell
from .participants import PROBE_N
from .scheduler import BackendData, ProbeState, Schedule, WorkloadData


def workload_id(cell: Cell) -> str:
    return f"{cell.preset}/{cell.mode}/B{cell.batch}xT{cell.seq_len}/{cell.device}/{cell.precision}"


def group_workloads(cells: list[Cell]) -> list[tuple[str, list[Cell]]]:
    """Cells grouped by workload (everything but the backend), in matrix order."""
    out: dict[str, list[Cell]] = {}
    for c in cells:
        out.setdefault(workload_id(c), []).append(c)
    return list(out.items())


def cell_result(cell: Cell, d: BackendData, sched: Schedule, seed: int = 0) -> dict[str, Any]:
    """The v2 result of one cell from its measured data."""
    res: dict[str, Any] = {"status": d.status, "error": d.error,
                           "first_step_s": d.first_step_s[0] if d.first_step_s else None,
                           "first_step_s_all": d.first_step_s,
                           "inner": d.inner[0] if d.inner else None, "kernel": d.kernel,
                           "samples": d.samples, "samples_s": [s["s"] for s in d.samples]}
    for k in ("peak_rss_bytes", "peak_device_bytes"):
        if k in d.released:
            res[k] = d.released[k]
    if d.released.get("kernel"):
        res["kernel"] = d.released["kernel"]
    if d.status != "ok":
        return res
    if not d.samples:
        res.update(status="error", error="no timed rounds")
        return res
    res.update(stats.cell_estimate(d.samples, min_clean=sched.min_clean, seed=seed))
    res["stats"] = stats.summarize(res["samples_s"])
    res["collapse_rounds"] = sum(bool(s.get("collapse")) for s in d.samples)
    est = res["estimate_s"]
    cps = cell.chars_per_call() / est
    res["chars_per_s"] = cps
    res["gflops"] = flops_per_char(cell.model, cell.mode) * cps / 1e9
    if cell.mode == "generate":
        res["us_per_char"] = 1e6 * est / cell.seq_len
    return res


def workload_ratios(cells: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each ok backend's time ratio to the fastest (by estimate), by the same estimator over
    the rounds both ran (paired by (process, round)): clean rounds when both cells are clean,
    every round (and the ratio marked noisy) when either is noisy, as their estimates are."""
    ok = {b: r for b, r in cells.items() if r.get("status") == "ok" and r.get("estimate_s")}
    if not ok:
        return {}
    fastest = min(ok, key=lambda b: ok[b]["estimate_s"])

    def rounds(r: dict[str, Any], clean: bool) -> dict[tuple[int, int], float]:
        return {(s["process"], s["round"]): s["s"] for s in r["samples"] if s["clean"] or not clean}

    out: dict[str, dict[str, Any]] = {}
    for b, r in ok.items():
        noisy = bool(r["noisy"] or ok[fastest]["noisy"])
        if b == fastest:
            out[b] = {"to": fastest, "ratio": 1.0, "lo": 1.0, "hi": 1.0,
                      "pairs": len(r["samples"]), "noisy": noisy}
            continue
        clean = not noisy and not stats.uses_every_round(stats.ESTIMATOR)
        pr = stats.paired_ratio(rounds(r, clean), rounds(ok[fastest], clean), seed=seed)
        if pr is None:
            continue
        out[b] = {"to": fastest, "ratio": pr[0], "lo": pr[1], "hi": pr[2], "pairs": pr[3], "noisy": noisy}
    return out


def workload_record(wid: str, parts: dict[str, tuple[Cell, str | None]], results: dict[str, dict[str, Any]],
                    wd: WorkloadData | None, processes: int, probe_best_s: float | None, *,
                    settle_s: float = 0.0, foreign: float | None = None, **extra: Any) -> dict[str, Any]:
    """A workload's journal record, {"workload": {...}, "cells": [...]}, built here alone: its
    participants (name -> (cell, variant)) and their results, and what the scheduler measured
    (`wd`; None: nothing, a workload lost on a cluster). `extra`: fields of where it ran."""
    c0 = next(iter(parts.values()))[0]
    wd = wd or WorkloadData({}, [], [])
    workload = {"id": wid, "mode": c0.mode, "preset": c0.preset, "batch": c0.batch,
                "seq_len": c0.seq_len, "device": c0.device, "precision": c0.precision,
                "backends": list(parts), "rounds": wd.rounds, "remeasured_rounds": wd.remeasured,
                "cut_short": wd.short, "settle_s": round(settle_s, 3),
                "foreign_cores": None if foreign is None else round(foreign, 3),
                "processes": processes, "order": wd.order, "probe_s": wd.probe_s,
                "probe_best_s": probe_best_s, "ratios": workload_ratios(results), **extra}
    return {"workload": workload,
            "cells": [{"cell": c.to_dict(), "variant": v, "workload": wid, "result": results[n]}
                      for n, (c, v) in parts.items()]}


def apply_peak(doc: dict[str, Any]) -> None:
    """Efficiency of every ok cell against the run's peak; above 100% is flagged."""
    peak = (doc.get("peak") or {}).get("gflops")
    for c in doc.get("cells", []):
        res = c["result"]
        if res.get("status") != "ok" or not res.get("gflops"):
            continue
        res["efficiency"] = res["gflops"] / peak if peak else None
        res["efficiency_flag"] = ("above 100%: measurement error"
                                  if res["efficiency"] is not None and res["efficiency"] > 1 else None)


def assemble(doc: dict[str, Any], records: list[dict[str, Any]], probe: ProbeState, blas: str,
              t_start: float, device: str) -> None:
    """The final document (schema v3) from the journal's records and the run's probe figures."""
    doc["workloads"] = [r["workload"] for r in records]
    doc["cells"] = [c for r in records for c in r["cells"]]
    rounds_s = [s for w in doc["workloads"] for s in w.get("probe_s", [])]
    probes = [s for s in rounds_s if s]
    flop = probe.flop
    seen = probes + ([probe.best_s] if probe.best_s else [])  # with the start/end bursts
    best_s = min(seen) if seen else None
    doc["probe"] = {"kind": "gemm", "n": PROBE_N, "blas": blas, "flop": flop, "rounds_s": rounds_s,
                    "best_gflops": flop / best_s / 1e9 if best_s else None,
                    "median_gflops": flop / float(np.median(probes)) / 1e9 if probes else None}
    big = doc.pop("_big_peak", None)
    bursts = [(doc.get("noise") or {}).get(k) or {} for k in ("start", "end")]
    cands = [v for v in (doc["probe"]["best_gflops"], *(b.get("gflops") for b in bursts)) if v]
    probe_best = max(cands) if cands else None  # the bursts' rounds are in best_s: the same figure
    peak = explain.peak_of(device, probe_best, big)
    if device == "cpu":
        doc["peak"] = {"gflops": peak, "via": f"numpy {blas}", "dtype": "float32", "probe_gflops": probe_best,
                       "probe_n": PROBE_N, "gemm_gflops": big, "gemm_n": PEAK_N, "threads": doc.get("threads")}
    else:
        doc["peak"] = {"gflops": peak, "via": "device_matmul_peak hook", "dtype": "float32"}
    collapse = sum(stats.collapses(probes)) + sum(c["result"].get("collapse_rounds", 0) for c in doc["cells"])
    frac, verdict = stats.noise_verdict(probes, best_s, collapse)
    probe_verdict = verdict  # before the neighbour count has its say (harness.engine.explain.verdict_words)
    foreign = [w["foreign_cores"] for w in doc["workloads"] if w.get("foreign_cores") is not None]
    busiest = max(foreign) if foreign else None
    if busiest is not None and busiest >= stats.FOREIGN_LIMIT:  # a neighbour inside the machine
        verdict = "contended" if busiest >= 2 * stats.FOREIGN_LIMIT else max(verdict, "noisy", key=explain.VERDICTS.index)
    spread = stats.round_spread([c["result"].get("stats") or {} for c in doc["cells"]
                                 if c["result"].get("status") == "ok"])
    doc.setdefault("noise", {}).update(contended_fraction=frac, collapse_rounds=collapse, verdict=verdict,
                                       probe_verdict=probe_verdict, foreign_cores_max=busiest,
                                       round_spread=spread)
    doc["noise"].setdefault("start", None)
    doc["noise"].setdefault("end", None)
    doc["estimator"] = stats.estimator_info()
    doc["wall_s"] = round(time.monotonic() - t_start + float(doc.get("wall_s") or 0), 1)
    doc["schema_version"] = 3
    apply_peak(doc)
