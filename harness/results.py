"""Results files: one JSON document per run, versioned, written atomically, never overwritten;
the machine and software they were measured on; loading them back (validated), and a
pandas loader that flattens one or many files into a tidy DataFrame (one row per cell)."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterable

from impls.case import write_new

from .envs import ROOT

SCHEMA = "lstmbench.results"
SCHEMA_VERSION = 1


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


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def new_document(**fields: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": now.isoformat(timespec="seconds"), "machine": machine_info(),
            "git": git_info(), **fields}


def default_path(out_dir: Path, doc: dict[str, Any]) -> Path:
    stamp = doc["created"].replace(":", "").replace("-", "").replace("+0000", "Z")
    name = f"{stamp}-{doc['matrix']['name']}-{doc['device']}.json"
    return out_dir / doc["machine"]["slug"] / name


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
    from .envs import UsageError
    p = out_dir
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: cannot write there ({p} is not a writable folder); "
                         "choose another folder")


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ResultsError(f"{p}: no such results file")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{p}: not valid JSON ({e}); the file is corrupt or truncated") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(f"{p}: not an lstmbench results file (no schema {SCHEMA!r})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ResultsError(f"{p}: results schema version {doc.get('schema_version')!r}; this lstmbench "
                           f"reads version {SCHEMA_VERSION} (re-run, or use the matching lstmbench)")
    if not isinstance(doc.get("cells"), list):
        raise ResultsError(f"{p}: has no list of cells")
    doc["_path"] = str(p)
    return doc


def _is_results_file(p: Path) -> bool:
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return True  # let load_results report what is wrong with it
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders searched recursively for results files (other JSON in a
    folder, such as a `check --json` report, is passed over)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.json")
                           if not q.name.startswith(".") and _is_results_file(q))
            if not found:
                raise ResultsError(f"{p}: folder holds no results files")
            out.extend(found)
        else:
            out.append(p)
    return out


def cell_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per cell: sizes, status, stats and derived numbers (no raw samples)."""
    rows = []
    for c in doc["cells"]:
        cell, res = c["cell"], c.get("result", {})
        m = cell["model"]
        stats = res.get("stats", {})
        rows.append({
            "file": doc.get("_path"), "run": doc["created"], "machine": doc["machine"]["slug"],
            "device": cell["device"], "precision": cell["precision"], "backend": cell["backend"],
            "mode": cell["mode"], "preset": cell["preset"], "batch": cell["batch"],
            "seq_len": cell["seq_len"], "hidden_size": m["hidden_size"],
            "num_layers": m["num_layers"], "vocab_size": m["vocab_size"], "input": m["input"],
            "status": res.get("status"), "error": res.get("error"),
            "chars_per_s": res.get("chars_per_s"), "us_per_char": res.get("us_per_char"),
            "median_s": stats.get("median"), "iqr_s": stats.get("iqr"), "min_s": stats.get("min"),
            "mean_s": stats.get("mean"), "stddev_s": stats.get("stddev"), "rounds": stats.get("rounds"),
            "first_step_s": res.get("first_step_s"), "gflops": res.get("gflops"),
            "efficiency": res.get("efficiency"), "peak_rss_bytes": res.get("peak_rss_bytes"),
            "peak_device_bytes": res.get("peak_device_bytes"),
        })
    return rows


def load_dataframe(paths: Iterable[str | os.PathLike[str]]) -> Any:
    """A tidy pandas DataFrame of every cell in the given result files or folders."""
    import pandas as pd
    rows: list[dict[str, Any]] = []
    for p in expand_paths(paths):
        rows.extend(cell_rows(load_results(p)))
    return pd.DataFrame(rows)
