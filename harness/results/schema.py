"""The results schema: what a results file of `lstmbench run` holds, version by version, and
reading one back (checked field by field, versions 1 and 2 migrated to version 3's shape). Also
the schemas of the other documents the harness writes and reads: a quality run's
(`run --matrix quality`) and a `check --json` report's.

Versions: 1, one process and no noise probe (samples_s); 2, the interleaved engine (samples
with process, round and probe time; workloads, probe, noise, peak, estimator); 3, variants (the
run's "variants", each cell's "variant")."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

SCHEMA = "lstmbench.results"
SCHEMA_VERSION = 3  # 3: variants (harness.envs.variants): the run's "variants", each cell's "variant"
READABLE_VERSIONS = (1, 2, 3)  # older versions are migrated on read (migrate_v1, migrate_v2)
QUALITY_SCHEMA = "lstmbench.quality"  # a quality run's document (harness.training.quality)
QUALITY_VERSIONS = (1,)  # the quality versions this code writes (the last) and reads
CHECK_QUANTITIES = ("forward", "loss", "grads", "steps", "generated")  # a check report's columns


class ResultsError(Exception):
    """A results file is missing, unreadable, or of another schema."""


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- field types ------------------------------------------------------------------------
# Every field that compare, report and load_dataframe read from a results file (and report
# from a `check --json` report), with its JSON type, checked once on load (load_results,
# load_check_report) so that an edited or corrupt file is one line naming the file and the
# field, never a TypeError deep in a reader. A named field may be absent or null; otherwise it
# has its type. A spec is a _Type, {key: spec} (an object; "*" for every other key), [spec]
# (a list of spec) or a tuple of specs (one per container kind: a list or an object). Items
# of a list and values under "*" are never null, except in a list of numbers (a round
# without a probe time is null).

class _Type:
    """A JSON scalar type: its name in messages, and its test."""

    def __init__(self, name: str, test: Callable[[Any], bool]) -> None:
        self.name, self.test = name, test


_NUMBER = _Type("a number", is_number)
_INT = _Type("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
_STR = _Type("a string", lambda v: isinstance(v, str))
_BOOL = _Type("true or false", lambda v: isinstance(v, bool))

_BURST = {"gflops": _NUMBER, "median_gflops": _NUMBER, "cv": _NUMBER, "rounds": _INT}
_CELL = {"backend": _STR, "mode": _STR, "preset": _STR, "batch": _INT, "seq_len": _INT,
         "device": _STR, "precision": _STR, "seed": _INT,
         "model": {"vocab_size": _INT, "hidden_size": _INT, "num_layers": _INT, "input": _STR,
                   "embed_size": _INT}}
_RESULT = {"status": _STR, "error": _STR, "first_step_s": _NUMBER, "first_step_s_all": [_NUMBER],
           "inner": _INT, "kernel": _STR, "estimate_s": _NUMBER, "ci_s": [_NUMBER],
           "clean_rounds": _INT, "noisy": _BOOL, "stats": {"*": _NUMBER}, "collapse_rounds": _INT,
           "chars_per_s": _NUMBER, "us_per_char": _NUMBER, "gflops": _NUMBER, "efficiency": _NUMBER,
           "efficiency_flag": _STR, "peak_rss_bytes": _INT, "peak_device_bytes": _INT}
RESULTS_FIELDS: dict[str, Any] = {
    "created": _STR, "device": _STR, "precision": _STR, "threads": _INT, "processes": _INT,
    "omp_wait_policy": _STR, "seed": _INT, "python": _STR, "wall_s": _NUMBER, "interrupted": _BOOL,
    "command": [_STR],
    "machine": {"hostname": _STR, "cpu": _STR, "cores": _INT, "memory_bytes": _INT, "os": _STR,
                "arch": _STR, "slug": _STR, "gpu": {"name": _STR, "driver": _STR, "memory": _STR}},
    "git": {"commit": _STR, "dirty": _BOOL},
    "matrix": {"name": _STR, "min_time": _NUMBER, "min_rounds": _INT, "max_rounds": _INT},
    "backends": {"*": {"available": _BOOL, "version": _STR, "kernel": _STR, "executable": _STR,
                       "reason": _STR}},
    "probe": {"kind": _STR, "n": _INT, "blas": _STR, "flop": _NUMBER, "rounds_s": [_NUMBER],
              "best_gflops": _NUMBER, "median_gflops": _NUMBER},
    "peak": {"gflops": _NUMBER, "via": _STR, "dtype": _STR, "error": _STR},
    "noise": {"start": _BURST, "end": _BURST, "contended_fraction": _NUMBER, "collapse_rounds": _INT,
              "verdict": _STR, "foreign_cores_max": _NUMBER, "round_spread": {"*": _NUMBER}},
    "estimator": {"name": _STR},
    "workloads": [{"id": _STR, "mode": _STR, "preset": _STR, "batch": _INT, "seq_len": _INT,
                   "probe_s": [_NUMBER], "probe_best_s": _NUMBER, "foreign_cores": _NUMBER,
                   "ratios": {"*": {"to": _STR, "ratio": _NUMBER, "lo": _NUMBER, "hi": _NUMBER,
                                    "pairs": _INT, "noisy": _BOOL}}}],
    "variants": {"*": {"text": _STR, "python": _STR, "pythons": {"*": _STR}, "src": _STR,
                       "env": {"*": _STR}, "threads": _INT,
                       "source": {"kind": _STR, "root": _STR, "commit": _STR, "dirty": _BOOL, "rev": _STR},
                       "backends": {"*": {"available": _BOOL, "version": _STR, "kernel": _STR,
                                          "executable": _STR, "reason": _STR}}}},
    "cells": [{"cell": _CELL, "workload": _STR, "variant": _STR, "result": _RESULT}],
}
_CHECK_ROW = {"key": _STR, "quantity": _STR, "rel": _NUMBER, "max_abs": _NUMBER, "tol": _NUMBER,
              "status": _STR, "note": _STR}
CHECK_FIELDS: dict[str, Any] = {
    "precision": _STR, "device": _STR,
    "backends": {"*": {"status": _STR, "reason": _STR,
                       "cases": {"*": ([_CHECK_ROW], {"error": _STR})}}},
}


def _kind(spec: Any) -> str:
    if isinstance(spec, _Type):
        return spec.name
    if isinstance(spec, tuple):
        return " or ".join(_kind(s) for s in spec)
    return "a list" if isinstance(spec, list) else "an object"


def _check_field(v: Any, spec: Any, where: str, nullable: bool = True) -> str | None:
    """None when `v` (at `where`) has the type `spec` says, else what is wrong, in words."""
    if v is None:
        return None if nullable else f"{where} is null, not {_kind(spec)}"
    want = spec
    if isinstance(spec, tuple):  # the alternative of v's container kind
        spec = next((s for s in spec if isinstance(v, list) == isinstance(s, list)
                     and isinstance(v, dict) == isinstance(s, dict)), None)
    if spec is None:
        ok = False
    elif isinstance(spec, _Type):
        ok = spec.test(v)
    else:
        ok = isinstance(v, list if isinstance(spec, list) else dict)
    if not ok:
        shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
        return f"{where} is {shown}, not {_kind(want)}"
    if isinstance(spec, list):
        for i, x in enumerate(v):
            bad = _check_field(x, spec[0], f"{where}[{i}]", nullable=spec[0] is _NUMBER)
            if bad:
                return bad
    elif isinstance(spec, dict):
        for k, x in v.items():
            sub = spec.get(k, spec.get("*"))
            bad = (_check_field(x, sub, f"{where}.{k}" if where else str(k), nullable=k in spec)
                   if sub is not None else None)
            if bad:
                return bad
    return None


def check_fields(doc: dict[str, Any], fields: dict[str, Any], path: Any) -> None:
    """ResultsError naming `path` and the first field of `doc` whose type is not as `fields`
    (RESULTS_FIELDS, CHECK_FIELDS) says."""
    bad = _check_field(doc, fields, "")
    if bad:
        raise ResultsError(f"{path}: {bad}; the file is corrupt or was edited (re-run to get a valid one)")


def load_check_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A `lstmbench check --json` report, read and checked (CHECK_FIELDS); ResultsError, one
    line naming the file (and the field), when it cannot be used."""
    p = Path(path)
    if not p.is_file():  # a FIFO would block the read; a folder is no report
        raise ResultsError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    try:
        rep = json.loads(p.read_text())
    except OSError as e:
        raise ResultsError(f"{p}: cannot read the check report ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:
        raise ResultsError(f"{p}: not a `lstmbench check --json` report ({type(e).__name__})") from None
    if not isinstance(rep, dict) or not isinstance(rep.get("backends"), dict):
        raise ResultsError(f"{p}: not a `lstmbench check --json` report (no backends object)")
    check_fields(rep, CHECK_FIELDS, p)
    return rep


def check_worst(entry: dict[str, Any], quantity: str) -> tuple[float, str]:
    """A `check --json` backend entry's worst relative error over its cases for `quantity`, and
    the worst status (FAIL over deviation over ok): NaN, or no number, is the worst error
    (max() would drop it); a case that did not run makes it (NaN, "error"); a quantity no case
    compared is "none", never "ok". `check`'s table and the report's equivalence table alike."""
    worst, status, seen = 0.0, "ok", False
    rank = {"ok": 0, "deviation": 1, "FAIL": 2}
    for rows in (entry.get("cases") or {}).values():
        if isinstance(rows, dict):
            return math.nan, "error"
        for r in rows:
            if r.get("quantity") != quantity:
                continue
            seen = True
            rel = float(r["rel"]) if is_number(r.get("rel")) else math.nan
            worst = worst if worst != worst else rel if rel != rel else max(worst, rel)  # x != x: NaN
            if rank.get(r.get("status"), 2) > rank.get(status, 2):
                status = str(r.get("status"))
    return (worst, status) if seen else (math.nan, "none")


def check_tolerance(entry: dict[str, Any], quantity: str) -> float | None:
    """The tolerance a `check --json` backend entry's cases held `quantity` to (the largest)."""
    tols = [float(r["tol"]) for rows in (entry.get("cases") or {}).values() if isinstance(rows, list)
            for r in rows if r.get("quantity") == quantity and is_number(r.get("tol"))]
    return max(tols) if tols else None


def validate_samples(res: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A cell result's samples as v2 sample dicts (v1's samples_s become process 0, round i,
    clean), every time checked: a sample that is not a number, or is zero, negative or
    infinite, is a ResultsError naming `where` (file and cell) and the value. NaN is kept:
    it is a failed measurement (status "nan"), which the caller reports as such."""
    raw = res.get("samples")
    if raw is None or raw == []:
        flat = res.get("samples_s")
        if flat is None:
            return []
        if not isinstance(flat, list):
            raise ResultsError(f"{where}: samples_s is {type(flat).__name__}, not a list of seconds; "
                               "the file is corrupt or was edited")
        raw = [{"s": v, "process": 0, "round": j, "probe_s": None, "clean": True} for j, v in enumerate(flat)]
    if not isinstance(raw, list):
        raise ResultsError(f"{where}: samples is {type(raw).__name__}, not a list; the file is corrupt or was edited")
    out = []
    for j, smp in enumerate(raw):
        v = smp.get("s") if isinstance(smp, dict) else smp
        if not is_number(v):
            raise ResultsError(f"{where}: sample {j} is {v!r}, not a number of seconds; "
                               "the file is corrupt or was edited (re-run the cell)")
        v = float(v)
        if not math.isnan(v) and not (math.isfinite(v) and v > 0):
            raise ResultsError(f"{where}: sample {j} is {v!r}; times must be finite and above zero, "
                               "so the file is corrupt or was edited (re-run the cell)")
        d = smp if isinstance(smp, dict) else {}
        pr = d.get("probe_s")
        proc = d.get("process", 0)
        rnd = d.get("round", j)
        out.append({"s": v, "process": int(proc) if is_number(proc) else 0,
                    "round": int(rnd) if is_number(rnd) else j,
                    "probe_s": float(pr) if is_number(pr) and math.isfinite(pr) and pr > 0 else None,
                    "clean": d.get("clean", True) is not False})
    return out


def migrate_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A version 1 document as version 2 (in place): samples_s -> samples (process 0, round i,
    clean), estimate_s = the median, workloads = [], probe/noise/peak/estimator None.
    schema_version is left at 1 and "migrated": True is added."""
    for c in doc.get("cells") or []:
        res = c.get("result") if isinstance(c, dict) else None
        if not isinstance(res, dict):
            continue
        flat = res.get("samples_s")
        if "samples" not in res and isinstance(flat, list):
            res["samples"] = [{"s": v, "process": 0, "round": j, "probe_s": None, "clean": True}
                              for j, v in enumerate(flat)]
        stats = res.get("stats") if isinstance(res.get("stats"), dict) else {}
        if "estimate_s" not in res and is_number(stats.get("median")):
            res["estimate_s"] = stats["median"]
        if "clean_rounds" not in res and isinstance(flat, list):
            res["clean_rounds"] = len(flat)
        res.setdefault("noisy", False)
    doc.setdefault("workloads", [])
    for key in ("probe", "noise", "peak", "estimator", "omp_wait_policy"):
        doc.setdefault(key, None)
    doc.setdefault("processes", 1)
    doc.setdefault("interrupted", False)
    # schema_version stays the file's own (1): it says what the file holds (no noise probe,
    # one process), which readers report; the fields are v2's shape all the same
    doc["migrated"] = True
    return doc


def migrate_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """A version 1 or 2 document in version 3's shape (in place): no variants (`"variants":
    None`, every cell's `"variant": None`). schema_version stays the file's own, as in
    migrate_v1, and "migrated": True is added."""
    doc.setdefault("variants", None)
    for c in doc.get("cells") or []:
        if isinstance(c, dict):
            c.setdefault("variant", None)
    doc["migrated"] = True
    return doc


BASELINES_SCHEMA = "lstmbench.baselines"  # harness.commands.baselines' documents
BASELINES_READABLE = (2, 3)  # 3 adds the workloads' ratios, the peak GEMM and efficiencies


def baselines_as_results(doc: dict[str, Any], p: Path) -> dict[str, Any]:
    """A `lstmbench baselines` document as a results v3 document, so that report, compare and
    load_dataframe read its backends as a run's cells: one workload per (preset, mode), its
    backend participants the cells (the hand-written baselines, no backend of any framework,
    are left out: their ratios to each backend are the document's `rows`), the workload's
    stored ratios to its fastest backend (version 3; version 2 has none: ratios of the
    estimates), the probe's rounds, peak GEMM and noise as stored."""
    version = doc.get("schema_version")
    if version not in BASELINES_READABLE or isinstance(version, bool):
        raise ResultsError(f"{p}: baselines schema version {version!r}; this lstmbench reads versions "
                           f"{', '.join(map(str, BASELINES_READABLE))}")
    ws = doc.get("workloads")
    if not isinstance(ws, list) or not all(isinstance(w, dict) and isinstance(w.get("participants"), dict)
                                          for w in ws):
        raise ResultsError(f"{p}: a baselines document without workloads of participants; the file "
                           "is corrupt or was edited")
    baselines = doc.get("baselines") if isinstance(doc.get("baselines"), dict) else {}
    cells, workloads, probe = [], [], []
    for w in ws:
        for name, part in w["participants"].items():
            if name in baselines or not isinstance(part, dict):
                continue
            cells.append({"cell": part.get("cell"), "workload": w.get("id"), "variant": None,
                          "result": part.get("result")})
        rs = [v for v in w.get("probe_s") or []]
        probe += rs
        workloads.append({k: w.get(k) for k in ("id", "mode", "preset", "batch", "seq_len", "rounds",
                                               "order", "probe_s", "probe_best_s", "ratios")})
    flop = 2 * 256 ** 3  # the noise probe's GEMM (harness.engine.participants.PROBE_N)
    best = min((v for v in probe if isinstance(v, (int, float)) and v > 0), default=None)
    noise = doc.get("noise") if isinstance(doc.get("noise"), dict) else {}
    return {"schema": SCHEMA, "schema_version": 3, "converted_from": BASELINES_SCHEMA,
            **{k: doc.get(k) for k in ("created", "machine", "git", "command", "device", "threads",
                                       "seed", "wall_s", "backends", "peak", "estimator")},
            "precision": "float32", "processes": (doc.get("schedule") or {}).get("processes"),
            "matrix": {"name": "baselines"}, "variants": None,
            "probe": {"kind": "gemm", "n": 256, "flop": flop, "rounds_s": probe,
                      "best_gflops": flop / best / 1e9 if best else None},
            "noise": {"contended_fraction": noise.get("contended_fraction"),
                      "verdict": noise.get("verdict")},
            "workloads": workloads, "cells": cells}


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check one results file (version 1 is migrated to 2; a `lstmbench baselines`
    document is read as a run of its backends: baselines_as_results); ResultsError, one line
    naming the file (and the cell), when it cannot be used."""
    p = Path(path)
    if p.is_dir():
        raise ResultsError(f"{p} is a folder, not a results file")
    if not p.is_file():  # never opened: reading a FIFO would block
        raise ResultsError(f"{p}: no such results file" if not os.path.lexists(p) else
                           f"{p}: not a regular file (a FIFO, socket, device or broken link); "
                           "give a results file")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{p}: not valid JSON ({e}); the file is corrupt or truncated") from None
    except (OSError, RecursionError) as e:
        raise ResultsError(f"{p}: cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(doc, dict) and doc.get("schema") == BASELINES_SCHEMA:
        doc = baselines_as_results(doc, p)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(f"{p}: not an lstmbench results file (no schema {SCHEMA!r})")
    version = doc.get("schema_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ResultsError(f"{p}: results schema version {version!r}; this lstmbench reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))} (use the lstmbench that wrote it, "
                           "or re-run)")
    if not isinstance(doc.get("cells"), list):
        raise ResultsError(f"{p}: has no list of cells")
    machine = doc.get("machine")
    if not isinstance(machine, dict):
        raise ResultsError(f"{p}: 'machine' is {machine!r}, not a machine record; the file is "
                           "corrupt or was edited (re-run to get a valid one)")
    if not isinstance(doc.get("created"), str):
        raise ResultsError(f"{p}: 'created' is {doc.get('created')!r}, not a time stamp; the file "
                           "is corrupt or was edited")
    for i, c in enumerate(doc["cells"]):
        cell = c.get("cell") if isinstance(c, dict) else None
        if not isinstance(cell, dict) or not isinstance(cell.get("model"), dict):
            raise ResultsError(f"{p}: cell {i} is malformed (no cell record with a model); "
                               "the file is corrupt or was edited")
        res = c.get("result")
        if res is None:
            c["result"] = res = {}
        if not isinstance(res, dict):
            raise ResultsError(f"{p}: cell {i} has a result that is {type(res).__name__}, not an object")
        validate_samples(res, f"{p}: cell {i} ({cell.get('backend', '?')} {cell.get('mode', '?')})")
    check_fields(doc, RESULTS_FIELDS, p)
    if version == 1:
        migrate_v1(doc)
    if version in (1, 2):
        migrate_v2(doc)
    _check_variants(doc, p)
    doc["_path"] = str(p)
    return doc


def _check_variants(doc: dict[str, Any], p: Path) -> None:
    """Every cell's variant is null or one the document defines."""
    vs = doc.get("variants")  # its type, and each cell's variant's, RESULTS_FIELDS checked
    for i, c in enumerate(doc["cells"]):
        v = c.get("variant")
        if v is not None and (not isinstance(v, str) or v not in (vs or {})):
            raise ResultsError(f"{p}: cell {i} names variant {v!r}, which the file does not define; "
                               "the file is corrupt or was edited")
