"""The `lstmbench` command line (also `python -m harness`). Each subcommand is a thin layer
over a module: case files (impls.case), check (harness.check), run (harness.run), compare
(harness.compare), report (harness.report). Bad input ends with one line and exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from impls import registry
from impls.case import (CaseError, check_new_path, check_outputs, diff_outputs, format_rows, is_output,
                        load_case, load_outputs, make_case, save_case)
from impls.config import (PRESETS, CaseSpec, ClipConfig, ConfigError, GenerateConfig, ModelConfig,
                          OptimizerConfig, TrainConfig, flops_per_char, get_preset)
from impls.tolerances import TOLERANCES

from .engine.envs import RECIPES, UsageError, interpreter_for, parse_python_overrides, require_device
from .results.schema import ResultsError

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
    from .engine.workers import Worker, WorkerFailed
    overrides = parse_python_overrides(a.python)
    # one worker per interpreter and set of env_vars (KERAS_BACKEND=jax needs its own process)
    by_python: dict[tuple[str, tuple], list[str]] = {}
    info: dict[str, dict] = {}
    for name in registry.BACKENDS:
        try:
            env_vars = tuple(sorted((getattr(registry.BACKENDS[name], "env_vars", None) or {}).items()))
            by_python.setdefault((interpreter_for(name, overrides), env_vars), []).append(name)
        except registry.BackendError as e:
            info[name] = {"available": False, "reason": str(e)}
    for (py, _), names in by_python.items():
        try:
            w = Worker(py, a.threads, backend=names[0])
        except OSError as e:
            for n in names:
                info[n] = {"available": False, "reason": f"cannot start {py}: {e.strerror or e}"}
            continue
        try:
            ans = w.request({"op": "info", "backends": names, "threads": a.threads, "device": "cpu"}, 300)
            if not ans.get("ok") or not isinstance(ans.get("backends"), dict):
                raise WorkerFailed(str(ans.get("kind") or "error"), str(ans.get("error") or "no answer"))
            for n in names:
                info[n] = {**ans["backends"].get(n, {"available": False, "reason": "no answer"}), "python": py}
        except WorkerFailed as e:
            for n in names:
                info[n] = {"available": False, "reason": f"worker {e.kind}: {e}"}
        finally:
            w.close()
    for name, spec in registry.BACKENDS.items():  # what it can run, from its spec
        info[name].update(modes=list(spec.modes), devices=list(spec.devices),
                          precisions=list(spec.precisions), env=spec.env)
    if a.json:
        print(json.dumps(info, indent=1))
        return 0
    print("\n".join(backends_text(info)))
    return 0


def backends_text(info: dict[str, dict]) -> list[str]:
    """`lstmbench backends` as lines: per backend a row of short columns sized to their
    values (nothing cut), then its kernel path, description, optimiser deviations and
    baseline on lines of their own, however long."""
    from .commands.baselines import baseline_file  # the one place a baseline's file name is made
    rows = []
    for name, spec in registry.BACKENDS.items():
        i = info.get(name, {})
        rows.append([name, "available" if i.get("available") else "missing", str(i.get("version") or "-"),
                     ",".join(spec.modes), ",".join(spec.devices), ",".join(spec.precisions)])
    head = ["backend", "status", "version", "modes", "devices", "precisions"]
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
    pad = " " * (widths[0] + 1)

    def row(r: list[str]) -> str:
        return " ".join(f"{x:{w}}" for x, w in zip(r, widths)).rstrip()
    out = [row(head)]
    for r, (name, spec) in zip(rows, registry.BACKENDS.items()):
        i = info.get(name, {})
        out.append(row(r))
        if i.get("available"):
            out.append(f"{pad}kernel: {i.get('kernel') or '-'}")
        out.append(f"{pad}{spec.description}")
        if not i.get("available"):
            out.append(f"{pad}reason: {i.get('reason')}")
        elif spec.env != "main":
            out.append(f"{pad}environment: {i.get('python')}")
        for opt, d in spec.deviations.items():
            out.append(f"{pad}{opt}: {d.cause}")
        out.append(f"{pad}baseline: " + (f"{spec.baseline} (benchmarks/baselines/"
                                         f"{baseline_file(spec.baseline)}): {spec.baseline_note}"
                                         if spec.baseline else f"none: {spec.baseline_note}"))
    return out


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


def _positive_threads(threads: int | None) -> None:
    if threads is not None and not 1 <= threads <= 1024:  # a million threads would crash a framework
        raise UsageError(f"--threads must be between 1 and 1024, got {threads}")


def cmd_case_run(a: argparse.Namespace) -> int:
    spec = registry.get_spec(a.backend)
    _positive_threads(a.threads)
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
    in_process = not getattr(spec, "env_vars", None)
    if ok and in_process and spec.env == "main" and a.backend not in overrides and a.timeout is None:
        from .engine.worker import op_case  # here, as a worker would
        try:
            op_case(req)
        except (CaseError, FileExistsError):
            raise
        except Exception as e:  # noqa: BLE001 - e.g. no GPU: the backend's own one-line reason
            raise registry.BackendError(_failed(a.backend, _kind(e), f"{type(e).__name__}: {e}")) from None
    else:  # in another environment, or under --timeout: a worker that can be killed
        from .engine.workers import Worker, WorkerFailed
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


def _kind(e: BaseException) -> str:
    """The failure kind (oom | error) of an exception, as the harness records it."""
    from .engine.failures import classify
    return classify(e)


def _failed(backend: str, kind: str, message: str) -> str:
    """One line: what failed, and the fix where there is one."""
    first = (message.strip().splitlines() or [""])[0]
    if kind == "oom":
        return f"backend {backend} ran out of memory ({first}); choose smaller sizes; nothing was written"
    if kind == "timeout":
        return f"backend {backend}: {first}; raise --timeout or choose smaller sizes; nothing was written"
    return f"backend {backend} failed ({kind}): {first}; nothing was written"


def _remove_partial(out: Path) -> None:
    """A worker killed while writing leaves write_new's temporary file: remove it."""
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


