"""Training on real text, end to end, on every available backend (tiny preset, a small corpus
in tmp): the loss falls; the same training gives the same checkpoint on every backend; a
checkpoint written by any backend evaluates to the same validation loss (float32 tolerance
against the float64 reference) and samples the same text (same uniforms) on every other;
the log, run.json, Ctrl-C, the `train`/`evaluate`/`sample` commands and their one-line
errors; and a tiny quality matrix."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.training import loop as tr
from harness.cli import main
from harness.envs.interpreters import ROOT, interpreter_for, worker_env
from impls import registry
from impls.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from impls.config import get_preset
from impls.tolerances import TOLERANCES, rel_error

STEPS, EVAL_EVERY = 30, 10
LOSS_TOL = TOLERANCES["float32"]["loss"].rel
STEP_TOL = TOLERANCES["float32"]["steps"].rel


def _text(n: int = 3000) -> str:
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "it"]
    out, size = [], 0
    while size < n:
        line = " ".join(rng.choice(words, size=rng.integers(3, 8))) + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out)[:n]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    old = os.environ.get("LSTMBENCH_CACHE")
    os.environ["LSTMBENCH_CACHE"] = str(d / "cache")  # children inherit it; ~/.cache stays clean
    f = d / "tiny.txt"
    f.write_text(_text())
    yield str(f)
    if old is None:
        os.environ.pop("LSTMBENCH_CACHE", None)
    else:
        os.environ["LSTMBENCH_CACHE"] = old


def _child_env(backend: str) -> dict[str, str]:
    env = worker_env(1)
    env.update(getattr(registry.get_spec(backend), "env_vars", {}) or {})
    env[tr._CHILD] = "1"
    return env


def _where(backend: str) -> str | None:
    """'here', 'child' (its own interpreter), or None (not available on this machine)."""
    if tr.runs_here(backend):
        return "here"
    spec = registry.get_spec(backend)
    if spec.env == "main" and not getattr(spec, "env_vars", None):
        return None  # its framework is not installed here
    try:
        interpreter_for(backend)
    except registry.BackendError:
        return None
    return "child"


def _trainable(backend: str) -> bool:
    unsupported = getattr(registry, "unsupported", None)
    return unsupported is None or not unsupported(backend, mode="train")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file) -> dict[str, Path]:
    """Backend -> checkpoint after STEPS steps of the tiny preset."""
    root = tmp_path_factory.mktemp("runs")
    preset = get_preset("tiny")
    from harness.training.corpus import prepare
    corpus = prepare(corpus_file)
    out: dict[str, Path] = {}
    for b in registry.BACKENDS:
        where = _where(b) if _trainable(b) else None
        if where is None:
            continue
        d = root / b
        if where == "here":
            tr.train(b, preset, corpus, d, steps=STEPS, eval_every=EVAL_EVERY, val_chars=0,
                     threads=1, progress="off", sample_chars=20)
        else:
            r = subprocess.run([interpreter_for(b), "-m", "harness", "train", "--backend", b,
                                "--preset", "tiny", "--corpus", corpus_file, "--out", str(d),
                                "--steps", str(STEPS), "--eval-every", str(EVAL_EVERY),
                                "--val-chars", "0", "--threads", "1", "--no-progress"],
                               cwd=ROOT, env=_child_env(b), capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{b}: {r.stderr[-2000:]}"
        out[b] = d
    assert "numpy" in out and len(out) >= 2
    return out


def test_training_lowers_the_validation_loss_on_every_backend(trained):
    for b, d in trained.items():
        evals = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [0, 10, 20, 30], b
        first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
        # ln(V) = 2.77 at the start (near-uniform outputs); 30 steps of the tiny model reach
        # 2.49 on every backend (the unigram entropy of this text is 2.44)
        assert abs(first - np.log(load_checkpoint(d / "checkpoint.npz").model.vocab_size)) < 0.1, b
        assert last < first - 0.25, f"{b}: {first} -> {last}"
        assert evals[-1]["val_bpc"] == pytest.approx(last / np.log(2))
        run = json.loads((d / "run.json").read_text())
        assert run["steps"] == STEPS and len(run["train_losses"]) == STEPS and run["stopped"] == "steps"


def test_same_training_gives_the_same_checkpoint_everywhere(trained):
    ref = load_checkpoint(trained["numpy"] / "checkpoint.npz")
    for b, d in trained.items():
        ck = load_checkpoint(d / "checkpoint.npz")
        assert ck.info["step"] == STEPS and ck.info["backend"] == b and ck.vocab == ref.vocab
        for name, v in ref.params.items():
            rel, _ = rel_error(ck.params[name], v)
            assert rel <= STEP_TOL, f"{b} {name}: {rel:.2e}"


def _evaluate_all(evaluator: str, paths: list[str], corpus: str) -> list[dict]:
    if _where(evaluator) == "here":
        return tr.evaluate_checkpoints(evaluator, paths, corpus, val_chars=0, sample_n=40, threads=1)
    code = ("import json, sys; from harness.training.loop import evaluate_checkpoints as e; "
            "print(json.dumps(e(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], val_chars=0, "
            "sample_n=40, threads=1)))")
    r = subprocess.run([interpreter_for(evaluator), "-c", code, evaluator, json.dumps(paths), corpus],
                       cwd=ROOT, env=_child_env(evaluator), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_checkpoints_move_between_backends(trained, corpus_file):
    """Every checkpoint on every backend: validation loss within the float32 tolerance of
    the float64 reference's, and the same sample from the same uniforms."""
    paths = [str(d / "checkpoint.npz") for d in trained.values()]
    ref = _evaluate_all("numpy", paths, corpus_file)
    for evaluator in trained:
        if evaluator == "numpy":
            continue
        got = _evaluate_all(evaluator, paths, corpus_file)
        for g, r in zip(got, ref):
            rel = abs(g["val_loss"] - r["val_loss"]) / r["val_loss"]
            assert rel <= LOSS_TOL, f"{g['checkpoint']} on {evaluator}: {rel:.2e}"
            assert g["sample"] == r["sample"], f"{g['checkpoint']} on {evaluator}: sample differs"


