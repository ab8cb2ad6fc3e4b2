"""Results files: one JSON document per run, versioned, written atomically, never overwritten;
the machine and software they were measured on; loading them back (validated; version 1 files
migrated to version 2 on read), and a pandas loader that flattens one or many files into a
tidy DataFrame (one row per cell)."""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from impls.case import write_new

from ..engine.envs import ROOT

SCHEMA = "lstmbench.results"
SCHEMA_VERSION = 3  # 3: variants (harness.variants): the run's "variants", each cell's "variant"
READABLE_VERSIONS = (1, 2, 3)  # older versions are migrated on read (migrate_v1, migrate_v2)


class ResultsError(Exception):
    """A results file is missing, unreadable, or of another schema."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gpu() -> dict[str, str] | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode or not r.stdout.strip():
        return None
    name, driver, mem = [s.strip() for s in r.stdout.splitlines()[0].split(",")]
    return {"name": name, "driver": driver, "memory": mem}


def machine_info() -> dict[str, Any]:
    cpu = _cpu_model()
    gpu = _gpu()
    return {"hostname": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_bytes": _mem_bytes(), "os": platform.platform(), "arch": platform.machine(),
            "gpu": gpu, "slug": machine_slug(cpu, os.cpu_count() or 0, gpu)}


def machine_slug(cpu: str, cores: int, gpu: dict[str, str] | None) -> str:
    """A stable folder name for a kind of machine (container hostnames are random)."""
    if os.environ.get("LSTMBENCH_MACHINE"):
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", os.environ["LSTMBENCH_MACHINE"])
    words = re.sub(r"\(R\)|\(TM\)|CPU|Processor|[@].*$", "", cpu)
    base = f"{re.sub(r'[^a-z0-9]+', '-', words.lower()).strip('-')[:40]}-{cores}c"
    if gpu:
        base += "-" + re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-")
    return base


def _code_checkout() -> Path:
    """Where to ask git: the checkout in the working directory, else the code's folder."""
    from ..engine.envs import project_root
    return project_root() or ROOT


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=_code_checkout(), capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def new_document(**fields: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": now.isoformat(timespec="seconds"), "machine": machine_info(),
            "git": git_info(), **fields}