# ---- check, run, setup, compare, report ----------------------------------------------

def cmd_check(a: argparse.Namespace) -> int:
    from .commands.check import run_check
    from .engine.workers import default_jobs
    backends = _backend_list(a.backends, [b for b in BENCH_BACKENDS if a.device in registry.BACKENDS[b].devices])
    if not backends:
        raise UsageError(f"--backends {a.backends!r} names no backend; give a comma list, e.g. torch,jax")
    _positive_threads(a.threads)
    require_device(a.device, a.precision, backends)
    if a.json:
        check_new_path(a.json, "--json")  # fail now, not after minutes of checking
    jobs = default_jobs(a.threads) if a.jobs is None else a.jobs
    return run_check(backends, overrides=parse_python_overrides(a.python), threads=a.threads,
                     precision=a.precision, json_path=Path(a.json) if a.json else None, jobs=jobs,
                     device=a.device)


def cmd_run(a: argparse.Namespace) -> int:
    from .training.quality import MATRICES as QUALITY, cmd_quality, is_quality_journal
    _positive_threads(a.threads)
    # training to a target (harness/quality.py): by name, or a quality run's journal to resume
    if a.matrix in QUALITY or (a.matrix is None and a.resume and is_quality_journal(a.resume)):
        if a.variant:
            raise UsageError("--variant applies to the benchmark matrices; a quality matrix trains "
                             "each backend once")
        return cmd_quality(a)
    if a.jobs is not None:
        raise UsageError(f"--jobs applies to the quality matrices ({', '.join(QUALITY)}) only; "
                         "a benchmark matrix measures one workload at a time")
    from .engine.runner import run_matrix
    from .engine.variants import parse_variants
    variants = parse_variants(a.variant)
    if variants and a.resume:
        raise UsageError("--resume continues the journal's variants; leave --variant out")
    run_matrix(**run_options(a, default_matrix="default", variants=variants),
               command=["lstmbench", *sys.argv[1:]])
    return 0


DEFAULT_VARIANT_PROCESSES = 3  # worker sets per variant unless --processes (docs/measurement.md)


