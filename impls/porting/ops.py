"""The worker side of porting: one request, one format's read, write or run, in whatever
environment the format's framework lives in (harness.engine.worker's "port" op; the main
process calls it directly for the NumPy-only canonical format). Models and arrays travel as
.npz files in the caller's private folder (impls.porting.model); answers are JSON.

    {"action": "read",  "format": F, "path": P, "like": T|None, "lenient": bool, "out": NPZ}
        -> {"describe": ..., "faults": [...]}            the Ported saved to NPZ
    {"action": "write", "format": F, "ported": NPZ, "path": P, "like": T|None} -> {"describe": ...}
    {"action": "run",   "format": F, "path": P, "like": T|None, "probe": NPZ, "out": NPZ}
        -> {"outputs": [...]}                            the Outputs saved to NPZ

A file lstmbench cannot port is answered {"refused": ONE_LINE} (the caller's bad input, exit
2); anything else a framework raises propagates to the worker's error answer."""
from __future__ import annotations

from typing import Any

from ..case import CaseError
from . import PortError, module_of
from .model import Probe, load_ported, save_outputs, save_ported


def handle(req: dict[str, Any]) -> dict[str, Any]:
    try:
        mod = module_of(req["format"])
        action = req["action"]
        if action == "read":
            p = mod.read(req["path"], req.get("like"), lenient=bool(req.get("lenient")))
            save_ported(p, req["out"])
            return {"describe": p.describe, "faults": p.faults}
        if action == "write":
            return {"describe": mod.write(load_ported(req["ported"]), req["path"], req.get("like"))}
        if action == "run":
            out = mod.run(req["path"], Probe.load(req["probe"]), req.get("like"))
            save_outputs(out, req["out"])
            return {"outputs": sorted(out)}
        raise PortError(f"unknown porting action {action!r}")
    except CaseError as e:  # PortError, and a checkpoint's own CheckpointError
        return {"refused": str(e).splitlines()[0]}
