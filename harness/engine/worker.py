"""A worker process: runs inside one backend's environment and answers requests from the
harness, one JSON object per line. Requests arrive on stdin; answers go to a pipe of their
own (the fd named by LSTMBENCH_PROTO_FD, see harness.engine.workers), while stdout and stderr
go to the worker's log, so that nothing a framework prints can corrupt the protocol.

    {"op": "info", "backends": [...], "threads": N, "device": "cpu"}
    {"op": "case", "backend": B, "case": PATH, "out": PATH}
    {"op": "cell", "cell": {...harness.engine.bench.Cell fields...}}
    {"op": "peak", "device": "cpu", "backend": B}
    {"op": "port", "action": "read"|"write"|"run", ...}    a file format's part (impls.porting.ops)
    {"op": "prepare", "cell": {...}, "round_time": 0.03}   the interleaved engine
    {"op": "probe", "n": 256, "round_time": 0.03}          (harness.engine.scheduler): prepare
    {"op": "baseline", "file": PATH, "backend": B,         a participant of one of the kinds in
     "cell": {...}, "round_time": 0.03}                    harness.engine.kinds.KINDS,
    {"op": "round"}                                        time one round of it,
    {"op": "release"}                                      and let it go

Only NumPy, the standard library, impls and the worker side of harness.engine (bench,
participants, failures) are imported here, besides the backend's framework, so the same file
runs in the main environment and in chainer's NumPy < 2 one.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from impls import registry

from harness.engine.bench import (Cell, backend_info, configure_backend, first_step, gpu_peak, inner_for,
                                  matmul_peak, measure_cell, peak_rss, time_round)
from harness.engine.failures import classify
from harness.engine.kinds import KINDS
from harness.engine.participants import Kind


def op_info(req: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in req["backends"]:
        try:
            info = backend_info(name, req.get("threads"), req.get("device", "cpu"))
            out[name] = {"available": True, **info}
        except Exception as e:  # noqa: BLE001 - any failure makes just this backend unavailable
            out[name] = {"available": False, "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {"backends": out, "python": sys.version.split()[0], "executable": sys.executable,
            "numpy": np.__version__}


def op_case(req: dict[str, Any]) -> dict[str, Any]:
    from impls.case import load_case, run_case, save_outputs
    name = req["backend"]
    spec = registry.get_spec(name)
    info = configure_backend(name, req.get("threads"), req.get("device", "cpu"))
    case = load_case(req["case"])
    t0 = time.perf_counter()
    kw = {"precision": req["precision"]} if req.get("precision", "float32") != "float32" else {}
    be = registry.create(name, case.spec.model, case.spec.train, case.params,
                         device=req.get("device", "cpu"), dtype=req.get("dtype"), **kw)
    outputs = run_case(case, be, spec.modes)
    dtype = req.get("dtype") or spec.dtype
    precision = req.get("precision") if dtype == "float32" and req.get("precision") else dtype
    save_outputs(outputs, {"backend": name, "dtype": dtype, "precision": precision,
                           "device": req.get("device", "cpu"), "version": info.get("version", ""),
                           "case": str(Path(req["case"]).resolve()),
                           "optimizer": case.spec.train.optimizer.name},
                 req["out"])
    return {"seconds": time.perf_counter() - t0}


def op_cell(req: dict[str, Any]) -> dict[str, Any]:
    cell = Cell.from_dict(req["cell"])
    info = backend_info(cell.backend, req.get("threads"), cell.device)
    return {"result": measure_cell(cell, min_time=req.get("min_time", 1.0),
                                   min_rounds=req.get("min_rounds", 5),
                                   max_rounds=req.get("max_rounds", 30)), "info": info}


def op_port(req: dict[str, Any]) -> dict[str, Any]:
    """A file format's read, write or run in this environment (impls.porting.ops)."""
    from impls.porting.ops import handle
    return handle(req)


def op_peak(req: dict[str, Any]) -> dict[str, Any]:
    return {"gflops": matmul_peak(req.get("device", "cpu"), req.get("backend", "numpy"))}


# The interleaved engine's ops (harness.engine.scheduler): one prepared participant per worker.
_held: dict[str, Any] = {}  # "prep": bench.Prepared, "inner": steps per round, "cell": Cell | None


def prepare_op(kind: Kind) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The op that prepares a participant of `kind` (harness.engine.participants): build it,
    time its first step apart (a kind may skip that), warm up and size a round to ~round_time
    seconds; it is then this worker's participant until released."""
    def op(req: dict[str, Any]) -> dict[str, Any]:
        _held.clear()
        built = kind.build(req)
        out: dict[str, Any] = {"status": "ok"}
        if built.first_step:
            res, first = first_step(built.prep)
            if not built.prep.check(res):
                return {"status": "nan", "error": "non-finite loss on the first step", "first_step_s": first}
            out["first_step_s"] = first
        inner = inner_for(built.prep, req.get("round_time", 0.03), built.warmup)
        _held.update(prep=built.prep, inner=inner, cell=built.cell)
        return {**out, "inner": inner, **built.info}
    return op


def op_round(req: dict[str, Any]) -> dict[str, Any]:
    """One timed round of the prepared participant: seconds per step."""
    if "prep" not in _held:
        raise RuntimeError("round before prepare")
    return {"s": time_round(_held["prep"], int(req.get("inner") or _held["inner"]))}


def op_release(req: dict[str, Any]) -> dict[str, Any]:
    """Finish the cell: was the last result finite, peak memory; then drop it."""
    prep, cell = _held.get("prep"), _held.get("cell")
    _held.clear()
    if prep is None:
        return {"finite": True}
    out: dict[str, Any] = {"finite": bool(prep.check(prep.last)) if prep.last is not None else True,
                           "peak_rss_bytes": peak_rss(),
                           "kernel": getattr(prep.backend, "kernel", None)}
    if cell is not None and cell.device == "gpu":
        out["peak_device_bytes"] = gpu_peak(cell.backend, reset=False)
    return out