def run_options(a: argparse.Namespace, *, default_matrix: str, variants: list | None = None
                ) -> dict[str, Any]:
    """run_matrix's arguments from `run`'s (or `ab`'s) options, every one checked before any
    worker starts; a resumed run's settings come from its journal's header."""
    from .engine.matrix import Matrix, load_matrix
    from .engine.runner import load_resume
    from .engine.variants import check_src
    if a.processes is not None and a.processes < 1:
        raise UsageError(f"--processes must be an integer >= 1, got {a.processes}")
    resume = Path(a.resume) if getattr(a, "resume", None) else None
    if resume is not None:  # the interrupted run's settings, from its journal's header
        _, _, header, _ = load_resume(resume)
        matrix = Matrix.from_dict(header["matrix"])
        if a.matrix is not None and load_matrix(a.matrix).to_dict() != header["matrix"]:
            raise UsageError(f"--resume: the journal's matrix is {matrix.name!r}, not {a.matrix!r}; "
                             "leave --matrix out to continue it")
        from .engine.variants import split
        backends = list(dict.fromkeys(split(n)[0] for n in header.get("backends") or []))
        if a.backends and _backend_list(a.backends, []) != backends:
            raise UsageError(f"--resume: the journal's backends are {','.join(backends)}; "
                             "leave --backends out to continue it")
        a.device, a.precision = header.get("device", a.device), header.get("precision", a.precision)
        a.threads = header.get("threads") or a.threads or DEFAULT_THREADS
        a.omp_wait_policy = header.get("omp_wait_policy")
        a.processes = header.get("processes") or 1
    else:
        matrix = load_matrix(a.matrix or default_matrix)
        default = [b for b in (matrix.default_backends or BENCH_BACKENDS)
                   if a.device in registry.BACKENDS[b].devices]
        backends = _backend_list(a.backends, default)
        a.threads = a.threads or matrix.threads or DEFAULT_THREADS  # --threads, the matrix's, the cores
    require_device(a.device, a.precision, backends)
    for v in variants or []:
        if v.src is not None:
            check_src(v.src, f"--variant {v.name}: src")
    processes = a.processes or (DEFAULT_VARIANT_PROCESSES if variants else matrix.processes)
    return dict(matrix=matrix, backends=backends, device=a.device, precision=a.precision,
                threads=a.threads, overrides=parse_python_overrides(a.python), out_dir=Path(a.out),
                processes=processes, omp_wait_policy=a.omp_wait_policy, seed=a.seed, resume=resume,
                variants=variants or None)


