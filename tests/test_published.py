"""The marks of the published runs (results/), recomputed by the current code and held to what
the code gave before the harness was restructured (issue 30): every cross-run comparison the
README and docs/measurement.md draw from these files, every in-run comparison of variants, and
every baselines row, judged again from the rounds the files keep. A change to how compare,
`compare --variants`, `ab` or `baselines` judge shows here as a changed mark, ratio, interval
or reason, cell by cell.

tests/published_marks.json holds the expected entries (written by `python
tests/test_published.py --write`, which only a deliberate change of a judgement should need).
One deliberate change so far: "tc r1,r2 pooled -> r3", the one comparison with 31-60 degrees
of freedom, took its t quantiles from the normal table before the t tables became one
(harness.judge.tdist: 2.00 and 1.67 there); its intervals widened by up to 1.1%, no mark or
reason moved. Another (issue 29): the baselines rows' reasons of tensorflow-xla's train and
torch-compile's train became the measured causes of docs/speed.md (REASONS); no mark or ratio
moved. A third: torch-compile's train reason became the cause found on the quiet machine
(glibc's allocator, docs/speed.md); again no mark or ratio moved. Every other entry is what the code gave before the restructuring."""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.cli import main  # noqa: E402

R = ROOT / "results"
ACC = R / "amd-epyc-2c" / "acceptance-20261203"
EPYC = R / "amd-epyc-2c"
DUET = R / "intel-xeon-2c" / "duet-20261205"
EXPECTED = Path(__file__).with_name("published_marks.json")

TC = [ACC / f"{s}-smoke-cpu-tc-r{i}.json" for i, s in ((1, "20261203T161836Z"), (2, "20261203T162137Z"),
                                                       (3, "20261203T162446Z"))]
TD = [ACC / f"{s}-smoke-cpu-td-r{i}.json" for i, s in ((1, "20261203T183027Z"), (2, "20261203T183312Z"),
                                                       (3, "20261203T183605Z"))]
SMOKE_23 = [EPYC / f"20261123T{t}Z-smoke-cpu.json" for t in ("220516", "220753", "221019", "221811", "221950")]
# (name, old side, new side, extra options)
CROSS: list[tuple[str, list[Path], list[Path], list[str]]] = [
    *[(f"tc r{a + 1}->r{b + 1}", [TC[a]], [TC[b]], []) for a, b in ((0, 2), (0, 1), (1, 2))],
    *[(f"td r{a + 1}->r{b + 1}", [TD[a]], [TD[b]], []) for a, b in ((0, 2), (0, 1), (1, 2))],
    *[(f"smoke 23 Nov {a}->{a + 1}", [SMOKE_23[a]], [SMOKE_23[a + 1]], []) for a in range(4)],
    ("smoke 23 Nov -> 2 Dec", [SMOKE_23[-1]], [EPYC / "20261202T153546Z-smoke-cpu.json"], []),
    ("default 23 -> 24 Nov", [EPYC / "20261123T143125Z-default-cpu.json"],
     [EPYC / "20261124T002302Z-default-cpu.json"], []),
    ("tc r1->r3 normalized", [TC[0]], [TC[2]], ["--normalize"]),
    ("td r1 -> r3 at 3%", [TD[0]], [TD[2]], ["--threshold", "3%"]),
]
VARIANTS: list[tuple[str, Path, str | None]] = [
    *[(p.stem, p, None) for p in sorted(DUET.glob("*.json")) if json.loads(p.read_text()).get("variants")],
    ("jax releases", R / "intel-xeon-2c" / "jax-releases" / "20261205T122233Z-default-cpu-jax-0.9.2-vs-0.10.2.json",
     "jax-0.9.2,jax-0.10.2"),
]
BASELINES = [R / "intel-xeon-2c" / "20261205T125548Z-baselines-cpu.json",
             EPYC / "20261207T130227Z-baselines-cpu.json",  # issue 29's run: every backend, one thread
             EPYC / "20261207T144037Z-baselines-cpu.json",  # its quiet re-run
             *sorted((EPYC / "malloc-20261207").glob("*-baselines-cpu.json")),  # glibc's thresholds
             EPYC / "20261202T142310Z-baselines-cpu.json", EPYC / "20261202T144743Z-baselines-cpu.json"]
