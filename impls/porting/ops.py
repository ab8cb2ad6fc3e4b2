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
2); anything else a framework raises propagates to the worker's error answer. With
LSTMBENCH_TEST_FAULTS=1 and LSTMBENCH_TEST_PORT_FAULT=swap-gates a write swaps two gate blocks
(tests/test_porting.py: a conversion that fails its verification)."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

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
            p = load_ported(req["ported"])
            if os.environ.get("LSTMBENCH_TEST_FAULTS") == "1" and os.environ.get("LSTMBENCH_TEST_PORT_FAULT") == "swap-gates":
                W = p.params["lstm.0.W_h"]  # a writer's slip (tests/test_porting.py): blocks g and o swapped
                H = W.shape[0]
                p.params["lstm.0.W_h"] = W[:, np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]]
            return {"describe": mod.write(p, req["path"], req.get("like"))}
        if action == "run":
            out = mod.run(req["path"], Probe.load(req["probe"]), req.get("like"))
            save_outputs(out, req["out"])
            return {"outputs": sorted(out)}
        raise PortError(f"unknown porting action {action!r}")
    except CaseError as e:  # PortError, and a checkpoint's own CheckpointError
        return {"refused": str(e).splitlines()[0]}
