"""How much a participant's rounds slow down depending on who ran just before it, from a
results file's recorded order (`workloads[].order`) and rounds: the interference that idle,
still-spinning library threads cause on a small machine (docs/measurement.md, "Settling
between participants").

    python benchmarks/predecessor_effect.py RESULTS.json

For every round of every backend (and of the probe), its time over that participant's
fastest round in the workload, grouped by the participant that ran right before it in the
same round; prints the median and lower quartile per predecessor. Without interference the
rows agree; a predecessor that leaves threads spinning stands out."""
from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def slowdowns(doc: dict) -> dict[str, list[float]]:
    by_pred: dict[str, list[float]] = defaultdict(list)
    for w in doc["workloads"]:
        rounds: dict[int, dict[int, str]] = defaultdict(dict)
        for r, slot, name in w["order"]:
            rounds[r][slot] = name
        times: dict[str, dict[int, float]] = defaultdict(dict)
        for c in doc["cells"]:
            if c["workload"] != w["id"]:
                continue
            for s in c["result"].get("samples") or []:
                times[c["cell"]["backend"]][s["round"]] = s["s"]
                if s.get("probe_s"):
                    times["probe"][s["round"]] = s["probe_s"]
        for name, rs in times.items():
            best = min(rs.values())
            for r, v in rs.items():
                seq = [rounds[r][k] for k in sorted(rounds[r])]
                if name in seq:
                    i = seq.index(name)
                    by_pred[seq[i - 1] if i else "(first in round)"].append(v / best)
    return by_pred


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        data = slowdowns(json.load(f))
    print(f"{'after':22s} {'rounds':>6s} {'median':>7s} {'q25':>6s}   (time / participant's fastest round)")
    for k, v in sorted(data.items(), key=lambda kv: float(np.median(kv[1]))):
        print(f"{k:22s} {len(v):6d} {np.median(v):7.2f} {np.quantile(v, 0.25):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