KEEP = ("backend", "variant", "mode", "preset", "batch", "mark", "ratio", "ci", "ci90", "equivalence_ci",
        "machine_shift", "workload_shift", "p", "reason", "decided_by", "regression", "tau")


def _keep(e: dict[str, Any]) -> dict[str, Any]:
    return {k: e[k] for k in KEEP if k in e}


def _compare(argv: list[str], tmp: Path) -> dict[str, Any]:
    out = tmp / "c.json"
    out.unlink(missing_ok=True)
    rc = main(["compare", *argv, "--json", str(out)])
    doc = json.loads(out.read_text())
    return {"exit": rc, "counts": doc["counts"], "cells": [_keep(e) for e in doc["cells"]]}


def slowed(src: Path, dst: Path, factor: float = 1.25) -> Path:
    """A copy of a run with every round `factor` slower (the probe's rounds untouched)."""
    doc = json.loads(src.read_text())
    d2 = copy.deepcopy(doc)
    for c in d2["cells"]:
        res = c["result"]
        for s in res.get("samples") or []:
            s["s"] *= factor
        if res.get("samples_s"):
            res["samples_s"] = [x * factor for x in res["samples_s"]]
        if res.get("estimate_s"):
            res["estimate_s"] *= factor
    dst.write_text(json.dumps(d2))
    return dst


def baselines_rows(path: Path) -> list[dict[str, Any]]:
    """Every (backend, baseline) pair of a baselines file judged again from its rounds."""
    from harness.commands import baselines
    doc = json.loads(path.read_text())
    return [_keep(r) for r in baselines.rejudge(doc)]


def recompute(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"cross": {}, "variants": {}, "baselines": {}}
    for name, old, new, extra in CROSS:
        out["cross"][name] = _compare([*map(str, old), *map(str, new), *extra], tmp)
    # a side of two files: compare takes a folder; give it one holding just those
    side = tmp / "pooled"
    side.mkdir(exist_ok=True)
    for p in TC[:2]:
        (side / p.name).write_bytes(p.read_bytes())
    out["cross"]["tc r1,r2 pooled -> r3"] = _compare([str(side), str(TC[2])], tmp)
    out["cross"]["tc r1 -> r1 x1.25"] = _compare([str(TC[0]), str(slowed(TC[0], tmp / "slow.json")),
                                                  "--fail-on-regression"], tmp)
    for name, path, which in VARIANTS:
        out["variants"][name] = _compare([str(path), *(["--variants", which] if which else [])], tmp)
    for path in BASELINES:
        out["baselines"][path.name] = baselines_rows(path)
    return out


def _close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)), (where, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def got(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return recompute(tmp_path_factory.mktemp("published"))


@pytest.mark.parametrize("part", ["cross", "variants", "baselines"])
def test_published_marks_are_what_the_code_gave_before(got: dict[str, Any], part: str) -> None:
    want = json.loads(EXPECTED.read_text())[part]
    assert sorted(got[part]) == sorted(want)
    for name in want:
        _close(got[part][name], want[name], f"{part}/{name}")


def test_the_recomputation_compares_something(got: dict[str, Any]) -> None:
    """Not an empty comparison held to an empty file: every kind of judgement, every mark."""
    marks = [e["mark"] for part in ("cross", "variants") for r in got[part].values() for e in r["cells"]]
    marks += [e["mark"] for rows in got["baselines"].values() for e in rows]
    assert {"slower", "faster", "unchanged", "inconclusive", "failed"} <= set(marks)
    assert all(e["mark"] == "slower" for e in got["cross"]["tc r1 -> r1 x1.25"]["cells"]
               if e["mark"] not in ("failed", "incomparable"))
    assert got["cross"]["tc r1 -> r1 x1.25"]["exit"] == 1


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        EXPECTED.write_text(json.dumps(recompute(Path(d)), sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {EXPECTED}")
