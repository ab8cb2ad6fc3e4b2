"""`lstmbench check`: the equivalence matrix. Every cross-check case (check_cases.py) is
written as a case file, the float64 reference computes the expected outputs here, and each
backend computes its outputs in a worker process of its own environment, `--jobs` backends
side by side in lanes (harness.engine.lanes); the table shows, per backend and quantity, the
worst error over the cases against the tolerance."""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from impls import registry
from impls.case import CaseError, check_outputs, load_outputs, make_case, save_case
from impls.tolerances import TOLERANCES

from ..envs.host import require_device
from ..envs.interpreters import interpreter_for, parse_python_overrides
from ..envs.host import default_jobs
from ..engine.lanes import Children, Slot, Stopped, run_lanes
from ..engine.workers import Worker, WorkerFailed
from ..errors import UsageError
from ..results.schema import CHECK_QUANTITIES as QUANTITIES, check_worst
from .check_cases import CROSS_CASES
from .options import (BENCH_BACKENDS, add_cluster_options, add_json, add_python, add_threads, backend_list,
                      json_target, positive_threads, text_log, write_json)


def run_check(backends: list[str], *, overrides: dict[str, str], threads: int | None,
              precision: str = "float32", json_path: str | Path | None = None, jobs: int = 1,
              log: Callable[[str], None] = print, device: str = "cpu", lanes: Any = None) -> int:
    """Returns the exit status: 0 when every backend passes every quantity, else 1. `jobs`
    backends are checked side by side, each in its own worker (the results do not depend on
    it: each case is computed in one process, with `threads` threads, whatever runs beside).
    `device` is where the backends compute (the CLI refuses gpu on a machine without one).
    `lanes` (harness.cluster.tasks.Lanes): each backend's check runs on a cluster's node.
    `json_path`: --json's target (options.json_target: a new file, or "-" for stdout)."""
    json_path = json_target(None if json_path is None else str(json_path))
    if not backends:
        raise UsageError("no backends to check: name at least one with --backends")
    if jobs < 1:
        raise UsageError(f"--jobs must be an integer >= 1, got {jobs}")
    with tempfile.TemporaryDirectory(prefix="lstmbench-check-") as d:
        return _run_check(Path(d), backends, overrides=overrides, threads=threads,
                          precision=precision, json_path=json_path, jobs=jobs, log=log, device=device,
                          lanes=lanes)


def check_on_node(name: str, overrides: dict[str, str], threads: int | None, precision: str,
                  device: str) -> dict[str, Any]:
    """One backend's check where a cluster's task runs it (harness.cluster.tasks.Lanes): the
    same cases (they are seeded), built and referenced on that node."""
    with tempfile.TemporaryDirectory(prefix="lstmbench-check-") as d:
        cases, references = _cases(Path(d))
        return _check_backend(name, cases, references, Path(d), overrides=overrides, threads=threads,
                              precision=precision, children=Children(), log=print, device=device)


def _cases(tmp: Path) -> tuple[list[tuple[str, Any, Path]], dict[str, dict[str, dict]]]:
    """The cross-check cases, saved in `tmp`, and an empty reference cache for each."""
    cases = []
    references: dict[str, dict[str, dict]] = {}  # case id -> eps form -> reference outputs
    for cc in CROSS_CASES:
        case = make_case(cc.spec, cc.seed, cc.batch, cc.seq_len, zero_state=cc.zero_state)
        cases.append((cc.id, case, save_case(case, tmp / f"{cc.id}.npz")))
        references[cc.id] = {}
    return cases, references


_REFERENCE_LOCK = threading.Lock()  # the lanes share the reference outputs' cache


def _check_backend(name: str, cases: list[tuple[str, Any, Path]], references: dict[str, dict[str, dict]],
                   tmp: Path, *, overrides: dict[str, str], threads: int | None, precision: str,
                   children: Children, log: Callable[[str], None], device: str = "cpu") -> dict[str, Any]:
    """Every case on one backend, in a worker of its environment (registered in `children`,
    so that an interruption can stop it): the backend's report entry."""
    entry: dict[str, Any] = {"status": "ok", "cases": {}}
    t0 = time.perf_counter()
    worker: Worker | None = None

    def start() -> Worker:
        nonlocal worker
        if worker is not None:
            children.discard(worker.proc)
            worker.close()
        if children.closed:
            raise Stopped
        worker = Worker(interpreter_for(name, overrides), threads, backend=name)
        if not children.add(worker.proc):
            raise Stopped
        return worker
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
                if children.closed:
                    raise Stopped from None
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
        if worker is not None:
            children.discard(worker.proc)
            worker.close()
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry


