"""The `lstmbench` command line (also `python -m harness`). Each subcommand is a thin layer
over a module: case files (impls.case), check (harness.check), run (harness.run), compare
(harness.compare), report (harness.report). Bad input ends with one line and exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from impls import registry
from impls.case import (CaseError, check_outputs, diff_outputs, format_rows, load_case, load_outputs, make_case,
                        run_case, save_case, save_outputs)
from impls.config import (PRESETS, CaseSpec, ClipConfig, ConfigError, GenerateConfig, ModelConfig,
                          OptimizerConfig, TrainConfig, flops_per_char, get_preset)
from impls.tolerances import TOLERANCES

from .envs import RECIPES, UsageError, interpreter_for, parse_python_overrides
from .results import ResultsError

DEFAULT_THREADS = os.cpu_count() or 1
BENCH_BACKENDS = [b for b in registry.BACKENDS if b != "numpy"]  # the oracle is not timed


def _backend_list(text: str | None, default: list[str]) -> list[str]:
    if not text:
        return list(default)
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        registry.get_spec(n)
    return names


# ---- listings -----------------------------------------------------------------------

def cmd_backends(a: argparse.Namespace) -> int:
    from .pool import Worker, WorkerFailed
    overrides = parse_python_overrides(a.python)
    by_python: dict[str, list[str]] = {}
    info: dict[str, dict] = {}
    for name in registry.BACKENDS:
        try:
            by_python.setdefault(interpreter_for(name, overrides), []).append(name)
        except registry.BackendError as e:
            info[name] = {"available": False, "reason": str(e)}
    for py, names in by_python.items():
        w = Worker(py, a.threads)
        try:
            ans = w.request({"op": "info", "backends": names, "threads": a.threads, "device": "cpu"}, 300)
            for n in names:
                info[n] = {**ans["backends"][n], "python": py}
        except WorkerFailed as e:
            for n in names:
                info[n] = {"available": False, "reason": str(e)}
        finally:
            w.close()
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{'backend':15} {'status':11} {'version':12} {'kernel':24} {'devices':8} description")
    for name, spec in registry.BACKENDS.items():
        i = info[name]
        status = "available" if i.get("available") else "missing"
        print(f"{name:15} {status:11} {i.get('version', '-'):12} {i.get('kernel', '-')[:24]:24} "
              f"{','.join(spec.devices):8} {spec.description}")
        if not i.get("available"):
            print(f"{'':15} reason: {i.get('reason')}")
        elif spec.env != "main":
            print(f"{'':15} environment: {i.get('python')}")
        for opt, d in spec.deviations.items():
            print(f"{'':15} {opt}: {d.cause}")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    print(f"{'preset':12} {'input':10} {'L x H':9} {'V':>4} {'T':>4} {'B':>4} {'optimiser':24} "
          f"{'train FLOP/char':>16} {'eval FLOP/char':>15}  source")
    for p in PRESETS.values():
        m, o, c = p.model, p.train.optimizer, p.train.clip
        inp = m.input if m.input == "onehot" else f"embed {m.embed_size}"
        opt = f"{o.name} lr {o.lr:g}" + (f", {c.kind} {c.value:g}" if c.kind != "none" else "")
        drop = f" p{m.dropout:g}" if m.dropout else ""
        print(f"{p.name:12} {inp:10} {f'{m.num_layers}x{m.hidden_size}{drop}':9} {m.vocab_size:4} "
              f"{p.seq_len:4} {p.batch_size:4} {opt:24} {flops_per_char(m, 'train'):16,} "
              f"{flops_per_char(m, 'eval'):15,}  {p.source}")
    return 0


# ---- case files ---------------------------------------------------------------------

def cmd_case_make(a: argparse.Namespace) -> int:
    if a.preset:
        p = get_preset(a.preset)
        m = ModelConfig(**{**p.model.__dict__, "dropout": 0.0,
                           **({"vocab_size": a.vocab} if a.vocab else {})})
        train, B, T = p.train, p.batch_size, p.seq_len
    else:
        if a.hidden is None or a.vocab is None:
            raise UsageError("give --preset NAME, or sizes: --vocab V --hidden H [--layers L] "
                             "[--input onehot|embedding --embed E]")
        m = ModelConfig(a.vocab, a.hidden, a.layers, a.input, a.embed or 0)
        train, B, T = TrainConfig(), 4, 10
    if a.optimizer or a.lr is not None:
        o = train.optimizer
        name = a.optimizer or o.name
        train = TrainConfig(OptimizerConfig(name, lr=a.lr if a.lr is not None else o.lr), train.clip)
    if a.clip:
        kind, _, value = a.clip.partition(":")
        train = TrainConfig(train.optimizer, ClipConfig(kind, float(value) if value else 0.0))
    spec = CaseSpec(m, train, a.steps, GenerateConfig(a.generate, a.temperature, a.top_k))
    case = make_case(spec, a.seed, a.batch or B, a.seq_len or T, zero_state=a.zero_state)
    path = save_case(case, a.out)
    print(f"wrote {path}: {m.num_layers}x{m.hidden_size} {m.input}, V={m.vocab_size}, "
          f"B={case.tokens.shape[0]}, T={case.tokens.shape[1]}, {train.optimizer.name}, "
          f"clip {train.clip.kind}, {a.steps} steps")
    return 0


def cmd_case_run(a: argparse.Namespace) -> int:
    spec = registry.get_spec(a.backend)
    load_case(a.case)  # validate here: a bad file fails before any worker starts
    if Path(a.out).exists():
        raise UsageError(f"{a.out} exists; choose another --out (outputs are never overwritten)")
    req = {"op": "case", "backend": a.backend, "case": str(Path(a.case).resolve()),
           "out": str(Path(a.out).resolve()), "threads": a.threads, "device": a.device,
           "dtype": a.dtype}
    overrides = parse_python_overrides(a.python)
    ok, _ = registry.availability(a.backend)
    if ok and spec.env == "main" and a.backend not in overrides:  # here, as a worker would
        from .worker import op_case
        try:
            op_case(req)
        except (CaseError, FileExistsError):
            raise
        except Exception as e:  # noqa: BLE001 - e.g. no GPU: the backend's own one-line reason
            raise registry.BackendError(f"backend {a.backend}: {type(e).__name__}: {e}".splitlines()[0]) from None
    else:  # the backend lives in another environment: run it there
        from .pool import Worker, WorkerFailed
        w = Worker(interpreter_for(a.backend, overrides), a.threads)
        try:
            ans = w.request(req, timeout=3600)
        except WorkerFailed as e:
            raise registry.BackendError(f"backend {a.backend} failed: {e}") from None
        finally:
            w.close()
        if not ans["ok"]:
            raise registry.BackendError(f"backend {a.backend}: {ans['error']}")
    print(f"wrote {a.out} ({a.backend})")
    return 0


def cmd_case_diff(a: argparse.Namespace) -> int:
    out, meta = load_outputs(a.out)
    exp, _ = load_outputs(a.expected)
    precision = a.precision or meta.get("precision") or meta.get("dtype") or "float32"
    backend = meta.get("backend", "?")
    case_path = a.case or meta.get("case")
    if case_path and Path(case_path).is_file():
        # with the case at hand, a documented optimiser deviation is verified, not just named
        rows = check_outputs(out, load_case(case_path), backend, precision, expected=exp)
    else:
        dev = registry.BACKENDS[backend].deviations.get(meta.get("optimizer", "")) \
            if backend in registry.BACKENDS else None
        rows = diff_outputs(out, exp, precision, f"{dev.cause} (unverified: give --case)" if dev else "")
    print(f"{a.out} ({backend}, {precision}) against {a.expected}")
    print(format_rows(rows))
    bad = [r for r in rows if r.status == "FAIL"]
    devs = [r for r in rows if r.status == "deviation"]
    print(f"{len(rows) - len(bad)} passed, {len(bad)} failed"
          + (f" ({len(devs)} by a documented native-optimiser deviation)" if devs else ""))
    return 1 if bad else 0


# ---- check, run, setup, compare, report ----------------------------------------------

def cmd_check(a: argparse.Namespace) -> int:
    from .check import run_check
    backends = _backend_list(a.backends, BENCH_BACKENDS)
    return run_check(backends, overrides=parse_python_overrides(a.python), threads=a.threads,
                     precision=a.precision, json_path=Path(a.json) if a.json else None)


def cmd_run(a: argparse.Namespace) -> int:
    from .matrix import load_matrix
    from .run import run_matrix
    matrix = load_matrix(a.matrix)
    default = [b for b in BENCH_BACKENDS if a.device in registry.BACKENDS[b].devices]
    backends = _backend_list(a.backends, default)
    for b in backends:
        if a.device not in registry.BACKENDS[b].devices:
            raise UsageError(f"backend {b} does not run on {a.device}")
    if a.precision == "tf32" and a.device != "gpu":
        raise UsageError("--precision tf32 exists only on a GPU: add --device gpu")
    run_matrix(matrix, backends, device=a.device, precision=a.precision, threads=a.threads,
               overrides=parse_python_overrides(a.python), out_dir=Path(a.out),
               command=["lstmbench", *sys.argv[1:]])
    return 0


def cmd_setup(a: argparse.Namespace) -> int:
    from .envs import setup
    for env in a.envs or list(RECIPES):
        setup(env)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from .compare import run_compare
    return run_compare(a.old, a.new, threshold=_percent(a.threshold),
                       fail_on_regression=a.fail_on_regression)


def cmd_report(a: argparse.Namespace) -> int:
    from .report import write_report
    write_report(a.results, Path(a.out), check_json=Path(a.check) if a.check else None)
    return 0


def _percent(text: str) -> float:
    try:
        v = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"--threshold takes a percentage like 5%, got {text!r}") from None
    if not 0 <= v < 10:
        raise UsageError(f"--threshold must be between 0% and 1000%, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lstmbench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def threads(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                       help=f"threads for every framework alike (default {DEFAULT_THREADS}: the cores)")

    def python(p: argparse.ArgumentParser) -> None:
        p.add_argument("--python", action="append", metavar="BACKEND=INTERPRETER",
                       help="run BACKEND with this interpreter (repeatable)")

    p = sub.add_parser("backends", help="list backends, versions and availability")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    python(p), threads(p)
    p.set_defaults(fn=cmd_backends)
    sub.add_parser("presets", help="list presets with sizes and FLOPs per character").set_defaults(fn=cmd_presets)

    case = sub.add_parser("case", help="case files: make, run, diff (SPEC §9)")
    csub = case.add_subparsers(dest="case_cmd", required=True, metavar="ACTION")
    p = csub.add_parser("make", help="write an input case")
    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--vocab", type=int, help="V (overrides the preset's)")
    p.add_argument("--hidden", type=int, help="H")
    p.add_argument("--layers", type=int, default=1, help="L (default 1)")
    p.add_argument("--input", default="onehot", help="onehot | embedding")
    p.add_argument("--embed", type=int, help="E for embedding input")
    p.add_argument("--batch", type=int, help="B (default: the preset's, else 4)")
    p.add_argument("--seq-len", type=int, help="T (default: the preset's, else 10)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--optimizer", help="sgd | adam | rmsprop | adagrad (default: the preset's)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--clip", help="none | norm:C | value:C")
    p.add_argument("--steps", type=int, default=3, help="K optimiser steps (default 3)")
    p.add_argument("--generate", type=int, default=20, help="tokens to sample (default 20)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--zero-state", action="store_true", help="start from h0 = c0 = 0")
    p.add_argument("--out", required=True, help="CASE.npz to write (must not exist)")
    p.set_defaults(fn=cmd_case_make)
    p = csub.add_parser("run", help="compute every output of a case on one backend")
    p.add_argument("case")
    p.add_argument("--backend", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the backend's")
    python(p), threads(p)
    p.set_defaults(fn=cmd_case_run)
    p = csub.add_parser("diff", help="compare outputs against expected outputs")
    p.add_argument("out")
    p.add_argument("expected")
    p.add_argument("--precision", choices=list(TOLERANCES), help="tolerance row (default: OUT's dtype)")
    p.add_argument("--case", help="the input case (default: the one OUT records), to verify a "
                                  "documented optimiser deviation against the native formula")
    p.set_defaults(fn=cmd_case_diff)

    p = sub.add_parser("check", help="cross-check every backend against the reference")
    p.add_argument("--backends", help="comma list (default: all but the numpy oracle)")
    p.add_argument("--json", help="write the detailed report here")
    p.add_argument("--precision", default="float32", choices=["float32", "tf32"])
    python(p), threads(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("run", help="run a benchmark matrix")
    p.add_argument("--matrix", default="default", help="smoke | default | gpu | FILE.toml/.yaml")
    p.add_argument("--backends", help="comma list (default: every backend for the device)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--precision", default="float32", choices=["float32", "tf32"],
                   help="float32 (strict, default) or tf32 (GPU only)")
    p.add_argument("--out", default="results", help="results folder (default results/)")
    python(p), threads(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("setup", help="build the environments some backends need (chainer)")
    p.add_argument("envs", nargs="*", help=f"default: {', '.join(RECIPES)}")
    p.set_defaults(fn=cmd_setup)

    p = sub.add_parser("compare", help="compare two runs (files or folders)")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threshold", default="5%", help="smallest change that counts (default 5%%)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 on a significant slowdown beyond the threshold")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("report", help="Markdown + HTML report with plots")
    p.add_argument("results", nargs="+", help="results files or folders")
    p.add_argument("--out", required=True, help="folder for report.md, report.html, plots")
    p.add_argument("--check", help="JSON from `lstmbench check --json` for the equivalence table")
    p.set_defaults(fn=cmd_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    # progress must reach a pipe (tee, a CI log, a parent process) as it happens
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, CaseError, registry.BackendError, UsageError, ResultsError,
            FileExistsError) as e:
        print(f"lstmbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lstmbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
