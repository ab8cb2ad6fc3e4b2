"""`lstmbench case make | run | diff`: case files (docs/SPEC.md §9, impls.case): write an input
case, compute every output of a case on one backend (here, or in a worker that can be killed),
compare outputs against expected ones."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from impls import registry
from impls.case import (CaseError, check_new_path, check_outputs, diff_outputs, format_rows, is_output,
                        load_case, load_outputs, make_case, save_case)
from impls.config import (PRESETS, CaseSpec, ClipConfig, GenerateConfig, ModelConfig, OptimizerConfig,
                          TrainConfig, get_preset)
from impls.tolerances import TOLERANCES

from ..envs.interpreters import interpreter_for, parse_python_overrides
from ..engine.failures import classify
from ..engine.workers import Worker, WorkerFailed
from ..errors import UsageError
from .options import add_python, add_threads, positive_threads


def cmd_case_make(a: argparse.Namespace) -> int:
    check_new_path(a.out, "--out")  # before any work
    if a.preset:
        p = get_preset(a.preset)
        model = {**p.model.__dict__, "dropout": 0.0}
        train, B, T = p.train, p.batch_size, p.seq_len
    else:
        if a.hidden is None or a.vocab is None:
            raise UsageError("give --preset NAME, or sizes: --vocab V --hidden H [--layers L] "
                             "[--input onehot|embedding --embed E]")
        model = {"num_layers": 1, "input": "onehot", "embed_size": 0}
        train, B, T = TrainConfig(), 4, 10
    given = {"vocab_size": a.vocab, "hidden_size": a.hidden, "num_layers": a.layers,
             "input": a.input, "embed_size": a.embed}
    model.update({k: v for k, v in given.items() if v is not None})  # sizes given override the preset's
    if model["input"] == "onehot" and a.embed is None:
        model["embed_size"] = 0
    m = ModelConfig(**model)
    if a.optimizer or a.lr is not None:
        o = train.optimizer
        name = a.optimizer or o.name
        train = TrainConfig(OptimizerConfig(name, lr=a.lr if a.lr is not None else o.lr), train.clip)
    if a.clip:
        train = TrainConfig(train.optimizer, _parse_clip(a.clip))
    spec = CaseSpec(m, train, a.steps, GenerateConfig(a.generate, a.temperature, a.top_k))
    B, T = (B if a.batch is None else a.batch), (T if a.seq_len is None else a.seq_len)
    case = make_case(spec, a.seed, B, T, zero_state=a.zero_state)  # checks sizes and bounds first
    path = save_case(case, a.out)
    print(f"wrote {path}: {m.num_layers}x{m.hidden_size} {m.input}, V={m.vocab_size}, "
          f"B={case.tokens.shape[0]}, T={case.tokens.shape[1]}, {train.optimizer.name}, "
          f"clip {train.clip.kind}, {a.steps} steps")
    return 0


def _parse_clip(text: str) -> ClipConfig:
    """--clip none | norm:C | value:C"""
    kind, sep, value = text.partition(":")
    if kind == "none" and not sep:
        return ClipConfig()
    if kind in ("norm", "value") and sep:
        try:
            c = float(value)
        except ValueError:
            raise UsageError(f"--clip {text}: the threshold {value!r} is not a number; "
                             "write norm:C or value:C with C > 0, e.g. norm:5") from None
        return ClipConfig(kind, c)  # ConfigError for C <= 0, NaN or infinite
    if kind in ("norm", "value", "none"):
        raise UsageError(f"--clip {text}: write none, norm:C or value:C with C > 0, e.g. norm:5")
    return ClipConfig(kind)  # an unknown kind: ConfigError names the kinds


def cmd_case_run(a: argparse.Namespace) -> int:
    spec = registry.get_spec(a.backend)
    positive_threads(a.threads)
    if a.timeout is not None and not 0 < a.timeout < float("inf"):
        raise UsageError(f"--timeout must be a positive number of seconds, got {a.timeout}")
    check_new_path(a.out, "--out")  # before any work
    load_case(a.case)  # validate here: a bad file fails before any worker starts
    out = Path(a.out).resolve()
    req = {"op": "case", "backend": a.backend, "case": str(Path(a.case).resolve()),
           "out": str(out), "threads": a.threads, "device": a.device, "dtype": a.dtype}
    overrides = parse_python_overrides(a.python)
    ok, _ = registry.availability(a.backend)
    # a backend with env_vars (KERAS_BACKEND=...) must be imported in a process that had them
    in_process = not spec.env_vars
    if ok and in_process and spec.env == "main" and a.backend not in overrides and a.timeout is None:
        from ..engine.worker import op_case  # here, as a worker would
        try:
            op_case(req)
        except (CaseError, FileExistsError):
            raise
        except Exception as e:  # noqa: BLE001 - e.g. no GPU: the backend's own one-line reason
            raise registry.BackendError(_failed(a.backend, classify(e), f"{type(e).__name__}: {e}")) from None
    else:  # in another environment, or under --timeout: a worker that can be killed
        py = interpreter_for(a.backend, overrides)
        try:
            w = Worker(py, a.threads, backend=a.backend)
        except OSError as e:
            raise registry.BackendError(f"backend {a.backend}: cannot start {py}: {e.strerror or e}") from None
        try:
            ans = w.request(req, timeout=a.timeout or 3600)
        except WorkerFailed as e:
            _remove_partial(out)
            raise registry.BackendError(_failed(a.backend, e.kind, str(e))) from None
        except KeyboardInterrupt:
            w.kill()  # the worker may be writing: stop it before removing its temporary file
            _remove_partial(out)
            raise
        finally:
            w.close()
        if not isinstance(ans, dict) or not ans.get("ok"):
            ans = ans if isinstance(ans, dict) else {}
            _remove_partial(out)
            raise registry.BackendError(_failed(a.backend, str(ans.get("kind") or "error"),
                                                str(ans.get("error") or "the worker gave no reason")))
    print(f"wrote {a.out} ({a.backend})")
    return 0


def _failed(backend: str, kind: str, message: str) -> str:
    """One line: what failed, and the fix where there is one."""
    first = (message.strip().splitlines() or [""])[0]
    if kind == "oom":
        return f"backend {backend} ran out of memory ({first}); choose smaller sizes; nothing was written"
    if kind == "timeout":
        return f"backend {backend}: {first}; raise --timeout or choose smaller sizes; nothing was written"
    return f"backend {backend} failed ({kind}): {first}; nothing was written"


def _remove_partial(out: Path) -> None:
    """A worker killed while writing leaves impls.files.write_atomic's temporary file: remove it."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def cmd_case_diff(a: argparse.Namespace) -> int:
    out, meta = load_outputs(a.out)
    exp, _ = load_outputs(a.expected)
    precision = a.precision or meta.get("precision") or meta.get("dtype") or "float32"
    if precision not in TOLERANCES:
        raise CaseError(f"{a.out}: its meta names precision {precision!r}, which has no tolerance row; "
                        f"pass --precision {'|'.join(TOLERANCES)}")
    backend = meta.get("backend") or "?"
    case = load_case(a.case) if a.case else None  # given: it must load
    note = ""
    if case is None and meta.get("case") and Path(meta["case"]).is_file():
        try:
            case = load_case(meta["case"])
        except CaseError as e:  # the recorded case is gone bad: diff without it, and say so
            note = f"the case OUT records is unusable ({e}); a deviation stays unverified"
    if case is not None:
        # with the case at hand, a documented optimiser deviation is verified, not just named
        rows = check_outputs(out, case, backend, precision, expected=exp)
    else:
        dev = registry.BACKENDS[backend].deviations.get(meta.get("optimizer") or "") \
            if backend in registry.BACKENDS else None
        rows = diff_outputs(out, exp, precision, f"{dev.cause} (unverified: give --case)" if dev else "")
    print(f"{a.out} ({backend}, {precision}) against {a.expected}")
    if note:
        print(f"note: {note}")
    if not any(is_output(k) for k in exp):  # `0 passed, 0 failed` must never pass
        print(format_rows(rows))
        print(f"FAIL: compared nothing: {a.expected} holds none of the outputs of docs/SPEC.md §9 "
              "(logits, h, c, loss, grad/*, generated, losses, after/*)")
        return 1
    print(format_rows(rows))
    bad = [r for r in rows if r.status == "FAIL"]
    devs = [r for r in rows if r.status == "deviation"]
    print(f"{len(rows) - len(bad)} passed, {len(bad)} failed"
          + (f" ({len(devs)} by a documented native-optimiser deviation)" if devs else ""))
    return 1 if bad else 0