def safe_name(text: Any, fallback: str = "run") -> str:
    """`text` as one harmless path component: no separators, no "..", no leading dot."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(text)).strip(".-")
    return name[:80] or fallback


def default_path(out_dir: Path, doc: dict[str, Any]) -> Path:
    """out_dir/<machine slug>/<time>-<matrix>-<device>.json; every part sanitised, so a matrix
    named "../../x" stays inside out_dir."""
    stamp = str(doc["created"]).replace(":", "").replace("-", "").replace("+0000", "Z")
    matrix = doc.get("matrix")
    mname = matrix.get("name") if isinstance(matrix, dict) else matrix
    name = f"{safe_name(stamp, 'now')}-{safe_name(mname, 'matrix')}-{safe_name(doc.get('device'), 'cpu')}.json"
    machine = doc.get("machine")
    slug = safe_name(machine.get("slug") if isinstance(machine, dict) else None, "machine")
    path = Path(out_dir) / slug / name
    if Path(os.path.abspath(path)).parent.parent != Path(os.path.abspath(out_dir)):  # belt and braces
        raise ResultsError(f"results path {path} would fall outside {out_dir}")
    return path


def write_results(doc: dict[str, Any], path: Path) -> Path:
    """Atomic, and never over an existing file: a clash gets a numbered sibling name."""
    data = json.dumps(doc, indent=1, sort_keys=False).encode()
    for i in range(1000):
        cand = path if i == 0 else path.with_name(f"{path.stem}.{i}{path.suffix}")
        try:
            return write_new(cand, lambda f: f.write(data))
        except FileExistsError:
            continue
    raise ResultsError(f"could not find a free name beside {path}")


def check_writable(out_dir: Path) -> None:
    """Fail early, before any measurement, when results could not be stored."""
    from ..engine.envs import UsageError
    p = out_dir
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: cannot write there ({p} is not a writable folder); "
                         "choose another folder")


def _num(v: Any) -> bool:
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


_NUMBER = _Type("a number", _num)
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
        if not _num(v):
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
        out.append({"s": v, "process": int(proc) if _num(proc) else 0,
                    "round": int(rnd) if _num(rnd) else j,
                    "probe_s": float(pr) if _num(pr) and math.isfinite(pr) and pr > 0 else None,
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
        if "estimate_s" not in res and _num(stats.get("median")):
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


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check one results file (version 1 is migrated to 2); ResultsError, one line
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


def _is_results_file(p: Path) -> bool:
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return True  # let load_results report what is wrong with it
    # other lstmbench documents (a quality run has backends, no cells) are passed over too
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA and "cells" in doc


def _regular(q: Path) -> bool:
    """Whether a folder's entry `q` is a regular file (through links); one that is neither
    that nor a folder (a FIFO, which would block the read, a socket, a device, a broken link)
    is passed over with a note on stderr."""
    if q.is_file():
        return True
    if not q.is_dir():
        print(f"note: {q}: not a regular file (a FIFO, socket, device or broken link); passed over",
              file=sys.stderr)
    return False


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders searched recursively for results files (other JSON in a
    folder, such as a `check --json` report, is passed over, and so is whatever is not a
    regular file)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.json")
                           if not q.name.startswith(".") and _regular(q) and _is_results_file(q))
            if not found:
                raise ResultsError(f"{p}: folder holds no results files")
            out.extend(found)
        else:
            out.append(p)
    return out


def _f(v: Any) -> float | None:
    """A finite number, or None (a row never carries a string or an infinity)."""
    return float(v) if _num(v) and math.isfinite(v) else None


def cell_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per cell: sizes, status, the estimate and its interval, stats and derived
    numbers (no raw samples). chars_per_s follows estimate_s (v2's headline) where present."""
    rows = []
    machine = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
    for c in doc["cells"]:
        cell, res = c["cell"], c.get("result") or {}
        m = cell.get("model") or {}
        stats = res.get("stats") if isinstance(res.get("stats"), dict) else {}
        ci = res.get("ci_s") if isinstance(res.get("ci_s"), list) and len(res["ci_s"]) == 2 else [None, None]
        est = _f(res.get("estimate_s"))
        cps = _f(res.get("chars_per_s"))
        B, T = cell.get("batch"), cell.get("seq_len")
        if est and est > 0 and _num(B) and _num(T) and cell.get("mode") != "generate":
            cps = B * T / est
        rows.append({
            "file": doc.get("_path"), "run": doc.get("created"), "machine": machine.get("slug"),
            "device": cell.get("device"), "precision": cell.get("precision"), "backend": cell.get("backend"),
            "mode": cell.get("mode"), "preset": cell.get("preset"), "batch": B, "seq_len": T,
            "hidden_size": m.get("hidden_size"), "num_layers": m.get("num_layers"),
            "vocab_size": m.get("vocab_size"), "input": m.get("input"),
            "workload": c.get("workload"), "variant": c.get("variant"),
            "threads": variant_threads(doc, c.get("variant")),
            "status": res.get("status"), "error": res.get("error"),
            "chars_per_s": cps, "us_per_char": _f(res.get("us_per_char")),
            "estimate_s": est, "ci_lo_s": _f(ci[0]), "ci_hi_s": _f(ci[1]),
            "clean_rounds": res.get("clean_rounds") if _num(res.get("clean_rounds")) else None,
            "noisy": bool(res.get("noisy")) or res.get("status") == "noisy",
            "median_s": _f(stats.get("median")), "iqr_s": _f(stats.get("iqr")), "min_s": _f(stats.get("min")),
            "mean_s": _f(stats.get("mean")), "stddev_s": _f(stats.get("stddev")), "rounds": stats.get("rounds"),
            "first_step_s": _f(res.get("first_step_s")), "gflops": _f(res.get("gflops")),
            "efficiency": _f(res.get("efficiency")), "efficiency_flag": res.get("efficiency_flag"),
            "peak_rss_bytes": res.get("peak_rss_bytes"), "peak_device_bytes": res.get("peak_device_bytes"),
            "kernel": res.get("kernel"), "schema_version": doc.get("schema_version"),
        })
    return rows


def variant_threads(doc: dict[str, Any], variant: str | None) -> Any:
    """The threads a cell ran with: its variant's threads= where it set one, else the run's."""
    v = (doc.get("variants") or {}).get(variant or "") if variant else None
    return (v or {}).get("threads") or doc.get("threads")


def load_dataframe(paths: Iterable[str | os.PathLike[str]]) -> Any:
    """A tidy pandas DataFrame of every cell in the given result files or folders."""
    import pandas as pd
    rows: list[dict[str, Any]] = []
    for p in expand_paths(paths):
        rows.extend(cell_rows(load_results(p)))
    return pd.DataFrame(rows)
