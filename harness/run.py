"""`lstmbench run`: the throughput matrix. Each backend runs in a worker process of its own
(in its own environment); a cell that crashes, hangs, gives NaN or runs out of memory is
recorded with that status and the run goes on with a fresh worker. Ctrl-C stops the run and
keeps every finished cell. The results file is written once, atomically, at the end."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from impls import registry

from .bench import Cell
from .envs import interpreter_for
from .matrix import Matrix
from .pool import Worker, WorkerFailed
from .results import check_writable, default_path, new_document, write_results
from .stats import summarize


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


class _Workers:
    """One live worker per backend, started on first use and after a failure."""

    def __init__(self, overrides: dict[str, str], threads: int | None) -> None:
        self.overrides, self.threads = overrides, threads
        self.live: dict[str, Worker] = {}

    def get(self, backend: str) -> Worker:
        if backend not in self.live:
            self.live[backend] = Worker(interpreter_for(backend, self.overrides), self.threads)
        return self.live[backend]

    def drop(self, backend: str) -> None:
        w = self.live.pop(backend, None)
        if w:
            w.kill()
            w.close()

    def close(self) -> None:
        for b in list(self.live):
            self.live.pop(b).close()


def _probe(workers: _Workers, backends: list[str], device: str, threads: int | None,
           log: Callable[[str], None]) -> dict[str, Any]:
    """Availability, versions and kernel paths, asked of each backend's own worker."""
    info: dict[str, Any] = {}
    for b in backends:
        try:
            w = workers.get(b)
            ans = w.request({"op": "info", "backends": [b], "threads": threads, "device": device},
                            timeout=300)
            entry = ans["backends"][b] if ans.get("ok") else {"available": False, "reason": ans.get("error")}
            entry.update(python=ans.get("python"), executable=ans.get("executable"),
                         numpy=ans.get("numpy"))
        except (registry.BackendError, WorkerFailed) as e:
            entry = {"available": False, "reason": str(e)}
        if not entry.get("available"):
            workers.drop(b)
            log(f"  {b}: unavailable: {entry.get('reason')}")
        else:
            log(f"  {b}: {entry.get('version', '?')} ({entry.get('kernel', '?')})")
        info[b] = entry
    return info


def _peak(workers: _Workers, backends: list[str], info: dict[str, Any], device: str) -> dict[str, Any]:
    """The matrix-multiply peak, measured on this device now, in a worker like the cells."""
    if device == "cpu":
        backend, via = "numpy-f32", "numpy"
    else:
        gpu = [b for b in backends if info.get(b, {}).get("available")
               and registry.get_spec(b).framework in ("torch", "jax")]
        if not gpu:
            return {"gflops": None, "via": None, "error": "no torch or jax backend to measure with"}
        backend, via = gpu[0], registry.get_spec(gpu[0]).framework
    # the matrix's own worker for that backend, or a short-lived one in this interpreter
    owned = backend not in backends
    w = Worker(sys.executable, workers.threads) if owned else workers.get(backend)
    try:
        ans = w.request({"op": "peak", "device": device, "backend": backend}, timeout=300)
        return {"gflops": ans.get("gflops"), "via": via, "dtype": "float32", "error": ans.get("error")}
    except WorkerFailed as e:
        return {"gflops": None, "via": via, "error": str(e)}
    finally:
        if owned:
            w.close()