def add_run_options(p: argparse.ArgumentParser, *, default_matrix: str) -> None:
    """The options `run` and `ab` share (what to measure, and how)."""
    p.add_argument("--matrix", help=f"smoke | default | full | gpu | FILE.toml/.yaml (default {default_matrix})"
                   + ("; quality | quality-adam | quality-tiny train to a target" if default_matrix == "default" else ""))
    p.add_argument("--backends", help="comma list (default: the matrix's, else every backend for the device)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--precision", default="float32", choices=["float32", "tf32"],
                   help="float32 (strict, default) or tf32 (GPU only)")
    p.add_argument("--out", default="results", help="results folder (default results/)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="fresh worker processes per backend (per variant) and workload (default: "
                        f"{DEFAULT_VARIANT_PROCESSES} per variant with variants; else the matrix's, 1 for "
                        "smoke, 2 for default; docs/measurement.md)")
    p.add_argument("--omp-wait-policy", choices=["passive", "active"],
                   help="OMP_WAIT_POLICY for every worker (default: unset, the runtime's own)")
    p.add_argument("--seed", type=int, help="seed of the interleaving order (default: from the clock; recorded)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"threads for every framework alike (default: the matrix's, 1 for smoke; "
                        f"else {DEFAULT_THREADS}, the cores; 1 per backend for the quality matrices); "
                        "fewer than the cores pins the workers to the last CPUs")
    p.add_argument("--python", action="append", metavar="BACKEND=INTERPRETER",
                   help="run BACKEND with this interpreter (repeatable)")


def cmd_setup(a: argparse.Namespace) -> int:
    from .engine.envs import setup, setup_named
    if a.name is not None:  # a named environment with the packages given (framework releases)
        setup_named(a.name, a.envs)
        return 0
    for env in a.envs or list(RECIPES):
        setup(env)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    if a.variants is not None or a.new is None:  # one run, two of its variants
        if a.new is not None:
            raise UsageError("--variants compares two variants of ONE run: give one results file "
                             "(compare OLD NEW compares two runs)")
        if a.normalize:
            raise UsageError("--normalize is for two runs on different machines; an in-run "
                             "comparison pairs rounds of one run")
        from .commands.ab import run_compare_variants
        return run_compare_variants(a.old, a.variants, threshold=_percent(a.threshold),
                                    fail_on_regression=a.fail_on_regression, json_path=a.json)
    from .commands.compare import run_compare
    return run_compare(a.old, a.new, threshold=_percent(a.threshold),
                       fail_on_regression=a.fail_on_regression, normalize=a.normalize,
                       json_path=a.json)


def cmd_report(a: argparse.Namespace) -> int:
    from .report.page import write_report
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
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="where every backend computes the cases (default cpu; gpu needs one)")
    p.add_argument("--precision", default="float32", choices=["float32", "tf32"],
                   help="float32 (strict, default) or tf32 (GPU only)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="backends checked side by side, each in its own worker (default: the "
                        "cores // --threads)")
    python(p), threads(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("run", help="run a benchmark matrix")
    add_run_options(p, default_matrix="default")
    p.add_argument("--variant", action="append", metavar="NAME[:KEY=VALUE,...]",
                   help="measure every backend once per variant, interleaved (repeatable, two or more): "
                        "keys python=PATH, python.BACKEND=PATH, src=DIR|REV, env.VAR=VALUE, threads=N "
                        "(harness/variants.py); compare them with `compare RESULTS --variants A,B`")
    p.add_argument("--resume", metavar="PATH",
                   help="continue an interrupted run from its journal (or the journal's target file)")
    p.add_argument("--jobs", metavar="N",
                   help="quality matrices: backends trained side by side, one lane each "
                        "(default: the cores // --threads)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("setup", help="build the environments some backends need (chainer), or a "
                                      "named one with chosen package versions")
    p.add_argument("envs", nargs="*", metavar="ENV|PACKAGE",
                   help=f"environments to build (default: {', '.join(RECIPES)}); with --name, the "
                        "packages to install, e.g. jax==0.9.2")
    p.add_argument("--name", help="build the environment .venv-NAME with the PACKAGEs given, for a "
                                  "variant (--variant old:python.jax=.venv-NAME/bin/python)")
    p.set_defaults(fn=cmd_setup)

    p = sub.add_parser("compare", help="compare two runs (files or folders), or two variants of one run")
    p.add_argument("old", metavar="OLD|RESULTS", help="the old run (files or folders), or with "
                   "--variants the one run whose variants are compared")
    p.add_argument("new", nargs="?", metavar="NEW", help="the new run (files or folders)")
    p.add_argument("--variants", metavar="BASE,NEW",
                   help="judge variant NEW against BASE from their paired rounds in RESULTS "
                        "(a run with --variant; default: its two variants)")
    p.add_argument("--threshold", default="10%", help="smallest change that counts (default 10%%, asv's default factor 1.1)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help="exit 1 on a significant slowdown beyond the threshold, a new cell "
                        "that failed or is noisy where the old one was ok, or no new cell measured")
    p.add_argument("--normalize", action="store_true",
                   help="divide each round's time by the same round's noise-probe time "
                        "(runs on machines of different speed)")
    p.add_argument("--json", metavar="PATH", help="write one entry per cell here (atomically)")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("report", help="Markdown + HTML report with plots")
    p.add_argument("results", nargs="+", help="results files or folders")
    p.add_argument("--out", required=True, help="folder for report.md, report.html, plots")
    p.add_argument("--check", help="JSON from `lstmbench check --json` for the equivalence table")
    p.set_defaults(fn=cmd_report)

    from .commands.baselines import add_parser as add_baselines_parser  # baselines (harness/baselines.py)
    add_baselines_parser(sub)

    from .commands.ab import add_parser as add_ab_parser  # ab (harness/inrun.py)
    add_ab_parser(sub)

    from .training.loop import add_parsers as add_train_parsers  # data, train, evaluate, sample
    add_train_parsers(sub)
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
    except KeyboardInterrupt as e:  # signals.Interrupted carries SIGINT or SIGTERM: 130 or 143
        from .engine.signals import exit_status
        print("lstmbench: interrupted", file=sys.stderr)
        return exit_status(e)
    finally:
        if argv is not None:  # called in-process (tests): handlers back as they were; as the
            from .engine.signals import restore  # process's entry point they stay in clean-up mode
            restore()  # until exit, so a late second Ctrl-C cannot print a traceback


if __name__ == "__main__":
    sys.exit(main())
