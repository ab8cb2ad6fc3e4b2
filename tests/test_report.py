"""`lstmbench report`: Markdown, self-contained HTML (plots embedded) and PNGs from results
files; failed cells listed, not plotted; the equivalence table from `check --json` output."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from harness.report import write_report
from harness.results import write_results
from tests.test_compare import SWEEP, lstmbench, real_run, synth_doc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_json(path: Path) -> Path:
    """A `lstmbench check --json` report (harness.check's layout: rows as impls.case.Row)."""
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


def test_report_files_plots_failures_and_equivalence(tmp_path):
    doc = synth_doc(["numpy-f32", "torch", "jax"], matrix=SWEEP, threads=2,
                    failed={"jax/train/smoke/B8xT16": "timeout", "torch/generate/smoke/B1xT30": "oom"})
    synth = write_results(doc, tmp_path / "synth.json")
    out = tmp_path / "rep"
    html_path = write_report([str(synth), str(real_run())], out, check_json(tmp_path / "check.json"),
                             log=lambda s: None)
    assert html_path == out / "report.html"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["efficiency.png", "first_step.png", "generate_latency.png", "memory.png",
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
        # the header, the failures with their errors, the equivalence table
        assert "AMD" in text or "CPU" in text
        assert "timeout" in text and "oom" in text and "synthetic failure" in text
        assert "Equivalence against the float64 reference" in text
        assert "8.8e-01 deviation" in text and "unavailable: No module named" in text
        assert "RuntimeError: boom" in text
    # runs with different thread counts are told apart, not pooled
    assert "jax (2 threads)" in html and "numpy-f32 (1 thread)" in html and "numpy-f32 (2 threads)" in html


def test_report_cli_without_check_and_bad_check(tmp_path):
    p = write_results(synth_doc(["numpy-f32"]), tmp_path / "r.json")
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
