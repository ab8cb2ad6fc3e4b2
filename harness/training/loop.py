"""Training to quality on real text: `lstmbench train`, `evaluate` and `sample`.

`train` runs one backend on one corpus: the canonical seeded initial parameters
(impls.params.init_params), the preset's optimiser and clip, batches as B contiguous streams
in the same order for every backend (harness.data.Streams), the state carried across
windows (truncated BPTT) and reset where the streams restart. Every K steps it measures the
validation loss (nats and bits per character) on the first `val_chars` characters of the
validation split, appends a line to DIR/log.jsonl and replaces DIR/checkpoint.npz
(impls.checkpoint: portable to every backend). DIR/run.json holds the per-step losses and
times and a sample when the run ends (also on Ctrl-C, which keeps the last checkpoint and
the log and exits with status 130).

Where it runs: in this process when the backend's framework imports here (and the
backend's environment variables, if it declares any, are already set); otherwise the same
command is re-run with the backend's own interpreter (harness.envs.interpreter_for: e.g.
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
from impls.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from impls.config import ModelConfig, Preset, get_preset
from impls.files import temp_beside
from impls.params import init_params

from .corpus import Corpus, DataError, Streams, encode, prepare
from ..engine.envs import UsageError, harness_command, interpreter_for, parse_python_overrides, worker_env

VAL_CHARS = 100_000  # validation characters evaluated by default (0: the whole split)
SAMPLE_CHARS = 300  # characters sampled at the end of a run
_CHILD = "LSTMBENCH_TRAIN_CHILD"  # set in a re-run command, so it never re-runs again


# ---- the backend, here or in its own interpreter ------------------------------------

def runs_here(name: str) -> bool:
    """True when backend `name` can be created in this process."""
    spec = registry.get_spec(name)
    env_vars = getattr(spec, "env_vars", {}) or {}
    if any(os.environ.get(k) != v for k, v in env_vars.items()):
        return False  # e.g. KERAS_BACKEND must be set before the framework is imported
    return registry.availability(name)[0]


def make_backend(name: str, model: ModelConfig, preset_train: Any, params: Any, *, seed: int,
                 threads: int | None, **extra: Any) -> Any:
    """Configure the framework once (threads) and create the backend in this process;
    `extra` goes to its constructor (e.g. NumpyBackend's eps_form)."""
    from ..engine.worker import configure_backend
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
    """Run `lstmbench ARGV` (harness.envs.harness_command) with the backend's interpreter and
    environment; its exit status. Only ever one level deep."""
    spec = registry.get_spec(name)
    if os.environ.get(_CHILD):
        ok, why = registry.availability(name)
        raise registry.BackendError(f"backend {name} cannot run in {sys.executable} ({why}); "
                                    f"pass --python {name}=/path/to/its/python")
    python = interpreter_for(name, overrides)
    if python == sys.executable and not getattr(spec, "env_vars", None):
        registry.load_module(spec)  # the framework is missing here: its own message
    try:
        env = worker_env(threads, backend=name)  # type: ignore[call-arg]
    except TypeError:
        env = worker_env(threads)
    env.update(getattr(spec, "env_vars", {}) or {})
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


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomic: a temporary file beside `path` (impls.files), fsynced, renamed over it."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train(backend: str, preset: Preset, corpus: Corpus, out: Path, *, steps: int | None = None,
          target_loss: float | None = None, minutes: float | None = None, eval_every: int = 100,
          seed: int = 0, val_chars: int = VAL_CHARS, threads: int | None = None,
          progress: str = "bar", sample_chars: int = SAMPLE_CHARS) -> dict[str, Any]:
    """Train in this process; returns run.json's document. KeyboardInterrupt propagates
    after the log, run.json and the last checkpoint are in place."""
    if steps is None and target_loss is None and minutes is None:
        raise UsageError("say when to stop: --steps N, --target-loss X or --minutes M")
    if (steps is not None and steps <= 0) or (minutes is not None and minutes <= 0) \
            or (target_loss is not None and target_loss <= 0) or eval_every <= 0:
        raise UsageError("--steps, --minutes, --target-loss and --eval-every must be positive")
    if (out / "log.jsonl").exists():
        raise UsageError(f"{out} already holds a training run (log.jsonl); choose another --out")
    B, T = preset.batch_size, preset.seq_len
    model = replace(preset.model, vocab_size=corpus.vocab_size)  # V comes from the corpus
    streams = Streams(corpus.train, B, T)
    val = validation_ids(corpus, val_chars)
    Streams(val, B, T)  # too small a validation split fails here, before any training
    params = init_params(model, seed)
    be = make_backend(backend, model, preset.train, params, seed=seed, threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    log_path, ck_path = out / "log.jsonl", out / "checkpoint.npz"
    corpus_info = {k: v for k, v in corpus.summary().items() if k != "vocab"}
    info = {"backend": backend, "preset": preset.name, "corpus": corpus_info, "seed": seed,
            "python": sys.version.split()[0]}
    doc: dict[str, Any] = {
        "backend": backend, "preset": preset.name, "batch_size": B, "seq_len": T, "seed": seed,
        "corpus": corpus_info, "val_chars_used": int(val.size), "eval_every": eval_every,
        "limits": {"steps": steps, "target_loss": target_loss, "minutes": minutes},
        "model": json.loads(Checkpoint(model, preset.train, T, B, corpus.vocab, params, {}).spec_json()),
        "python": sys.version.split()[0], "step_seconds": [], "train_losses": [], "evals": []}
    bar = _Progress(steps, progress, backend)
    state = zero_state(be, model, B)
    train_s, since, reached, stopped = 0.0, [], None, "steps"
    wall0 = time.perf_counter()
    step = 0

    def evaluate_and_save() -> dict[str, Any]:
        v = evaluate_loss(be, model, val, B, T)
        rec = {"step": step, "seconds": round(train_s, 6), "wall_s": round(time.perf_counter() - wall0, 3),
               "train_loss": float(np.mean(since)) if since else None, "val_loss": v,
               "val_bpc": bits(v), "chars": step * B * T,
               "chars_per_s": step * B * T / train_s if train_s > 0 else None}
        if not math.isfinite(v):
            raise registry.BackendError(f"backend {backend}: validation loss is {v} at step {step} "
                                        "(training diverged); the last good checkpoint is kept")
        save_checkpoint(Checkpoint(model, preset.train, T, B, corpus.vocab, be.params(),
                                   {**info, "step": step, "val_loss": v}), ck_path)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        doc["evals"].append(rec)
        since.clear()
        tl = "-" if rec["train_loss"] is None else f"{rec['train_loss']:.4f}"
        bar.line(f"step {step:6d}  train {tl:>6}  val {v:.4f} nats "
                 f"({bits(v):.3f} bits/char)  "
                 + (f"{rec['chars_per_s']:,.0f} chars/s" if rec["chars_per_s"] else ""))
        return rec

    try:
        evaluate_and_save()  # step 0: the initial loss, and a checkpoint from the start
        while True:
            if steps is not None and step >= steps:
                stopped = "steps"
                break
            if minutes is not None and time.perf_counter() - wall0 >= minutes * 60:
                stopped = "minutes"
                break
            if streams.starts_epoch(step) and step > 0:
                state = zero_state(be, model, B)  # the streams restart: so does the state
            x, y = streams.window(step)
            t0 = time.perf_counter()
            loss, state = be.train_step(be.put(x), be.put(y), state)
            lv = be.value(loss)  # fetches the scalar: the step has finished on the device
            be.sync()
            dt = time.perf_counter() - t0
            train_s += dt
            step += 1
            since.append(lv)
            doc["step_seconds"].append(dt)
            doc["train_losses"].append(lv)
            if not math.isfinite(lv):
                raise registry.BackendError(f"backend {backend}: training loss is {lv} at step "
                                            f"{step} (diverged); the last good checkpoint is kept")
            bar.step(loss=f"{lv:.3f}", cps=f"{B * T / dt:,.0f}")
            if step % eval_every == 0:
                rec = evaluate_and_save()
                if target_loss is not None and rec["val_loss"] <= target_loss:
                    reached, stopped = step, "target"
                    break
        if not doc["evals"] or doc["evals"][-1]["step"] != step:
            rec = evaluate_and_save()
            if target_loss is not None and rec["val_loss"] <= target_loss and reached is None:
                reached = step
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    finally:
        bar.close()
        doc.update(steps=step, train_seconds=train_s, wall_s=time.perf_counter() - wall0,
                   stopped=stopped, reached_step=reached,
                   final_val_loss=doc["evals"][-1]["val_loss"] if doc["evals"] else None,
                   checkpoint_step=doc["evals"][-1]["step"] if doc["evals"] else None)
        if doc["evals"]:
            doc["final_val_bpc"] = bits(doc["evals"][-1]["val_loss"])
        if stopped != "interrupted" and sample_chars > 0 and out.exists():
            try:
                doc["sample"] = sample_text(be, corpus.vocab, default_prime(corpus.vocab),
                                            sample_chars, 1.0, 0, seed)
            except Exception as e:  # noqa: BLE001 - a sample is a nicety; the run stands
                doc["sample_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        if out.exists():
            _write_json(out / "run.json", doc)
        if stopped == "interrupted":
            print(f"interrupted at step {step}: kept {ck_path} (step {doc.get('checkpoint_step')}) "
                  f"and {log_path}", file=sys.stderr)
    return doc


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


# ---- commands ------------------------------------------------------------------------

class terminate_as_interrupt:
    """SIGTERM (a job scheduler, `kill`) stops training like Ctrl-C: the last checkpoint,
    the log and run.json are kept. Also the only stop a background job has, whose SIGINT
    the shell ignores."""

    def __enter__(self) -> None:
        import signal
        import threading
        self.old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt
            self.old = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, *exc: Any) -> None:
        import signal
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def _common(a: Any) -> tuple[dict[str, str], int | None]:
    return parse_python_overrides(getattr(a, "python", None)), getattr(a, "threads", None)


def _opt(flag: str, v: Any) -> list[str]:
    return [] if v is None else [flag, str(v)]


def _pythons(a: Any) -> list[str]:
    return [x for p in (getattr(a, "python", None) or []) for x in ("--python", p)]


def cmd_train(a: Any) -> int:
    overrides, threads = _common(a)
    # BLAS and OpenMP pools are sized when NumPy is imported: a process whose environment
    # does not pin them to --threads re-runs itself with them pinned (as a worker is)
    pinned = not threads or os.environ.get("OPENBLAS_NUM_THREADS") == str(threads)
    get_preset(a.preset), a.optimizer_from and get_preset(a.optimizer_from)  # bad input fails here,
    registry.get_spec(a.backend)                                            # before any re-run
    if a.steps is None and a.target_loss is None and a.minutes is None:
        raise UsageError("say when to stop: --steps N, --target-loss X or --minutes M")
    if (Path(a.out) / "log.jsonl").exists():
        raise UsageError(f"{a.out} already holds a training run (log.jsonl); choose another --out")
    if not runs_here(a.backend) or a.backend in overrides or not (pinned or os.environ.get(_CHILD)):
        argv = ["train", "--backend", a.backend, "--preset", a.preset, "--corpus", a.corpus,
                "--out", a.out, *_opt("--steps", a.steps), *_opt("--target-loss", a.target_loss),
                *_opt("--minutes", a.minutes), *_opt("--optimizer-from", a.optimizer_from), "--eval-every", str(a.eval_every), "--seed",
                str(a.seed), "--val-chars", str(a.val_chars), *_opt("--threads", threads),
                *(["--no-progress"] if a.no_progress else [])]
        return rerun_elsewhere(a.backend, argv, threads, overrides)
    preset = get_preset(a.preset)
    if a.optimizer_from:  # e.g. char-rnn sizes with the tutorial's Adam
        preset = replace(preset, train=get_preset(a.optimizer_from).train)
    corpus = prepare(a.corpus)
    with terminate_as_interrupt():
        doc = train(a.backend, preset, corpus, Path(a.out), steps=a.steps, target_loss=a.target_loss,
                    minutes=a.minutes, eval_every=a.eval_every, seed=a.seed, val_chars=a.val_chars,
                    threads=threads, progress="lines" if a.no_progress else "bar")
    print(f"{a.backend}: {doc['steps']} steps in {doc['train_seconds']:.1f} s of training "
          f"({doc['wall_s']:.1f} s wall); validation {doc['final_val_loss']:.4f} nats "
          f"({doc['final_val_bpc']:.3f} bits/char); wrote {Path(a.out) / 'checkpoint.npz'}, "
          f"log.jsonl, run.json")
    if doc.get("sample"):
        prime = default_prime(corpus.vocab)
        print(f"\nsample: {len(doc['sample']) - len(prime)} characters drawn by {a.backend} from the "
              f"checkpoint of step {doc.get('checkpoint_step')} (temperature 1, seed {a.seed}, primed "
              f"with {prime!r}; `lstmbench sample {Path(a.out)}` draws more):")
        print(doc["sample"])
    elif doc.get("sample_error"):
        print(f"\nno sample: drawing one failed ({doc['sample_error']})")
    return 0


def cmd_evaluate(a: Any) -> int:
    overrides, threads = _common(a)
    ck = load_checkpoint(a.checkpoint)  # a bad file fails here, in any environment
    if not runs_here(a.backend) or a.backend in overrides:
        argv = ["evaluate", a.checkpoint, "--backend", a.backend, *_opt("--corpus", a.corpus),
                *_opt("--json", a.json), "--val-chars", str(a.val_chars), *_opt("--threads", threads)]
        return rerun_elsewhere(a.backend, argv, threads, overrides)
    name = a.corpus or ck.info.get("corpus", {}).get("name")
    if not name:
        raise UsageError("the checkpoint names no corpus; give --corpus")
    corpus = prepare(name)
    unknown = sorted(set(corpus.vocab) - set(ck.vocab))
    if unknown:
        raise CheckpointError(f"corpus {name!r} has characters the checkpoint's vocabulary lacks "
                              f"({''.join(unknown[:10])!r}); evaluate on the corpus it was trained on")
    # encode with the checkpoint's vocabulary; the split is by position, as in training
    ids = encode(corpus.vocab, ck.vocab)[corpus.ids]  # corpus id -> checkpoint id
    val = ids[corpus.n_train:]
    val = val[:a.val_chars] if a.val_chars > 0 else val
    be = make_backend(a.backend, ck.model, ck.train, ck.params, seed=0, threads=threads)
    loss = evaluate_loss(be, ck.model, val, ck.batch_size, ck.seq_len)
    doc = {"checkpoint": str(Path(a.checkpoint).resolve()), "backend": a.backend, "corpus": name,
           "corpus_sha256": corpus.sha256, "val_chars": int(val.size), "val_loss": loss,
           "val_bpc": bits(loss), "step": ck.info.get("step"), "trained_on": ck.info.get("backend")}
    if corpus.sha256 != ck.info.get("corpus", {}).get("sha256"):
        print(f"note: corpus {name!r} is not the text the checkpoint was trained on", file=sys.stderr)
    print(f"validation loss {loss:.6f} nats/char, {bits(loss):.6f} bits/char ({a.backend}, "
          f"{name}, {val.size:,} characters, checkpoint step {ck.info.get('step')} "
          f"trained on {ck.info.get('backend')})")
    if a.json:
        from impls.case import write_new
        data = json.dumps(doc, indent=1).encode()
        write_new(a.json, lambda f: f.write(data))
    return 0


def cmd_sample(a: Any) -> int:
    overrides, threads = _common(a)
    ck = load_checkpoint(a.checkpoint)
    if a.n <= 0 or a.temperature < 0 or a.top_k < 0:
        raise UsageError("-n must be positive, --temperature and --top-k at least 0")
    if not runs_here(a.backend) or a.backend in overrides:
        argv = ["sample", a.checkpoint, "--backend", a.backend, *_opt("--prime", a.prime),
                "--temperature", str(a.temperature), "--top-k", str(a.top_k), "-n", str(a.n),
                "--seed", str(a.seed), *_opt("--threads", threads)]
        return rerun_elsewhere(a.backend, argv, threads, overrides)
    prime = a.prime if a.prime is not None else default_prime(ck.vocab)
    try:
        encode(prime, ck.vocab)
    except DataError as e:
        raise UsageError(f"--prime: {e}") from None
    be = make_backend(a.backend, ck.model, ck.train, ck.params, seed=0, threads=threads)
    print(sample_text(be, ck.vocab, prime, a.n, a.temperature, a.top_k, a.seed))
    return 0


def add_parsers(sub: Any) -> None:
    """data, train, evaluate, sample: called by harness.cli.build_parser."""
    from .corpus import add_parser as add_data
    add_data(sub)
    default_threads = os.cpu_count() or 1

    def common(p: Any) -> None:
        p.add_argument("--threads", type=int, default=default_threads,
                       help=f"threads for the framework (default {default_threads})")
        p.add_argument("--python", action="append", metavar="BACKEND=INTERPRETER",
                       help="run BACKEND with this interpreter")

    p = sub.add_parser("train", help="train one backend on a corpus; checkpoint, log, sample")
    p.add_argument("--backend", required=True)
    p.add_argument("--preset", default="char-rnn", help="sizes and optimiser (default char-rnn)")
    p.add_argument("--corpus", required=True, help="shakespeare | python-stdlib | PATH")
    p.add_argument("--out", required=True, help="folder for checkpoint.npz, log.jsonl, run.json")
    p.add_argument("--optimizer-from", metavar="PRESET",
                   help="use this preset's optimiser and clip instead of --preset's")
    p.add_argument("--steps", type=int, help="stop after N optimiser steps")
    p.add_argument("--target-loss", type=float, help="stop when validation loss <= X nats")
    p.add_argument("--minutes", type=float, help="stop after M minutes")
    p.add_argument("--eval-every", type=int, default=100, help="validation every K steps (default 100)")
    p.add_argument("--seed", type=int, default=0, help="initial parameters, dropout, sample (default 0)")
    p.add_argument("--val-chars", type=int, default=VAL_CHARS,
                   help=f"validation characters evaluated (default {VAL_CHARS:,}; 0: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: a line per evaluation")
    common(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="validation loss of a checkpoint on a backend")
    p.add_argument("checkpoint")
    p.add_argument("--backend", default="numpy-f32", help="default numpy-f32")
    p.add_argument("--corpus", help="default: the corpus the checkpoint was trained on")
    p.add_argument("--json", help="also write the result here (must not exist)")
    p.add_argument("--val-chars", type=int, default=VAL_CHARS,
                   help=f"validation characters (default {VAL_CHARS:,}, as train; 0: all)")
    common(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("sample", help="generate text from a checkpoint on a backend")
    p.add_argument("checkpoint")
    p.add_argument("--backend", default="numpy-f32", help="default numpy-f32")
    p.add_argument("--prime", help="text to start from (default a newline)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k largest logits (0: all)")
    p.add_argument("-n", type=int, default=500, help="characters to generate (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the uniforms (default 0)")
    common(p)
    p.set_defaults(fn=cmd_sample)