def _run_check(tmp: Path, backends: list[str], *, overrides: dict[str, str], threads: int | None,
               precision: str, json_path: str | Path | None, jobs: int, log: Callable[[str], None],
               device: str = "cpu", lanes: Any = None) -> int:
    cases, references = _cases(tmp)
    report: dict[str, Any] = {"precision": precision, "device": device, "cases": [c[0] for c in cases],
                              "jobs": jobs,
                              "backends": {name: None for name in backends}}  # the given order
    if jobs > 1:
        log(f"checking {len(backends)} backends, {min(jobs, len(backends))} at a time")
    children = Children()

    def check_one(name: str, lane: int) -> dict[str, Any]:
        if lanes is not None:  # on a cluster's node
            return lanes.call("harness.commands.check:check_on_node",
                              {"name": name, "overrides": overrides, "threads": threads,
                               "precision": precision, "device": device}, children, log, name)
        return _check_backend(name, cases, references, tmp, overrides=overrides, threads=threads,
                              precision=precision, children=children, log=log, device=device)

    def failed(name: str, e: Exception) -> dict[str, Any]:  # the harness failed on this backend, not the check
        entry = {"status": "error", "cases": {}, "reason": f"{type(e).__name__}: {e}"}
        log(f"{name}: error: {entry['reason']}")
        return entry

    def record(name: str, entry: dict[str, Any], slot: Slot) -> None:
        report["backends"][name] = entry
        log(_line(name, entry))

    run_lanes(backends, jobs, check_one, record, failed, children=children, name="check lane")
    failed = any(e["status"] != "ok" for e in report["backends"].values())
    log("")
    log(format_table(report))
    write_json(json_path, report, log)  # disk full, read-only: the table above stands, the file does not
    return 1 if failed else 0


def _line(name: str, entry: dict[str, Any]) -> str:
    where = f" on node {entry['node']}" if entry.get("node") else ""
    return f"{name}: {entry['status']} ({entry.get('seconds', 0)} s{where})"


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
            worst, st = check_worst(entry, q)
            cells.append(f"{worst:10.1e} {st:>9}")
        lines.append(f"{name:{w}}" + "".join(f"{c:>20}" for c in cells) + f"  {entry['status']}")
    devs = {n: registry.get_spec(n).deviations for n in report["backends"]}
    notes = [f"  {n} {opt}: {d.cause}" for n, ds in devs.items() for opt, d in ds.items()]
    if notes:
        lines += ["", "documented native-optimiser deviations (checked against the native formula):"] + notes
    return "\n".join(lines)


def cmd_check(a: argparse.Namespace) -> int:
    backends = backend_list(a.backends, [b for b in BENCH_BACKENDS if a.device in registry.BACKENDS[b].devices])
    if not backends:
        raise UsageError(f"--backends {a.backends!r} names no backend; give a comma list, e.g. torch,jax")
    positive_threads(a.threads)
    require_device(a.device, a.precision, backends, here=not a.cluster)
    if a.on and not a.cluster:
        raise UsageError("--on KIND chooses machine kinds of a cluster: give --cluster ADDRESS too")
    target = json_target(a.json)  # fail now, not after minutes of checking
    log = text_log(target)
    lanes = None
    if a.cluster:  # Ray only here, and only with --cluster
        from ..cluster.tasks import lanes_on
        lanes = lanes_on(a.cluster, a.on, a.device, a.threads, log)
    jobs = (lanes.jobs if lanes else default_jobs(a.threads)) if a.jobs is None else a.jobs
    return run_check(backends, overrides=parse_python_overrides(a.python), threads=a.threads,
                     precision=a.precision, json_path=target, jobs=jobs, log=log,
                     device=a.device, lanes=lanes)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="cross-check every backend against the reference")
    p.add_argument("--backends", help="comma list (default: all but the numpy oracle)")
    add_json(p, "the detailed report (every case, tensor and error)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="where every backend computes the cases (default cpu; gpu needs one)")
    p.add_argument("--precision", default="float32", choices=["float32", "tf32"],
                   help="float32 (strict, default) or tf32 (GPU only)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="backends checked side by side, each in its own worker (default: the "
                        "cores // --threads)")
    add_python(p), add_threads(p)
    add_cluster_options(p, "each backend's check (they pack the nodes)")
    p.set_defaults(fn=cmd_check)