def test_train_evaluate_sample_commands(tmp_path, corpus_file, capfd):
    out = tmp_path / "run"
    assert main(["train", "--backend", "numpy-f32", "--preset", "tiny", "--corpus", corpus_file,
                 "--out", str(out), "--steps", "12", "--eval-every", "5", "--val-chars", "0",
                 "--no-progress", "--threads", "1"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 5, 10, 12]  # the last step is always evaluated
    assert set(log[-1]) >= {"step", "seconds", "train_loss", "val_loss", "val_bpc"}
    assert log[-1]["seconds"] >= log[1]["seconds"] > 0
    printed = capfd.readouterr().out.splitlines()
    at = next(i for i, ln in enumerate(printed) if ln.startswith("sample: "))
    assert printed[at - 1] == "" and "drawn by numpy-f32 from the checkpoint of step 12" in printed[at]
    assert "\n".join(printed[at + 1:]).strip()  # the text itself follows its heading
    j = tmp_path / "eval.json"
    assert main(["evaluate", str(out / "checkpoint.npz"), "--backend", "numpy", "--corpus",
                 corpus_file, "--val-chars", "0", "--json", str(j)]) == 0
    assert "bits/char" in capfd.readouterr().out
    doc = json.loads(j.read_text())
    assert doc["val_loss"] == pytest.approx(log[-1]["val_loss"], rel=LOSS_TOL)
    assert main(["sample", str(out), "--backend", "numpy-f32", "--prime", "the ", "-n", "30",
                 "--seed", "3", "--top-k", "3"]) == 0
    a = capfd.readouterr().out
    assert main(["sample", str(out / "checkpoint.npz"), "--prime", "the ", "-n", "30",
                 "--seed", "3", "--top-k", "3"]) == 0
    assert capfd.readouterr().out == a and a.startswith("the ") and len(a.rstrip("\n")) >= 30
    # an existing run is never overwritten
    assert main(["train", "--backend", "numpy-f32", "--preset", "tiny", "--corpus", corpus_file,
                 "--out", str(out), "--steps", "2"]) == 2
    assert "already holds a training run" in capfd.readouterr().err


def test_bad_checkpoints_give_one_line_and_exit_2(tmp_path, corpus_file, capsys, trained):
    ck = load_checkpoint(trained["numpy"] / "checkpoint.npz")
    bad = tmp_path / "shape.npz"
    save_checkpoint(ck, bad)
    z = dict(np.load(bad))
    z["param/out.W"] = z["param/out.W"][:, :-1]  # another model's shape
    np.savez(bad, **z)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    other = tmp_path / "other.txt"
    other.write_text("XYZ " * 500)
    cases = [(["evaluate", str(bad)], "has shape"),
             (["evaluate", str(junk)], "not a readable checkpoint"),
             (["evaluate", str(tmp_path / "none.npz")], "no such checkpoint"),
             (["evaluate", str(trained["numpy"]), "--corpus", str(other)], "vocabulary lacks"),
             (["sample", str(trained["numpy"]), "--prime", "Q"], "not in the vocabulary")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_interrupt_keeps_the_last_checkpoint_and_the_log(tmp_path, corpus_file, monkeypatch):
    from harness.training.corpus import prepare
    real = tr.make_backend

    def interrupting(*args, **kw):
        be = real(*args, **kw)
        step = be.train_step
        calls = {"n": 0}

        def train_step(*a):
            calls["n"] += 1
            if calls["n"] == 8:
                raise KeyboardInterrupt
            return step(*a)
        be.train_step = train_step
        return be

    monkeypatch.setattr(tr, "make_backend", interrupting)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tr.train("numpy-f32", get_preset("tiny"), prepare(corpus_file), out, steps=20,
                 eval_every=5, val_chars=0, progress="off")
    assert load_checkpoint(out / "checkpoint.npz").info["step"] == 5
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [0, 5]
    run = json.loads((out / "run.json").read_text())
    assert run["stopped"] == "interrupted" and run["steps"] == 7 and run["checkpoint_step"] == 5


def test_target_loss_stops_training(tmp_path, corpus_file, trained):
    from harness.training.corpus import prepare
    evals = [json.loads(x) for x in (trained["numpy-f32"] / "log.jsonl").read_text().splitlines()]
    target = evals[2]["val_loss"] + 1e-4  # reached at step 20 in the full run
    doc = tr.train("numpy-f32", get_preset("tiny"), prepare(corpus_file), tmp_path / "t",
                   target_loss=target, eval_every=EVAL_EVERY, val_chars=0, progress="off")
    assert doc["stopped"] == "target" and doc["reached_step"] == 20 and doc["steps"] == 20


def test_quality_matrix_tiny(tmp_path, corpus_file, trained):
    from harness.training.quality import QualityConfig, run_quality
    evals = [json.loads(x) for x in (trained["numpy-f32"] / "log.jsonl").read_text().splitlines()]
    target = evals[2]["val_loss"] + 1e-4
    backends = [b for b in ("numpy-f32", "torch") if b in trained]
    cfg = QualityConfig("quality-test", "tiny", corpus_file, steps=STEPS, eval_every=EVAL_EVERY,
                        target_loss=target, val_chars=0, timeout_s=300)
    path = run_quality(cfg, backends, tmp_path / "results", threads=1, log=lambda s: None)
    doc = json.loads(path.read_text())
    assert doc["schema"] == "lstmbench.quality" and path.parent.parent == tmp_path / "results"
    for b in backends:
        r = doc["backends"][b]
        assert r["status"] == "ok", r
        assert r["steps_to_target"] == 20 and r["seconds_to_target"] > 0
        assert [c["step"] for c in r["curve"]] == [0, 10, 20, 30]
        assert r["final_val_loss"] == pytest.approx(evals[-1]["val_loss"], rel=1e-5)
        assert r["sample"] and len(r["train_losses"]) == STEPS
    # a second run never overwrites the first
    again = run_quality(cfg, backends[:1], tmp_path / "results", threads=1, log=lambda s: None)
    assert again != path and path.is_file()
