"""`lstmbench report`: Markdown, self-contained HTML (plots embedded) and PNGs from results
files, leading with the cross-backend table per workload, then the machine's noise, then the
detail; noisy cells marked noisy, efficiency above 100% flagged; failed cells listed, not
plotted; the equivalence table from `check --json` output. It writes only what it owns: a
new folder, assembled aside and renamed into place; a folder holding a user's file is
refused untouched; a missing matplotlib or bad input fails before --out is created.

One end-to-end test runs a real `lstmbench run --matrix smoke --backends numpy-f32`; the rest
use synthetic documents (tests.test_compare)."""
from __future__ import annotations

import atexit
import base64
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from harness.report.page import MANIFEST, write_report
from tests.test_compare import SWEEP, _corrupt, lstmbench, save, synth_doc, synth_v2

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_real: dict[str, Path] = {}


def real_run() -> Path:
    """One real `lstmbench run --matrix smoke --backends numpy-f32` per session."""
    if "path" not in _real:
        out = Path(tempfile.mkdtemp(prefix="lstmbench-test-run-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        r = lstmbench("run", "--matrix", "smoke", "--backends", "numpy-f32", "--threads", "1",
                      "--out", str(out), cwd=out)
        assert r.returncode == 0, r.stderr
        _real["path"] = next(p for p in out.rglob("*.json") if not p.name.endswith(".journal.jsonl"))
    return _real["path"]


def check_json(path: Path) -> Path:
    """A `lstmbench check --json` report (harness.commands.check's layout: rows as impls.case.Row)."""
    def row(key: str, q: str, rel: float, tol: float, status: str = "ok") -> dict:
        return {"key": key, "quantity": q, "rel": rel, "max_abs": rel, "tol": tol, "status": status, "note": ""}
    rows = [row("forward/logits", "forward", 2e-7, 1e-5), row("loss", "loss", 1e-7, 1e-5),
            row("grad/lstm.0.W_h", "grads", 4e-7, 1e-5), row("step1/lstm.0.W_h", "steps", 3e-7, 1e-5),
            row("generated", "generated", 0.0, 0.0)]
    dev = [*rows[:3], row("step1/lstm.0.W_h", "steps", 0.88, 1e-5, "deviation"), rows[4]]
    rep = {"precision": "float32", "cases": ["c1", "c2"], "backends": {
        "numpy-f32": {"status": "ok", "cases": {"c1": rows, "c2": rows}, "seconds": 1.0},
        "tensorflow": {"status": "ok", "cases": {"c1": rows, "c2": dev}, "seconds": 3.0},
        "torch": {"status": "error", "cases": {"c1": rows, "c2": {"error": "RuntimeError: boom"}}},
        "chainer": {"status": "unavailable", "reason": "No module named 'chainer'", "cases": {}},
    }}
    path.write_text(json.dumps(rep))
    return path


def test_report_end_to_end_files_plots_failures_and_equivalence(tmp_path):
    doc = synth_v2(["numpy-f32", "torch", "jax"], matrix=SWEEP, threads=2,
                   failed={"jax/train/smoke/B8xT16": "timeout", "torch/generate/smoke/B1xT30": "oom"})
    synth = save(doc, tmp_path / "synth.json")
    out = tmp_path / "rep"
    html_path = write_report([str(synth), str(real_run())], out, check_json(tmp_path / "check.json"),
                             log=lambda s: None)
    assert html_path == out / "report.html"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["efficiency.png", "first_step.png", "generate_latency.png", "memory.png", "noise.png",
                    "throughput.png", "throughput_batch.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes().startswith(PNG_MAGIC)
    html = html_path.read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == len(pngs) and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in imgs)
    assert "src=\"http" not in html and "<link" not in html  # self-contained
    md = (out / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in md
    for text in (html, md):
        assert "AMD" in text or "CPU" in text
        assert "timeout" in text and "oom" in text and "synthetic failure" in text
        assert "Equivalence against the float64 reference" in text
        assert "8.8e-01 deviation" in text and "unavailable: No module named" in text
        assert "RuntimeError: boom" in text
    # what matters first: the cross-backend tables, then the noise, the plots, then the long detail
    heads = re.findall(r"^## (.+)$", md, re.M)
    assert heads[:5] == ["Each framework at its fastest", "Backends against the fastest, per workload",
                         "Machine noise", "Plots", "Results"]
    assert "1 (fastest)" in md
    # runs with different thread counts are told apart, not pooled
    assert "jax (2 threads)" in html and "numpy-f32 (1 thread)" in html and "numpy-f32 (2 threads)" in html
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted([*pngs, "report.html", "report.md"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep.")]  # no temp folder left


def _res(est: float, *, gflops: float = 1.0, status: str = "ok", us: float | None = None, **kw) -> dict:
    r = {"status": status, "estimate_s": est, "chars_per_s": 200 / est if est else None, "gflops": gflops, **kw}
    return {**r, "us_per_char": us} if us is not None else r


def test_frontier_is_each_frameworks_fastest_with_its_stored_interval():
    """Per framework the backend with the smallest estimate, its ratio and interval as the
    workload stored them (not recomputed), efficiency from the result or gflops / peak,
    baselines and unsupported cells left out, a framework that never measured last."""
    from harness.report.frontier import frontier, ratio_text, summary_line
    cells = [("torch", _res(8e-3, us=40.0)), ("torch-genloop", _res(2e-3, us=10.0, efficiency=0.05)),
             ("jax", _res(1e-3, us=5.0, gflops=4.0)), ("flax", _res(1.5e-3, us=7.5, noisy=True)),
             ("baseline:torch", _res(0.5e-3)),  # a baseline is no framework's backend
             ("onnxruntime", {"status": "unsupported"}), ("chainer", _res(0, status="timeout")),
             ("numpy-f32", _res(9e-3, status="nan"))]
    ratios = {"jax": {"to": "jax", "ratio": 1.0, "lo": 1.0, "hi": 1.0},
              "torch-genloop": {"to": "jax", "ratio": 2.1, "lo": 1.9, "hi": 2.3},
              "torch": {"to": "jax", "ratio": 8.0, "lo": 7.5, "hi": 8.5},
              "flax": {"to": "jax", "ratio": 1.4, "lo": 1.3, "hi": 1.6, "noisy": True}}
    rows = frontier(cells, ratios, peak_gflops=40.0)
    assert [(f.framework, f.backend, f.status) for f in rows] == [
        ("jax", "jax", "ok"), ("flax", "flax", "ok"), ("torch", "torch-genloop", "ok"),
        ("chainer", "chainer", "timeout"), ("numpy", "numpy-f32", "nan")]
    jax_, flax_, torch_ = rows[:3]
    assert jax_.fastest and not torch_.fastest and torch_.of == 2 and flax_.of == 1
    assert (torch_.ratio, torch_.lo, torch_.hi) == (2.1, 1.9, 2.3)  # stored, not 2e-3 / 1e-3
    assert torch_.efficiency == 0.05 and jax_.efficiency == 4.0 / 40.0  # stored, else gflops / peak
    assert torch_.us_per_char == 10.0 and flax_.noisy
    assert [ratio_text(f) for f in rows] == ["1 (fastest)", "1.40 [1.30, 1.60] noisy",
                                             "2.10 [1.90, 2.30]", "timeout", "nan"]
    assert summary_line(rows) == ("jax 1.00 (jax, 5.0 us/char); flax 1.40x [1.30, 1.60]* (flax, "
                                  "7.5 us/char); torch 2.10x [1.90, 2.30] (torch-genloop, 10.0 us/char); "
                                  "chainer timeout (chainer); numpy nan (numpy-f32)")
    # no stored ratios (a v1 file): the ratio of the estimates, no interval
    v1 = frontier(cells, None)
    assert [round(f.ratio, 6) for f in v1[:3]] == [1.0, 1.5, 2.0] and math.isnan(v1[2].lo)
    # variants: one row per framework and variant
    var = frontier([("jax@a", _res(1e-3)), ("jax@b", _res(2e-3)), ("flax@a", _res(3e-3))], None)
    assert [(f.framework, f.backend) for f in var] == [("jax@a", "jax@a"), ("jax@b", "jax@b"),
                                                        ("flax@a", "flax@a")]


def test_report_and_run_summary_show_each_framework_at_its_fastest(tmp_path):
    """The section's rows are, per workload, the fastest of each framework's backends in the
    file, with the ratio the workload stored; `run`'s summary prints the same per workload."""
    from harness.report.console import summary_table
    from harness.report.frontier import framework_of
    doc = synth_v2(["numpy-f32", "torch", "torch-cell", "jax", "flax"], seed=3)
    path = save(doc, tmp_path / "synth.json")
    write_report([str(path)], tmp_path / "rep", log=lambda s: None)
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md[md.index("## Each framework at its fastest"):md.index("## Backends against the fastest")]
    summary = summary_table(doc)
    for w in doc["workloads"]:
        cells = [c for c in doc["cells"] if c["workload"] == w["id"]]
        best: dict[str, dict] = {}
        for c in cells:
            fw = framework_of(c["cell"]["backend"])
            if fw not in best or c["result"]["estimate_s"] < best[fw]["result"]["estimate_s"]:
                best[fw] = c
        table = section[section.index(f"#### {w['preset']} {w['mode']} B{w['batch']} T{w['seq_len']}"):]
        table = table[:table.index("\n\n", table.index("|"))]
        body = [ln for ln in table.splitlines() if ln.startswith("|")][2:]  # under the header
        shown = {ln.split("|")[1].strip(): ln.split("|")[2].strip().split(" (of")[0] for ln in body}
        assert shown == {fw: c["cell"]["backend"] for fw, c in best.items()}, (w["id"], table)
        for fw, c in best.items():
            r = w["ratios"][c["cell"]["backend"]]
            row = next(ln for ln in body if ln.split("|")[1].strip() == fw)
            want = "1 (fastest)" if r["ratio"] == 1.0 else f"{r['ratio']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"
            assert want in row, (row, want)
            eff = f"{100 * c['result']['efficiency']:.2f}%"
            assert eff in row, (row, eff)
        torch_best = best["torch"]["cell"]["backend"]
        block = summary[summary.index(w["id"]):]
        line = next(ln for ln in block.splitlines() if "each framework at its fastest" in ln)
        assert f"({torch_best}" in line and line.index("torch") > 0


def test_noisy_cells_and_efficiency_above_100_percent_are_marked(tmp_path):
    doc = synth_v2(["numpy-f32", "torch"])
    res = doc["cells"][0]["result"]  # numpy-f32 train: too few clean rounds
    for s in res["samples"][4:]:
        s["clean"] = False
    res["noisy"] = True
    doc["cells"][1]["result"]["efficiency"] = 3.77
    doc["peak"]["gflops"] = 1e-6  # every efficiency far above 100%: a measurement error
    out = tmp_path / "rep"
    write_report([str(save(doc, tmp_path / "r.json"))], out, log=lambda s: None)
    md = (out / "report.md").read_text()
    results = md.split("## Results")[1].split("#### smoke train B8 T16")[1].split("####")[0]
    assert "| numpy-f32 (noisy) | " in results and " noisy |" in results
    rows = [ln for ln in results.splitlines() if ln.startswith("| torch | ")]
    assert rows and "(above 100%: measurement error)" in rows[0]
    assert "efficiency above 100% of the run's peak GEMM: a measurement error" in md
    table = md.split("## Backends against the fastest")[1].split("## Machine noise")[0]
    train = table.split("#### smoke train B8 T16")[1].split("####")[0]
    rows = {ln.split("|")[1].strip(): ln.split("|")[2] for ln in train.splitlines() if ln.startswith("| ")}
    assert "noisy" in rows["numpy-f32"] and "noisy" not in rows["torch"]  # numpy-f32's, not torch's
    # the mark is explained where it is used, with the run's own threshold
    assert "noisy (NOISY in `run`): fewer than 10 of the cell's rounds were clean" in table


def test_runs_by_date_narrow_tables_plots_first_and_a_legend_off_the_data(tmp_path, monkeypatch):
    """`report results/` over many runs: in the order they were made (not their paths'), each
    workload's backends in a table of their own (down the page, fastest first), machine tables
    of at most three runs, plots before the long per-cell table, the noise plot's legend beside
    its axes, and each run's verdict with the signal that gave it."""
    import harness.report.plots as rep
    docs = []
    for i, (name, created) in enumerate([("a-late.json", "2026-12-03T10:00:00+00:00"),
                                         ("b-early.json", "2026-11-20T10:00:00+00:00"),
                                         ("c-middle.json", "2026-11-25T10:00:00+00:00"),
                                         ("d-last.json", "2026-12-04T09:00:00+00:00")]):
        doc = synth_v2(["numpy-f32", "torch", "jax"], seed=i)
        doc["created"] = created
        if i == 3:  # a busy neighbour and a quiet probe: contended by the neighbour count
            doc["noise"].update(verdict="contended", contended_fraction=0.04, collapse_rounds=0,
                                foreign_cores_max=1.02, probe_verdict="quiet")
        docs.append(save(doc, tmp_path / name))
    figs = {}
    saved = rep.save
    monkeypatch.setattr(rep, "save", lambda fig, d, name: (figs.setdefault(name, [
        (ax.get_legend(), ax) for ax in fig.axes]), saved(fig, d, name))[1])
    write_report([str(p) for p in docs], tmp_path / "rep", log=lambda s: None)
    md = (tmp_path / "rep" / "report.md").read_text()
    order = ["b-early.json", "c-middle.json", "a-late.json", "d-last.json"]
    front = md.split("## Backends against the fastest")[0]
    assert [ln[4:] for ln in front.splitlines() if ln.startswith("### ")] == order
    ratio = md.split("## Backends against the fastest")[1].split("## Machine noise")[0]
    assert [ln[4:] for ln in ratio.splitlines() if ln.startswith("### ")] == order
    noise = md.split("## Machine noise")[1].split("## Plots")[0]
    assert [ln.split("|")[1].strip() for ln in noise.splitlines() if ln.startswith("| ") and ".json" in ln] == order
    last = next(ln for ln in noise.splitlines() if ln.startswith("| d-last.json"))
    assert "| CONTENDED | neighbour count | 1.02 |" in last
    for block in ratio.split("#### ")[1:]:  # one workload's backends, fastest first
        rows = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| backend")
                and not ln.startswith("| ---")]
        assert len(rows) == 3 and all(ln.count("|") == 4 for ln in rows)
        assert rows[0].split("|")[2].strip() == "1 (fastest)"
        ratios = [float(ln.split("|")[2].split()[0]) for ln in rows]
        assert ratios == sorted(ratios)
    heads = re.findall(r"^## (.+)$", md, re.M)
    assert heads.index("Plots") < heads.index("Results")
    machine = md.split("## Machine and software")[1]
    kv = [ln for ln in machine.splitlines() if ln.startswith("|  | run")]
    assert kv == ["|  | run 1 | run 2 | run 3 |", "|  | run 4 |"]
    assert "| b-early.json | c-middle.json | a-late.json |" in machine
    (legend, ax), = figs["noise.png"]
    anchor = legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 >= 1.0  # beside the axes, not over the rounds


def test_v1_files_report_with_ratios_from_estimates(tmp_path):
    p = save(synth_doc(["numpy-f32", "torch"]), tmp_path / "v1.json")
    r = lstmbench("report", str(p), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "1 (fastest)" in md and "unknown (no noise probe)" in md
    assert not (tmp_path / "rep" / "noise.png").exists()  # no probe, no noise plot


def test_zero_nan_or_missing_values_do_not_break_the_plots(tmp_path):
    """Memory 0, first step 0 or missing, wildly different speeds: the plots skip what cannot
    be drawn and say so; throughput spanning 1000x goes to a log scale."""
    doc = synth_v2(["numpy-f32", "torch"])
    for i, c in enumerate(doc["cells"]):
        res = c["result"]
        res["peak_rss_bytes"] = 0
        res["first_step_s"] = [0.0, None, -1.0, float("nan"), float("inf"), 1e-3][i]  # a string: an error
        if c["cell"]["backend"] == "torch":
            for s in res["samples"]:
                s["s"] *= 1000
            res["estimate_s"] *= 1000
            res["ci_s"] = [x * 1000 for x in res["ci_s"]]
    out = tmp_path / "rep"
    write_report([str(save(doc, tmp_path / "r.json"))], out, log=lambda s: None)
    md = (out / "report.md").read_text()
    assert "not drawn" in md and "memory.png" not in md
    assert (out / "throughput.png").read_bytes().startswith(PNG_MAGIC)


def test_report_refuses_a_folder_with_a_users_files(tmp_path):
    p = save(synth_v2(["numpy-f32"]), tmp_path / "r.json")
    user = tmp_path / "rep"
    user.mkdir()
    (user / "memory.png").write_bytes(b"my own plot")
    (user / "report.md").write_text("my notes")
    r = lstmbench("report", str(p), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 2 and "holds files this report did not write" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert sorted(x.name for x in user.iterdir()) == ["memory.png", "report.md"]
    assert (user / "memory.png").read_bytes() == b"my own plot" and (user / "report.md").read_text() == "my notes"
    # a previous report's folder is the report's own: replaced whole
    r = lstmbench("report", str(p), "--out", "rep2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "rep2" / "throughput_batch.png").write_bytes(b"stale")  # not listed: a user's file
    r = lstmbench("report", str(p), "--out", "rep2", cwd=tmp_path)
    assert r.returncode == 2 and "throughput_batch.png" in r.stderr
    (tmp_path / "rep2" / "throughput_batch.png").unlink()
    r = lstmbench("report", str(p), "--out", "rep2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "rep2" / "report.md").write_text("edited by hand")  # changed since written: the user's
    r = lstmbench("report", str(p), "--out", "rep2", cwd=tmp_path)
    assert r.returncode == 2 and "report.md" in r.stderr
    assert (tmp_path / "rep2" / "report.md").read_text() == "edited by hand"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert lstmbench("report", str(p), "--out", "empty", cwd=tmp_path).returncode == 0
    assert (empty / "report.html").exists()


def test_missing_matplotlib_names_the_extra_before_creating_out(tmp_path):
    p = save(synth_v2(["numpy-f32"]), tmp_path / "r.json")
    r = lstmbench("report", str(p), "--out", "rep", cwd=tmp_path, pre="import sys; sys.modules['matplotlib'] = None")
    assert r.returncode == 2 and "pip install 'lstmbench[report]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("bad", ["null-machine", "string", "zero", "negative", "inf", "samples-not-list"])
def test_bad_results_fail_before_writing(tmp_path, bad):
    p = save(_corrupt(synth_v2(["numpy-f32", "torch"]), bad), tmp_path / "bad.json")
    r = lstmbench("report", str(p), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("lstmbench: error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "rep").exists() and not list(tmp_path.glob(".rep.*"))


def test_nan_samples_make_the_cell_failed_not_a_figure(tmp_path):
    p = save(_corrupt(synth_v2(["numpy-f32", "torch"]), "nan"), tmp_path / "nan.json")
    r = lstmbench("report", str(p), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    fails = md.split("## Cells that did not run")[1].split("## ")[0]
    assert "torch | train" in fails and "NaN (an invalid measurement)" in fails
    results = md.split("## Results")[1].split("## ")[0]
    assert "torch | train" not in results


def test_report_cli_without_check_and_bad_check(tmp_path):
    p = save(synth_v2(["numpy-f32"]), tmp_path / "r.json")
    r = lstmbench("report", str(p), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Equivalence" not in html and "did not run" not in html
    assert not (tmp_path / "rep" / "throughput_batch.png").exists()  # no batch sweep in smoke
    (tmp_path / "bad.json").write_text("{")
    r = lstmbench("report", str(p), "--out", "rep2", "--check", "bad.json", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "rep2").exists()
    r = lstmbench("report", "missing.json", "--out", "rep3", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("lstmbench: error: ")
    assert not (tmp_path / "rep3").exists()


# ---- quality results (schema lstmbench.quality, harness.report.quality) -----------------

def synth_quality(path: Path) -> Path:
    """A quality file as harness.training.quality writes it: two backends following docs/SPEC.md §4, one with
    a native optimiser, one that failed, one with a NaN loss and one missing a field."""
    def ok(steps_to, secs, final, dev=None, sample="\nROMEO.\nWhat say!\n"):
        curve = [{"step": s, "seconds": round(s * secs / 200, 3), "train_loss": None if s == 0 else 3.0 - s / 200,
                  "val_loss": 4.43 - s * (4.43 - final) / 300} for s in (0, 100, 200, 300)]
        return {"status": "ok", "steps": 300, "train_seconds": 1.5 * secs, "first_step_s": 0.2,
                "median_step_s": secs / 200, "chars_per_s": 2500 * 200 / secs,
                "steps_to_target": steps_to, "seconds_to_target": None if steps_to is None else steps_to * secs / 200,
                "estimate_s_to_target": None if steps_to is None else steps_to * secs / 200 * 0.9,
                "final_val_loss": final, "final_val_bpc": final / math.log(2), "best_val_loss": final,
                "curve": curve, "train_losses": [3.0] * 300, "sample": sample, "optimizer_deviation": dev}
    nan = ok(200, 10.0, 2.0)
    nan["curve"][2]["val_loss"] = float("nan")
    missing = ok(200, 10.0, 2.0)
    del missing["final_val_bpc"]
    doc = {"schema": "lstmbench.quality", "schema_version": 1, "created": "2026-11-23T20:00:00+00:00",
           "machine": {"slug": "test-machine"}, "threads": 1, "device": "cpu",
           "matrix": {"name": "quality", "preset": "char-rnn", "corpus": "shakespeare", "steps": 300,
                      "eval_every": 100, "target_loss": 2.5, "seed": 0, "val_chars": 5000},
           "model": {"preset": "char-rnn", "batch_size": 50, "seq_len": 50, "num_layers": 2,
                     "hidden_size": 128, "vocab_size": 84, "optimizer": {"name": "rmsprop", "lr": 0.002}},
           "backends": {"torch": ok(200, 20.0, 1.9),
                        "jax": ok(200, 10.0, 1.95),
                        "tensorflow": ok(None, 8.0, 2.6, dev="Keras RMSprop adds epsilon inside the root: lr*g/sqrt(v+eps)"),
                        "chainer": {"status": "timeout", "error": "no result within 1500 s", "optimizer_deviation": None},
                        "flax": nan, "keras-jax": missing},
           "comparison": {"spec_band": [1.9, 1.95], "deviating": {"tensorflow": {
               "final_val_loss": 2.6, "outside_band_by": 0.65, "cause": "eps inside"}}},
           "interrupted": False}
    path.write_text(json.dumps(doc, indent=1))  # NaN written as NaN, as json.dumps does
    return path


def test_quality_report_curves_table_samples_and_noted_skips(tmp_path):
    synth_quality(tmp_path / "20261123T200000Z-quality-cpu.json")
    r = lstmbench("report", str(tmp_path), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = tmp_path / "rep"
    png = rep / "20261123T200000Z-quality-cpu-curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    rows = (rep / "20261123T200000Z-quality-cpu-table.md").read_text().splitlines()
    assert rows[0].startswith("| backend | optimiser | steps to 2.5 | s to target (measured) |")
    # steps to target; measured s = 200 x median step; estimate 0.9 x that; final; bits; chars/s
    assert rows[2] == "| torch | docs/SPEC.md §4 | 200 | 20.0 | 18.0 | 1.9000 | 2.741 | 1.9000 | 25,000 |"
    assert rows[3] == "| jax | docs/SPEC.md §4 | 200 | 10.0 | 9.0 | 1.9500 | 2.813 | 1.9500 | 50,000 |"
    assert rows[4] == ("| tensorflow | native: Keras RMSprop adds epsilon inside the root | not reached | "
                       "- | - | 2.6000 | 3.751 | 2.6000 | 62,500 |")
    assert len(rows) == 5  # chainer (timeout), flax (NaN), keras-jax (a field missing): left out
    md = (rep / "report.md").read_text()
    assert "chainer: left out (timeout: no result within 1500 s)" in md
    assert "flax: left out (val_loss is nan at step 200)" in md
    assert "keras-jax: left out (missing field final_val_bpc)" in md
    assert "tensorflow (native optimiser): 2.6000, 0.6500 outside it" in md
    assert md.count("```\n\nROMEO.\nWhat say!\n```") == 3  # each drawable backend's sample
    assert "## Results" not in md and "Machine noise" not in md  # no benchmark files given
    html = (rep / "report.html").read_text()
    assert base64.b64encode(png.read_bytes()).decode() in html and "<pre>\nROMEO." in html


def test_quality_and_benchmark_results_in_one_report(tmp_path):
    q = synth_quality(tmp_path / "q.json")
    p = save(synth_v2(["numpy-f32"]), tmp_path / "r.json")
    r = lstmbench("report", str(p), str(q), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Results" in md and "## Training to quality: quality (q.json)" in md
    assert (tmp_path / "rep" / "q-curves.png").is_file()


@pytest.mark.parametrize("bad,message", [
    ("version", "quality schema version 99"), ("target", "without a matrix target_loss"),
    ("backends", "without a backends table"), ("json", "not readable JSON")])
def test_bad_quality_files_fail_in_one_line_before_writing(tmp_path, bad, message):
    p = synth_quality(tmp_path / "q.json")
    doc = json.loads(p.read_text())
    if bad == "version":
        doc["schema_version"] = 99
    elif bad == "target":
        doc["matrix"]["target_loss"] = float("nan")
    elif bad == "backends":
        doc["backends"] = ["torch"]
    p.write_text(json.dumps(doc) + ("}" if bad == "json" else ""))
    r = lstmbench("report", str(p), "--out", "rep", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("lstmbench: error: ") and len(r.stderr.strip().splitlines()) == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "rep").exists() and not list(tmp_path.glob(".rep.*"))