def add_parser(sub: Any) -> None:
    case = sub.add_parser("case", help="case files: make, run, diff (docs/SPEC.md §9)")
    csub = case.add_subparsers(dest="case_cmd", required=True, metavar="ACTION")
    p = csub.add_parser("make", help="write an input case")
    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--vocab", type=int, help="V (overrides the preset's)")
    p.add_argument("--hidden", type=int, help="H (overrides the preset's)")
    p.add_argument("--layers", type=int, help="L (default: the preset's, else 1)")
    p.add_argument("--input", help="onehot | embedding (default: the preset's, else onehot)")
    p.add_argument("--embed", type=int, help="E for embedding input")
    p.add_argument("--batch", type=int, help="B (default: the preset's, else 4)")
    p.add_argument("--seq-len", type=int, help="T (default: the preset's, else 10)")
    p.add_argument("--seed", type=int, required=True, help="an integer >= 0")
    p.add_argument("--optimizer", help="sgd | adam | rmsprop | adagrad (default: the preset's)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--clip", help="none | norm:C | value:C")
    p.add_argument("--steps", type=int, default=3, help="K optimiser steps (default 3)")
    p.add_argument("--generate", type=int, default=20, help="tokens to sample (default 20)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (default 0: all)")
    p.add_argument("--zero-state", action="store_true", help="start from h0 = c0 = 0")
    p.add_argument("--out", required=True, help="CASE.npz to write (must not exist)")
    p.set_defaults(fn=cmd_case_make)
    p = csub.add_parser("run", help="compute every output of a case on one backend")
    p.add_argument("case")
    p.add_argument("--backend", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the backend's")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="run in a worker and kill it after this long (default: no limit)")
    add_python(p), add_threads(p)
    p.set_defaults(fn=cmd_case_run)
    p = csub.add_parser("diff", help="compare outputs against expected outputs")
    p.add_argument("out")
    p.add_argument("expected")
    p.add_argument("--precision", choices=list(TOLERANCES), help="tolerance row (default: OUT's dtype)")
    p.add_argument("--case", help="the input case (default: the one OUT records), to verify a "
                                  "documented optimiser deviation against the native formula")
    p.set_defaults(fn=cmd_case_diff)