def run_matrix(matrix: Matrix, backends: list[str], *, device: str, precision: str,
               threads: int | None, overrides: dict[str, str], out_dir: Path,
               command: list[str], log: Callable[[str], None] = print) -> Path:
    check_writable(out_dir)
    cells = matrix.cells(backends, device, precision)
    workers = _Workers(overrides, threads)
    log(f"matrix {matrix.name}: {len(cells)} cells, {len(backends)} backends, device {device}, "
        f"precision {precision}, threads {threads}")
    doc: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        log("backends:")
        info = _probe(workers, backends, device, threads, log)
        peak = _peak(workers, backends, info, device)
        log(f"matrix-multiply peak: {peak['gflops'] and round(peak['gflops'], 1)} GFLOP/s float32 ({peak['via']})")
        doc = new_document(command=command, matrix=matrix.to_dict(), device=device,
                           precision=precision, threads=threads, backends=info, peak=peak,
                           python=sys.version.split()[0], cells=[])
        done_time = 0.0
        for i, cell in enumerate(cells, 1):
            t0 = time.monotonic()
            elapsed = t0 - t_start
            eta = done_time / (i - 1) * (len(cells) - i + 1) if i > 1 else None
            log(f"[{i}/{len(cells)}] {cell.label():44} elapsed {_fmt_s(elapsed)}"
                + (f", ~{_fmt_s(eta)} left" if eta is not None else ""))
            result = _run_cell(workers, cell, info, matrix, threads, peak)
            doc["cells"].append({"cell": cell.to_dict(), "result": result})
            done_time += time.monotonic() - t0
            log("      " + _describe(result))
    except KeyboardInterrupt:
        log(f"interrupted: keeping {len(doc.get('cells', []))} finished cells")
        if doc:
            doc["interrupted"] = True
    finally:
        workers.close()
    if not doc:
        raise KeyboardInterrupt
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    path = write_results(doc, default_path(out_dir, doc))
    log("")
    log(summary_table(doc))
    log(f"\nresults: {path}")
    return path


def _run_cell(workers: _Workers, cell: Cell, info: dict[str, Any], matrix: Matrix,
              threads: int | None, peak: dict[str, Any]) -> dict[str, Any]:
    if not info.get(cell.backend, {}).get("available"):
        return {"status": "unavailable", "error": info.get(cell.backend, {}).get("reason")}
    try:
        w = workers.get(cell.backend)
        ans = w.request({"op": "cell", "cell": cell.to_dict(), "threads": threads,
                         "min_time": matrix.min_time, "min_rounds": matrix.min_rounds,
                         "max_rounds": matrix.max_rounds},
                        timeout=matrix.timeout)
    except WorkerFailed as e:
        workers.drop(cell.backend)
        return {"status": e.kind, "error": str(e)}
    if not ans.get("ok"):
        err = ans.get("error", "")
        oom = "MemoryError" in err or "out of memory" in err.lower() or "OOM" in err
        return {"status": "oom" if oom else "error", "error": err}
    res = ans["result"]
    if res.get("samples_s"):
        res["stats"] = summarize(res["samples_s"])
        if peak.get("gflops") and res.get("gflops"):
            res["efficiency"] = res["gflops"] / peak["gflops"]
    return res


def _describe(res: dict[str, Any]) -> str:
    if res.get("status") != "ok":
        return f"{res.get('status')}: {res.get('error')}"
    s = res["stats"]
    extra = f", {res['us_per_char']:.1f} us/char" if "us_per_char" in res else ""
    return (f"{res['chars_per_s']:,.0f} chars/s (median {s['median'] * 1e3:.2f} ms, "
            f"IQR {s['iqr'] * 1e3:.2f} ms, {s['rounds']} rounds){extra}, "
            f"first step {res['first_step_s']:.2f} s")


def summary_table(doc: dict[str, Any]) -> str:
    """Characters per second, one row per cell group, one column per backend."""
    backends: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for c in doc["cells"]:
        cell, res = c["cell"], c["result"]
        if cell["backend"] not in backends:
            backends.append(cell["backend"])
        key = f"{cell['preset']} {cell['mode']} B{cell['batch']}"
        if res.get("status") == "ok":
            txt = f"{res['chars_per_s']:,.0f}"
        else:
            txt = res.get("status", "?")
        rows.setdefault(key, {})[cell["backend"]] = txt
    width = max([len(k) for k in rows] + [10])
    lines = ["characters per second (median):",
             f"{'cell':{width}}" + "".join(f"{b:>15}" for b in backends)]
    for k, r in rows.items():
        lines.append(f"{k:{width}}" + "".join(f"{r.get(b, ''):>15}" for b in backends))
    return "\n".join(lines)
