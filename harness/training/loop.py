"""Training to quality on real text: `lstmbench train`, `evaluate` and `sample`.

`train` runs one backend on one corpus: the canonical seeded initial parameters
(impls.params.init_params), the preset's optimiser and clip, batches as B contiguous streams
in the same order for every backend (harness.training.corpus.Streams), the state carried across
windows (truncated BPTT) and reset where the streams restart. Every K steps it measures the
validation loss (nats and bits per character) on the first `val_chars` characters of the
validation split, appends a line to DIR/log.jsonl and replaces DIR/checkpoint.npz
(impls.checkpoint: portable to every backend). DIR/run.json holds the per-step losses and
times and a sample when the run ends (also on Ctrl-C, which keeps the last checkpoint and
the log and exits with status 130).

Where it runs: in this process when the backend's framework imports here (and the
backend's environment variables, if it declares any, are already set); otherwise the same
command is re-run with the backend's own interpreter (harness.envs.interpreters.interpreter_for: e.g.
chainer's `.venv-chainer`), which then runs it in-process; also when this process's thread
pools are not pinned to --threads (they are sized at import), as a worker's are. Seconds in the log count only
training steps (host-to-device copy, step, loss fetched to the host, which synchronises);
evaluation time is left out."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from impls import registry
from impls.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from impls.config import ModelConfig, Preset
from impls.files import write_atomic
from impls.params import init_params

from ..engine.bench import configure_backend
from ..envs.interpreters import harness_command, interpreter_for, worker_env
from ..errors import UsageError
from .corpus import Corpus, DataError, Streams, encode, prepare

VAL_CHARS = 100_000  # validation characters evaluated by default (0: the whole split)
SAMPLE_CHARS = 300  # characters sampled at the end of a run
_CHILD = "LSTMBENCH_TRAIN_CHILD"  # set in a re-run command, so it never re-runs again


# ---- the backend, here or in its own interpreter ------------------------------------

def runs_here(name: str) -> bool:
    """True when backend `name` can be created in this process."""
    if registry.env_mismatch(name):
        return False  # e.g. KERAS_BACKEND must be set before the framework is imported
    return registry.availability(name)[0]


def make_backend(name: str, model: ModelConfig, preset_train: Any, params: Any, *, seed: int,
                 threads: int | None, **extra: Any) -> Any:
    """Configure the framework once (threads) and create the backend in this process;
    `extra` goes to its constructor (e.g. NumpyBackend's eps_form)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as in a worker: no C++ log chatter
    try:
        configure_backend(name, threads, "cpu")
    except registry.BackendError:
        raise
    except Exception as e:  # noqa: BLE001 - a framework that fails to set up: one line
        raise registry.BackendError(f"backend {name}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return registry.create(name, model, preset_train, params, seed=seed, **extra)


def rerun_elsewhere(name: str, argv: list[str], threads: int | None,
                    overrides: dict[str, str]) -> int:
    """Run `lstmbench ARGV` (harness.envs.interpreters.harness_command) with the backend's interpreter and
    environment; its exit status. Only ever one level deep."""
    spec = registry.get_spec(name)
    if os.environ.get(_CHILD):
        ok, why = registry.availability(name)
        raise registry.BackendError(f"backend {name} cannot run in {sys.executable} ({why}); "
                                    f"pass --python {name}=/path/to/its/python")
    python = interpreter_for(name, overrides)
    if python == sys.executable and not spec.env_vars:
        registry.load_module(spec)  # the framework is missing here: its own message
    env = worker_env(threads, backend=name)  # the spec's env_vars included
    env[_CHILD] = "1"
    # harness_command, not `python -m harness`: chainer's interpreter has no lstmbench, and a
    # non-editable install's code is not on its path (worker_env names the folder instead)
    proc = subprocess.Popen(harness_command(python, *argv), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save and finish
        proc.wait()
        raise


# ---- evaluation and sampling -----------------------------------------------------------

def zero_state(be: Any, model: ModelConfig, batch: int) -> Any:
    shape = (model.num_layers, batch, model.hidden_size)
    return be.state(np.zeros(shape), np.zeros(shape))


def validation_ids(corpus: Corpus, val_chars: int) -> np.ndarray:
    val = corpus.val
    return val[:val_chars] if val_chars > 0 else val


def evaluate_loss(be: Any, model: ModelConfig, ids: np.ndarray, batch: int, seq_len: int) -> float:
    """Mean cross-entropy (nats per character) over `ids` cut as B contiguous streams of
    T-windows, the state carried from window to window from a zero start (eval mode)."""
    streams = Streams(ids, batch, seq_len)
    state = zero_state(be, model, batch)
    total = 0.0
    for x, y in streams:
        loss, state = be.eval_step(be.put(x), be.put(y), state)
        total += be.value(loss)
    return total / streams.windows  # every window has B*T characters: the mean of means


def sample_text(be: Any, vocab: str, prime: str, n: int, temperature: float, top_k: int,
                seed: int) -> str:
    """`prime` followed by n characters drawn with docs/SPEC.md §5's rule; uniforms from `seed`."""
    if not prime:
        raise UsageError("--prime must hold at least one character")
    try:
        prefix = encode(prime, vocab).astype(np.int64)
    except DataError as e:
        raise UsageError(f"--prime: {e}") from None
    uniforms = np.random.default_rng(seed).random(n)
    ids = be.generate(prefix, n, temperature, top_k, uniforms)
    return prime + "".join(vocab[int(i)] for i in np.asarray(ids).reshape(-1))


def default_prime(vocab: str) -> str:
    return "\n" if "\n" in vocab else vocab[0]


def bits(nats: float) -> float:
    return nats / math.log(2)


def evaluate_checkpoints(backend: str, paths: list[str], corpus: str, *, val_chars: int = VAL_CHARS,
                         sample_n: int = 50, seed: int = 0, threads: int | None = None) -> list[dict[str, Any]]:
    """Validation loss and a sample (temperature 1, uniforms from `seed`) of each checkpoint
    on one backend in this process: one backend object, each checkpoint load()ed in turn.
    All checkpoints must share one model shape (the portability check's case)."""
    cks = [load_checkpoint(p) for p in paths]
    c = prepare(corpus)
    be = None
    out = []
    for path, ck in zip(paths, cks):
        if be is None:
            be = make_backend(backend, ck.model, ck.train, ck.params, seed=seed, threads=threads)
        else:
            be.load(ck.params)
        ids = encode(c.vocab, ck.vocab)[c.ids]
        val = ids[c.n_train:]
        val = val[:val_chars] if val_chars > 0 else val
        loss = evaluate_loss(be, ck.model, val, ck.batch_size, ck.seq_len)
        uniforms = np.random.default_rng(seed).random(sample_n)
        prefix = encode(default_prime(ck.vocab), ck.vocab).astype(np.int64)
        tokens = np.asarray(be.generate(prefix, sample_n, 1.0, 0, uniforms), np.int64).reshape(-1)
        out.append({"checkpoint": path, "backend": backend, "val_loss": loss,
                    "sample": tokens.tolist()})
    return out


# ---- training ------------------------------------------------------------------------

class _Progress:
    """"bar": tqdm where it is installed (the main environment; else lines), with the
    step's loss and throughput; "lines": one line per evaluation; "off": silent."""

    def __init__(self, total: int | None, mode: str, desc: str) -> None:
        self.bar = None
        self.mode = mode
        if mode == "bar":
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="step", desc=desc, file=sys.stderr,
                                dynamic_ncols=True, smoothing=0.1)
            except ImportError:
                self.mode = "lines"

    def step(self, **post: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.mode == "lines":
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_limits(out: Path, steps: int | None, target_loss: float | None, minutes: float | None,
                  eval_every: int) -> None:
    if steps is None and target_loss is None and minutes is None:
        raise UsageError("say when to stop: --steps N, --target-loss X or --minutes M")
    if (steps is not None and steps <= 0) or (minutes is not None and minutes <= 0) \
            or (target_loss is not None and target_loss <= 0) or eval_every <= 0:
        raise UsageError("--steps, --minutes, --target-loss and --eval-every must be positive")
    if (out / "log.jsonl").exists():
        raise UsageError(f"{out} already holds a training run (log.jsonl); choose another --out")


class _Training:
    """One training run in this process: the backend, its windows, the validation characters,
    the log and the checkpoint as it goes, and run.json's document (`doc`)."""

    def __init__(self, backend: str, preset: Preset, corpus: Corpus, out: Path, *, seed: int,
                 val_chars: int, threads: int | None, progress: str, eval_every: int,
                 limits: dict[str, Any]) -> None:
        self.backend, self.preset, self.corpus, self.out, self.seed = backend, preset, corpus, out, seed
        self.B, self.T = B, T = preset.batch_size, preset.seq_len
        self.model = replace(preset.model, vocab_size=corpus.vocab_size)  # V comes from the corpus
        self.streams = Streams(corpus.train, B, T)
        self.val = validation_ids(corpus, val_chars)
        Streams(self.val, B, T)  # too small a validation split fails here, before any training
        params = init_params(self.model, seed)
        self.be = make_backend(backend, self.model, preset.train, params, seed=seed, threads=threads)
        out.mkdir(parents=True, exist_ok=True)
        self.log_path, self.ck_path = out / "log.jsonl", out / "checkpoint.npz"
        corpus_info = {k: v for k, v in corpus.summary().items() if k != "vocab"}
        self.info = {"backend": backend, "preset": preset.name, "corpus": corpus_info, "seed": seed,
                     "python": sys.version.split()[0]}
        self.doc: dict[str, Any] = {
            "backend": backend, "preset": preset.name, "batch_size": B, "seq_len": T, "seed": seed,
            "corpus": corpus_info, "val_chars_used": int(self.val.size), "eval_every": eval_every,
            "limits": limits,
            "model": json.loads(Checkpoint(self.model, preset.train, T, B, corpus.vocab, params, {}).spec_json()),
            "python": sys.version.split()[0], "step_seconds": [], "train_losses": [], "evals": []}
        self.bar = _Progress(limits["steps"], progress, backend)
        self.state = zero_state(self.be, self.model, B)
        self.train_s, self.since, self.reached, self.stopped = 0.0, [], None, "steps"
        self.wall0 = time.perf_counter()
        self.step = 0

    def evaluate_and_save(self) -> dict[str, Any]:
        """The validation loss now, into the log and the document, with a checkpoint."""
        step, B, T, train_s = self.step, self.B, self.T, self.train_s
        v = evaluate_loss(self.be, self.model, self.val, B, T)
        rec = {"step": step, "seconds": round(train_s, 6), "wall_s": round(time.perf_counter() - self.wall0, 3),
               "train_loss": float(np.mean(self.since)) if self.since else None, "val_loss": v,
               "val_bpc": bits(v), "chars": step * B * T,
               "chars_per_s": step * B * T / train_s if train_s > 0 else None}
        if not math.isfinite(v):
            raise registry.BackendError(f"backend {self.backend}: validation loss is {v} at step {step} "
                                        "(training diverged); the last good checkpoint is kept")
        save_checkpoint(Checkpoint(self.model, self.preset.train, T, B, self.corpus.vocab, self.be.params(),
                                   {**self.info, "step": step, "val_loss": v}), self.ck_path)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.doc["evals"].append(rec)
        self.since.clear()
        tl = "-" if rec["train_loss"] is None else f"{rec['train_loss']:.4f}"
        self.bar.line(f"step {step:6d}  train {tl:>6}  val {v:.4f} nats "
                      f"({bits(v):.3f} bits/char)  "
                      + (f"{rec['chars_per_s']:,.0f} chars/s" if rec["chars_per_s"] else ""))
        return rec

    def train_step(self) -> None:
        """One optimiser step on the next window, timed to the loss on the host."""
        be, B, T = self.be, self.B, self.T
        if self.streams.starts_epoch(self.step) and self.step > 0:
            self.state = zero_state(be, self.model, B)  # the streams restart: so does the state
        x, y = self.streams.window(self.step)
        t0 = time.perf_counter()
        loss, self.state = be.train_step(be.put(x), be.put(y), self.state)
        lv = be.value(loss)  # fetches the scalar: the step has finished on the device
        be.sync()
        dt = time.perf_counter() - t0
        self.train_s += dt
        self.step += 1
        self.since.append(lv)
        self.doc["step_seconds"].append(dt)
        self.doc["train_losses"].append(lv)
        if not math.isfinite(lv):
            raise registry.BackendError(f"backend {self.backend}: training loss is {lv} at step "
                                        f"{self.step} (diverged); the last good checkpoint is kept")
        self.bar.step(loss=f"{lv:.3f}", cps=f"{B * T / dt:,.0f}")

    def run(self, steps: int | None, target_loss: float | None, minutes: float | None, eval_every: int) -> None:
        """Step until a limit says stop, evaluating every `eval_every` steps and at the end."""
        self.evaluate_and_save()  # step 0: the initial loss, and a checkpoint from the start
        while True:
            if steps is not None and self.step >= steps:
                self.stopped = "steps"
                break
            if minutes is not None and time.perf_counter() - self.wall0 >= minutes * 60:
                self.stopped = "minutes"
                break
            self.train_step()
            if self.step % eval_every == 0:
                rec = self.evaluate_and_save()
                if target_loss is not None and rec["val_loss"] <= target_loss:
                    self.reached, self.stopped = self.step, "target"
                    break
        if not self.doc["evals"] or self.doc["evals"][-1]["step"] != self.step:
            rec = self.evaluate_and_save()
            if target_loss is not None and rec["val_loss"] <= target_loss and self.reached is None:
                self.reached = self.step

    def close(self, sample_chars: int) -> None:
        """run.json, whatever ended the run (a sample first where it finished)."""
        doc, step = self.doc, self.step
        self.bar.close()
        doc.update(steps=step, train_seconds=self.train_s, wall_s=time.perf_counter() - self.wall0,
                   stopped=self.stopped, reached_step=self.reached,
                   final_val_loss=doc["evals"][-1]["val_loss"] if doc["evals"] else None,
                   checkpoint_step=doc["evals"][-1]["step"] if doc["evals"] else None)
        if doc["evals"]:
            doc["final_val_bpc"] = bits(doc["evals"][-1]["val_loss"])
        if self.stopped != "interrupted" and sample_chars > 0 and self.out.exists():
            try:
                doc["sample"] = sample_text(self.be, self.corpus.vocab, default_prime(self.corpus.vocab),
                                            sample_chars, 1.0, 0, self.seed)
            except Exception as e:  # noqa: BLE001 - a sample is a nicety; the run stands
                doc["sample_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        if self.out.exists():
            write_atomic(self.out / "run.json", json.dumps(doc, indent=1).encode(), replace=True)
        if self.stopped == "interrupted":
            print(f"interrupted at step {step}: kept {self.ck_path} (step {doc.get('checkpoint_step')}) "
                  f"and {self.log_path}", file=sys.stderr)


def train(backend: str, preset: Preset, corpus: Corpus, out: Path, *, steps: int | None = None,
          target_loss: float | None = None, minutes: float | None = None, eval_every: int = 100,
          seed: int = 0, val_chars: int = VAL_CHARS, threads: int | None = None,
          progress: str = "bar", sample_chars: int = SAMPLE_CHARS) -> dict[str, Any]:
    """Train in this process; returns run.json's document. KeyboardInterrupt propagates
    after the log, run.json and the last checkpoint are in place."""
    _check_limits(out, steps, target_loss, minutes, eval_every)
    t = _Training(backend, preset, corpus, out, seed=seed, val_chars=val_chars, threads=threads,
                  progress=progress, eval_every=eval_every,
                  limits={"steps": steps, "target_loss": target_loss, "minutes": minutes})
    try:
        t.run(steps, target_loss, minutes, eval_every)
    except KeyboardInterrupt:
        t.stopped = "interrupted"
        raise
    finally:
        t.close(sample_chars)
    return t.doc


def loss_curve(backend: str, preset: Preset, corpus: Corpus, steps: int, *, seed: int = 0,
               threads: int | None = 1, **extra: Any) -> list[float]:
    """The training loss of every one of `steps` steps, trained exactly as `train` trains
    (same initial parameters, windows, state carrying and resets) but with no evaluation,
    files or timing: the unit of the curve-equivalence check (tests/test_curves.py).
    `extra` goes to the backend's constructor: NumpyBackend(eps_form=...) is the reference
    for a backend whose native optimiser formula deviates from docs/SPEC.md §4."""
    if steps <= 0:
        raise UsageError("steps must be positive")
    model = replace(preset.model, vocab_size=corpus.vocab_size)
    streams = Streams(corpus.train, preset.batch_size, preset.seq_len)
    be = make_backend(backend, model, preset.train, init_params(model, seed), seed=seed,
                      threads=threads, **extra)
    state = zero_state(be, model, preset.batch_size)
    losses = []
    for step in range(steps):
        if streams.starts_epoch(step) and step > 0:
            state = zero_state(be, model, preset.batch_size)
        x, y = streams.window(step)
        loss, state = be.train_step(be.put(x), be.put(y), state)
        losses.append(float(be.value(loss)))
    return losses