OPS = {"info": op_info, "case": op_case, "cell": op_cell, "peak": op_peak, "port": op_port,
       **{k.op: prepare_op(k) for k in KINDS.values()}, "round": op_round, "release": op_release}


def _test_ops(proto: Any) -> dict[str, Any]:
    """Faults for tests/test_durability.py, present only with LSTMBENCH_TEST_FAULTS=1."""
    def stray(req: dict[str, Any]) -> dict[str, Any]:  # prints reach the log, not the protocol
        print("a stray line from a library")
        os.write(1, b"a stray line written to fd 1 from C\n")
        return {"value": 1}

    def garbage(req: dict[str, Any]) -> dict[str, Any]:  # nonsense on the protocol itself
        proto.write("this is not JSON\n")
        proto.flush()
        return {"value": 2}

    def truncate(req: dict[str, Any]) -> dict[str, Any]:  # half an answer, then gone
        proto.write('{"ok": true, "val')
        proto.flush()
        os._exit(3)

    def sleep(req: dict[str, Any]) -> dict[str, Any]:
        time.sleep(float(req.get("s", 60)))
        return {"slept": True}

    def oom(req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")

    def pid(req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "env": {k: os.environ.get(k) for k in req.get("env", [])},
                "harness": sys.modules["harness"].__file__}

    return {"_stray": stray, "_garbage": garbage, "_truncate": truncate, "_sleep": sleep,
            "_oom": oom, "_pid": pid}


def _fault_plan(ops: dict[str, Any], proto: Any, plan: str) -> dict[str, Any]:
    """The real ops with faults for tests/test_durability.py (LSTMBENCH_TEST_FAULTS=1 and
    LSTMBENCH_TEST_FAULT="OP:ACTION[@TARGET],..."). TARGET is the participant the worker holds
    (or is asked to prepare): B<batch> for a cell, "probe" for the noise probe; none: any.
    ACTION: oom (an allocation failure, as torch's CPU allocator reports it), kill or stop
    (SIGKILL or SIGSTOP itself: a crash, a hang), kill-after or stop-after (answer first, then
    die or hang while idle). With LSTMBENCH_TEST_FAULT_ONCE=PATH a fault fires in one
    worker only: the first to create PATH."""
    import signal
    faults = [(f.partition(":")[0], *f.partition(":")[2].partition("@")[::2]) for f in plan.split(",")]
    state: dict[str, str | None] = {"target": None}

    def fire() -> bool:
        once = os.environ.get("LSTMBENCH_TEST_FAULT_ONCE")
        if not once:
            return True
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def wrap(name: str, fn: Any) -> Any:
        def op(req: dict[str, Any]) -> dict[str, Any]:
            if name in ("prepare", "probe"):
                state["target"] = "probe" if name == "probe" else f"B{req['cell']['batch']}"
            for what, action, target in faults:
                if what != name or target not in ("", state["target"]) or not fire():
                    continue
                sig = signal.SIGKILL if action.startswith("kill") else signal.SIGSTOP
                if action == "oom":
                    raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: "
                                       "can't allocate memory: you tried to allocate 400000000000 bytes")
                if action.endswith("-after"):
                    proto.write(json.dumps({"ok": True, **fn(req)}) + "\n")
                    proto.flush()
                os.kill(os.getpid(), sig)
                if action.endswith("-after"):  # continued after a stop: the answer was given
                    return {}
            return fn(req)
        return op
    return {name: wrap(name, fn) for name, fn in ops.items()}


def main() -> None:
    """Answer requests from stdin until {"op": "exit"} or EOF. Answers go to the pipe the
    harness passed as LSTMBENCH_PROTO_FD (pool.Worker); without one, to the original stdout.
    Either way sys.stdout and fd 1 are pointed at stderr (the worker's log)."""
    fd = os.environ.pop("LSTMBENCH_PROTO_FD", None)
    if fd:
        proto = os.fdopen(int(fd), "w", buffering=1)
    else:  # started by hand (python -m harness.engine.worker): answer on the original stdout
        proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed from here on goes to stderr
    sys.stdout = sys.stderr
    ops = dict(OPS)
    if os.environ.get("LSTMBENCH_TEST_FAULTS") == "1":
        ops.update(_test_ops(proto))
        if os.environ.get("LSTMBENCH_TEST_FAULT"):
            ops = _fault_plan(ops, proto, os.environ["LSTMBENCH_TEST_FAULT"])
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError(f"a request is a JSON object with an op, got {line[:80]!r}")
        except ValueError as e:
            ans: dict[str, Any] = {"ok": False, "kind": "error", "error": f"bad request: {e}".splitlines()[0]}
        else:
            if req["op"] == "exit":
                break
            try:
                if req["op"] not in ops:
                    raise ValueError(f"unknown op {req['op']!r}; ops are: {', '.join(OPS)}")
                ans = {"ok": True, **ops[req["op"]](req)}
            except Exception as e:  # noqa: BLE001 - reported to the harness, which records it
                ans = {"ok": False, "kind": classify(e),
                       "error": (f"{type(e).__name__}: {e}".splitlines() or [""])[0],
                       "traceback": traceback.format_exc()}
        try:
            text = json.dumps(ans)
        except (TypeError, ValueError) as e:  # an op returned something JSON cannot carry
            text = json.dumps({"ok": False, "kind": "error",
                               "error": f"the answer could not be encoded: {e}".splitlines()[0]})
        proto.write(text + "\n")


if __name__ == "__main__":
    main()
