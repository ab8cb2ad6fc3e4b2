"""`lstmbench check`: the equivalence matrix. Every cross-check case (harness/cases.py) is
written as a case file, the float64 reference computes the expected outputs here, and each
backend computes its outputs in a worker process of its own environment; the table shows,
per backend and quantity, the worst error over the cases against the tolerance."""
from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from impls import registry
from impls.case import CaseError, check_outputs, load_outputs, make_case, save_case, write_file
from impls.tolerances import TOLERANCES

from .check_cases import CROSS_CASES
from ..engine.envs import UsageError, interpreter_for
from ..engine.workers import Worker, WorkerFailed

QUANTITIES = ("forward", "loss", "grads", "steps", "generated")


def run_check(backends: list[str], *, overrides: dict[str, str], threads: int | None,
              precision: str = "float32", json_path: Path | None = None, jobs: int = 1,
              log: Callable[[str], None] = print, device: str = "cpu") -> int:
    """Returns the exit status: 0 when every backend passes every quantity, else 1. `jobs`
    backends are checked side by side, each in its own worker (the results do not depend on
    it: each case is computed in one process, with `threads` threads, whatever runs beside).
    `device` is where the backends compute (the CLI refuses gpu on a machine without one)."""
    if json_path is not None and (json_path.exists() or json_path.is_symlink()):
        raise UsageError(f"--json {json_path} exists; choose another name (reports are never overwritten)")
    if not backends:
        raise UsageError("no backends to check: name at least one with --backends")
    if jobs < 1:
        raise UsageError(f"--jobs must be an integer >= 1, got {jobs}")
    with tempfile.TemporaryDirectory(prefix="lstmbench-check-") as d:
        return _run_check(Path(d), backends, overrides=overrides, threads=threads,
                          precision=precision, json_path=json_path, jobs=jobs, log=log, device=device)


_REFERENCE_LOCK = threading.Lock()  # the lanes share the reference outputs' cache


class _Stopped(Exception):
    """The check was interrupted: a backend's thread ends without a result."""


def _check_backend(name: str, cases: list[tuple[str, Any, Path]], references: dict[str, dict[str, dict]],
                   tmp: Path, *, overrides: dict[str, str], threads: int | None, precision: str,
                   live: dict[str, Worker], stop: threading.Event, log: Callable[[str], None],
                   device: str = "cpu") -> dict[str, Any]:
    """Every case on one backend, in a worker of its environment (registered in `live`, so
    that an interruption can kill it): the backend's report entry."""
    entry: dict[str, Any] = {"status": "ok", "cases": {}}
    t0 = time.perf_counter()

    def start() -> Worker:
        if stop.is_set():
            raise _Stopped
        live[name] = Worker(interpreter_for(name, overrides), threads, backend=name)
        return live[name]
    try:
        worker = start()
    except registry.BackendError as e:
        log(f"{name}: unavailable: {e}")
        return {**entry, "status": "unavailable", "reason": str(e)}
    try:
        for cid, case, path in cases:
            out_path = tmp / f"{cid}.{name}.out.npz"
            try:
                ans = worker.request({"op": "case", "backend": name, "case": str(path),
                                      "out": str(out_path), "threads": threads,
                                      "precision": precision, "device": device}, timeout=600)
            except WorkerFailed as e:
                if stop.is_set():
                    raise _Stopped from None
                ans = {"ok": False, "error": f"{e.kind}: {e}"}
                worker = start()
            if not isinstance(ans, dict):
                ans = {"ok": False, "error": f"malformed answer: {str(ans)[:200]}"}
            if not ans.get("ok"):
                ans["error"] = (str(ans.get("error") or "no reason given").splitlines() or [""])[0]
                entry["cases"][cid] = {"error": ans["error"]}
                entry["status"] = "error"
                log(f"{name} {cid}: error: {ans['error']}")
                if "unavailable" in ans["error"] or "ModuleNotFoundError" in ans["error"]:
                    entry.update(status="unavailable", reason=ans["error"])
                    break
                continue
            try:
                out, _ = load_outputs(out_path)
            except CaseError as e:  # the backend wrote something that is not its outputs
                entry["cases"][cid] = {"error": str(e)}
                entry["status"] = "error"
                log(f"{name} {cid}: error: {e}")
                continue
            with _REFERENCE_LOCK:  # the float64 reference runs once per case and formula
                rows = check_outputs(out, case, name, precision, cache=references[cid])
            entry["cases"][cid] = [r.__dict__ for r in rows]
            if not rows or any(r.status == "FAIL" for r in rows):  # nothing compared fails too
                entry["status"] = "FAIL"
    finally:
        worker.close()
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry


