"""What the noise probe does not see: an experiment, kept runnable (docs/measurement.md, "What
the probe does not see").

One process, pinned to one CPU at one thread, times a few smoke-sized eval cells (the
"victims") and a set of fixed candidate probes in a fresh random order every round, ~10 ms
each, for `--seconds`. Per round, the victims' median log time above their own fastest says
how fast the machine was for framework code at that moment. For each participant it prints
how closely its own rounds follow that (the correlation, round by round) and by how much
(the slope over blocks of rounds: 1 = it slows exactly as the victims do, 0.25 = a quarter as
much); then, over consecutive windows of `--window` rounds (a smoke workload's 90), how much
each victim's figure scatters between windows by estimator: the minimum, the 10th
percentile, and the median of its rounds' times over a probe's time in the same round.

    .venv/bin/python benchmarks/witness_experiment.py --seconds 240 --json /tmp/witness.json

Candidates: the engine's GEMM probe (256 x 256 float32), a small NumPy LSTM loop (B 8, H 32,
T 16), a pure-Python loop, random gathers from a 256 KB and a 64 MB table, a 16 MB copy.
Victims: numpy-f32, torch, torch-cell, tensorflow, jax and flax where they import.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from impls.files import write_atomic  # noqa: E402

VICTIMS = ("numpy-f32", "torch", "torch-cell", "tensorflow", "jax", "flax")


def _host(step: Callable[[], Any]) -> Any:
    from harness.engine.bench import HostSync, Prepared
    return Prepared(HostSync(), step)


def candidates() -> dict[str, Any]:
    """The fixed probes, each a harness.engine.bench.Prepared."""
    import numpy as np
    from harness.engine.bench import gemm_prepared
    rng = np.random.default_rng(0)
    B, H, T = 8, 32, 16
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    w = (0.1 * rng.standard_normal((H, 4 * H))).astype(np.float32)
    u = (0.1 * rng.standard_normal((H, 4 * H))).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)

    def lstm() -> np.ndarray:  # T steps of two small GEMMs and the gate ufuncs
        h, c = h0, h0
        for t in range(T):
            z = x[t] @ w + h @ u  # (B, 4H)
            c = c / (1 + np.exp(-z[:, H:2 * H])) + np.tanh(z[:, 2 * H:3 * H]) / (1 + np.exp(-z[:, :H]))
            h = np.tanh(c) / (1 + np.exp(-z[:, 3 * H:]))
        return h

    def pyloop() -> int:
        d: dict[int, int] = {}
        s = 0
        for i in range(2000):
            if i % 3:
                s += i
            else:
                d[i & 63] = s
        return s
    small = rng.permutation(1 << 16).astype(np.int32)  # 256 KB: the core's L2
    big = rng.permutation(1 << 24).astype(np.int32)  # 64 MB: beyond any cache
    at = rng.integers(0, 1 << 16, 1 << 16)
    at_big = rng.integers(0, 1 << 24, 1 << 16)
    src, dst = np.ones(1 << 22, np.float32), np.empty(1 << 22, np.float32)  # 16 MB each
    return {"gemm256": gemm_prepared(256), "lstm-loop": _host(lstm), "python-loop": _host(pyloop),
            "gather-256K": _host(lambda: small[at].sum()), "gather-64M": _host(lambda: big[at_big].sum()),
            "copy-16M": _host(lambda: np.copyto(dst, src))}


def victims() -> dict[str, Any]:
    from harness.engine.bench import prepare
    from harness.engine.matrix import load_matrix
    from harness.engine.bench import configure_backend
    from impls import registry
    out = {}
    for c in load_matrix("smoke").cells(list(VICTIMS), "cpu", "float32"):
        if c.mode != "eval" or not registry.availability(c.backend)[0]:
            continue
        try:
            configure_backend(c.backend, 1, "cpu")
            out[c.backend] = prepare(c)
        except Exception as e:  # noqa: BLE001 - a backend that does not build here is left out
            print(f"  {c.backend}: left out ({e})", file=sys.stderr)
    return out


def measure(seconds: float, round_time: float, seed: int) -> dict[str, Any]:
    import numpy as np
    from harness.engine.bench import inner_for, time_round
    parts = {**candidates(), **victims()}
    inner = {k: inner_for(p, round_time, 0.2) for k, p in parts.items()}
    names, rows, rng = list(parts), [], np.random.default_rng(seed)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        row = {}
        for j in rng.permutation(len(names)):
            row[names[j]] = time_round(parts[names[j]], inner[names[j]])
        rows.append(row)
    return {"names": names, "victims": [n for n in names if n in VICTIMS], "rows": rows}


def analyse(data: dict[str, Any], window: int) -> str:
    import numpy as np
    names, vict = data["names"], data["victims"]
    L = np.log(np.array([[r[n] for n in names] for r in data["rows"]]))  # (rounds, participants)
    L -= L.min(axis=0)  # log time above each participant's fastest round
    V = np.median(L[:, [names.index(v) for v in vict]], axis=1)  # the victims' state per round
    n_bins = len(V) // 20
    Vb = np.array([np.median(V[20 * i:20 * i + 20]) for i in range(n_bins)])

    def rsd(v: Any) -> float:
        v = np.asarray(v)
        return float(1.4826 * np.median(np.abs(v - np.median(v))))
    out = [f"{len(L)} rounds; the victims' median round {np.exp(np.median(V)):.2f}x their fastest",
           f"{'participant':12s} {'corr':>5s} {'slope':>6s}   (round by round; slope over 20-round blocks)"]
    for n in names:
        x = L[:, names.index(n)]
        xb = np.array([np.median(x[20 * i:20 * i + 20]) for i in range(n_bins)])
        out.append(f"{n:12s} {np.corrcoef(x, V)[0, 1]:5.2f} {np.polyfit(Vb, xb, 1)[0]:6.2f}")
    A = np.log(np.array([[r[n] for n in names] for r in data["rows"]]))
    nw = len(A) // window
    probes = [n for n in names if n not in vict]
    est: dict[str, Callable[[np.ndarray, int], float]] = {
        "min": lambda s, w: float(s.min()), "q10": lambda s, w: float(np.percentile(s, 10))}
    for p in probes:
        est[f"median / {p}"] = (lambda q: lambda s, w: float(np.median(s - A[w * window:(w + 1) * window, q])))(names.index(p))
    out.append(f"\nscatter of each victim's figure over {nw} windows of {window} rounds (robust SD of log; "
               "median over victims)")
    for k, f in est.items():
        vals = np.array([[f(A[w * window:(w + 1) * window, names.index(v)], w) for v in vict] for w in range(nw)])
        rel = vals - np.median(vals, axis=1, keepdims=True)  # after the window's shared move
        out.append(f"  {k:24s} {np.median([rsd(vals[:, j]) for j in range(len(vict))]):.3f}"
                   f"   relative to the other victims {np.median([rsd(rel[:, j]) for j in range(len(vict))]):.3f}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--window", type=int, default=90)
    ap.add_argument("--round-time", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    ap.add_argument("--json", help="keep every round here")
    ap.add_argument("--analyse", metavar="JSON", help="only analyse rounds kept by an earlier --json")
    a = ap.parse_args(argv)
    if a.analyse:
        print(analyse(json.loads(Path(a.analyse).read_text()), a.window))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {a.cpu if a.cpu is not None else cpus[-1]})
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[v] = "1"  # before any framework is imported
    data = measure(a.seconds, a.round_time, a.seed)
    if a.json:
        write_atomic(a.json, json.dumps(data).encode())
    print(analyse(data, a.window))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
