"""`lstmbench train`, `evaluate` and `sample`: one backend trained on a corpus, a checkpoint's
validation loss, text drawn from a checkpoint (harness.training.loop). Each runs in this process
when the backend's framework imports here and this process's thread pools are pinned to
--threads, else re-runs itself in the backend's own interpreter."""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from impls import registry
from impls.checkpoint import CheckpointError, load_checkpoint
from impls.config import get_preset

from ..envs.interpreters import parse_python_overrides
from ..engine.signals import terminate_as_interrupt
from ..errors import UsageError
from ..training.corpus import DataError, encode, prepare
from ..training.loop import (_CHILD, VAL_CHARS, bits, default_prime, evaluate_loss, make_backend,
                             rerun_elsewhere, runs_here, sample_text, train)
from .options import add_json, add_python, add_threads, json_target, text_log, threads_for, write_json


def _common(a: Any) -> tuple[dict[str, str], int | None]:
    return parse_python_overrides(getattr(a, "python", None)), threads_for(getattr(a, "threads", None))


def _opt(flag: str, v: Any) -> list[str]:
    return [] if v is None else [flag, str(v)]


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
    target = json_target(a.json)  # before anything is computed
    log = text_log(target)
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
    log(f"validation loss {loss:.6f} nats/char, {bits(loss):.6f} bits/char ({a.backend}, "
        f"{name}, {val.size:,} characters, checkpoint step {ck.info.get('step')} "
        f"trained on {ck.info.get('backend')})")
    write_json(target, doc, lambda s: None)  # the line above is what evaluate says
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


def add_parser(sub: Any) -> None:
    """train, evaluate, sample: called by harness.cli.build_parser."""
    def common(p: Any) -> None:
        add_threads(p)
        add_python(p)

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
    p.add_argument("--backend", default=registry.REFERENCE, help=f"default {registry.REFERENCE}")
    p.add_argument("--corpus", help="default: the corpus the checkpoint was trained on")
    add_json(p, "the result")
    p.add_argument("--val-chars", type=int, default=VAL_CHARS,
                   help=f"validation characters (default {VAL_CHARS:,}, as train; 0: all)")
    common(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("sample", help="generate text from a checkpoint on a backend")
    p.add_argument("checkpoint")
    p.add_argument("--backend", default=registry.REFERENCE, help=f"default {registry.REFERENCE}")
    p.add_argument("--prime", help="text to start from (default a newline)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k largest logits (0: all)")
    p.add_argument("-n", type=int, default=500, help="characters to generate (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the uniforms (default 0)")
    common(p)
    p.set_defaults(fn=cmd_sample)