def _run_check(tmp: Path, backends: list[str], *, overrides: dict[str, str], threads: int | None,
               precision: str, json_path: Path | None, jobs: int, log: Callable[[str], None],
               device: str = "cpu") -> int:
    cases = []
    references: dict[str, dict[str, dict]] = {}  # case id -> eps form -> reference outputs
    for cc in CROSS_CASES:
        case = make_case(cc.spec, cc.seed, cc.batch, cc.seq_len, zero_state=cc.zero_state)
        cases.append((cc.id, case, save_case(case, tmp / f"{cc.id}.npz")))
        references[cc.id] = {}
    report: dict[str, Any] = {"precision": precision, "device": device, "cases": [c[0] for c in cases],
                              "jobs": jobs,
                              "backends": {name: None for name in backends}}  # the given order
    queue = deque(backends)
    lock = threading.Lock()  # the queue and the report
    live: dict[str, Worker] = {}  # backend -> its worker, while it runs
    stop = threading.Event()
    if jobs > 1:
        log(f"checking {len(backends)} backends, {min(jobs, len(backends))} at a time")

    def lane() -> None:
        while True:
            with lock:
                if stop.is_set() or not queue:
                    return
                name = queue.popleft()
            try:
                entry = _check_backend(name, cases, references, tmp, overrides=overrides,
                                       threads=threads, precision=precision, live=live, stop=stop,
                                       log=log, device=device)
            except _Stopped:
                return
            except Exception as e:  # noqa: BLE001 - the harness failed on this backend, not the check
                if stop.is_set():
                    return
                entry = {"status": "error", "cases": {}, "reason": f"{type(e).__name__}: {e}"}
                log(f"{name}: error: {entry['reason']}")
            finally:
                live.pop(name, None)
            with lock:
                report["backends"][name] = entry
                log(_line(name, entry))

    lanes = [threading.Thread(target=lane, name=f"check lane {n}", daemon=True)
             for n in range(min(jobs, len(backends)))]
    for t in lanes:
        t.start()
    try:
        while any(t.is_alive() for t in lanes):
            for t in lanes:
                t.join(0.2)  # short joins: the main thread stays responsive to Ctrl-C
    except BaseException:
        stop.set()
        for w in list(live.values()):
            w.kill()
        for t in lanes:
            t.join(10.0)
        raise
    failed = any(e["status"] != "ok" for e in report["backends"].values())
    log("")
    log(format_table(report))
    if json_path:
        data = json.dumps(report, indent=1).encode()
        try:
            write_file(json_path, lambda f: f.write(data), "--json")
        except CaseError as e:  # disk full, read-only: the table above stands, the file does not
            raise CaseError(f"{e} (the table above is complete)") from None
        log(f"details: {json_path}")
    return 1 if failed else 0


def _worst(entry: dict[str, Any], q: str) -> tuple[float, str]:
    """Worst error over cases for quantity q, and the worst status; NaN is the worst error
    (max() would drop it), and a quantity no case compared is "none", never "ok"."""
    worst, status, seen = 0.0, "ok", False
    rank = {"ok": 0, "deviation": 1, "FAIL": 2}
    for rows in entry["cases"].values():
        if isinstance(rows, dict):
            return float("nan"), "error"
        for r in rows:
            if r["quantity"] == q:
                seen = True
                rel = r["rel"]
                worst = worst if worst != worst else rel if rel != rel else max(worst, rel)  # x != x: NaN
                if rank[r["status"]] > rank[status]:
                    status = r["status"]
    return (worst, status) if seen else (float("nan"), "none")


def _line(name: str, entry: dict[str, Any]) -> str:
    return f"{name}: {entry['status']} ({entry.get('seconds', 0)} s)"


def format_table(report: dict[str, Any]) -> str:
    tol = TOLERANCES[report["precision"]]
    w = max([16, *(len(n) + 2 for n in report["backends"])])  # the name column
    head = f"{'backend':{w}}" + "".join(f"{q:>20}" for q in QUANTITIES) + "  result"
    sub = f"{'tolerance':{w}}" + "".join(f"{tol[q].rel:>20.0e}" for q in QUANTITIES)
    lines = [head, sub]
    for name, entry in report["backends"].items():
        if entry["status"] == "unavailable":
            lines.append(f"{name:{w}}  unavailable: {entry.get('reason', '')}")
            continue
        cells = []
        for q in QUANTITIES:
            worst, st = _worst(entry, q)
            cells.append(f"{worst:10.1e} {st:>9}")
        lines.append(f"{name:{w}}" + "".join(f"{c:>20}" for c in cells) + f"  {entry['status']}")
    devs = {n: registry.get_spec(n).deviations for n in report["backends"]}
    notes = [f"  {n} {opt}: {d.cause}" for n, ds in devs.items() for opt, d in ds.items()]
    if notes:
        lines += ["", "documented native-optimiser deviations (checked against the native formula):"] + notes
    return "\n".join(lines)
