"""`lstmbench backends` (every backend: its framework, available here or not, version, kernel
path, what it runs, its baseline) and `lstmbench presets` (the presets' sizes and FLOPs per character)."""
from __future__ import annotations

import argparse
from typing import Any

from impls import registry
from impls.config import PRESETS, flops_per_char
from impls.porting import FORMATS

from ..envs.interpreters import interpreter_for, parse_python_overrides
from ..engine.workers import Worker, WorkerFailed
from .baselines import baseline_file
from .options import add_json, add_python, add_threads, json_target, positive_threads, text_log, write_json


def cmd_backends(a: argparse.Namespace) -> int:
    target = json_target(a.json)
    overrides = parse_python_overrides(a.python)
    positive_threads(a.threads)
    # one worker per interpreter and set of env_vars (KERAS_BACKEND=jax needs its own process)
    by_python: dict[tuple[str, tuple], list[str]] = {}
    info: dict[str, dict] = {}
    for name in registry.BACKENDS:
        try:
            env_vars = tuple(sorted(registry.BACKENDS[name].env_vars.items()))
            by_python.setdefault((interpreter_for(name, overrides), env_vars), []).append(name)
        except registry.BackendError as e:
            info[name] = {"available": False, "reason": str(e)}
    # every worker asked first, then the answers taken: the environments import side by side
    asked: list[tuple[str, list[str], Worker]] = []
    for (py, _), names in by_python.items():
        try:
            w = Worker(py, a.threads, backend=names[0])
            w.send({"op": "info", "backends": names, "threads": a.threads, "device": "cpu"})
            asked.append((py, names, w))
        except (OSError, WorkerFailed) as e:
            why = (e.strerror or e) if isinstance(e, OSError) else f"worker {e.kind}: {e}"
            for n in names:
                info[n] = {"available": False, "reason": f"cannot start {py}: {why}"}
    for py, names, w in asked:
        try:
            ans = w.receive(300)
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
        info[name].update(framework=spec.framework, requires=list(spec.requires),
                          modes=list(spec.modes), devices=list(spec.devices),
                          precisions=list(spec.precisions), env=spec.env)
    text_log(target)("\n".join(backends_text(info)) + f"\n\nformats of convert and crosscheck: {', '.join(FORMATS)} "
                     "(lstmbench convert --help says what each reads and writes)")
    write_json(target, info)
    return 0


def backends_text(info: dict[str, dict]) -> list[str]:
    """`lstmbench backends` as lines: per backend a row of short columns sized to their
    values (nothing cut), then its kernel path, description, optimiser deviations and
    baseline on lines of their own, however long."""
    rows = []
    for name, spec in registry.BACKENDS.items():
        i = info.get(name, {})
        rows.append([name, spec.framework, "available" if i.get("available") else "missing",
                     str(i.get("version") or "-"), ",".join(spec.modes), ",".join(spec.devices),
                     ",".join(spec.precisions)])
    head = ["backend", "framework", "status", "version", "modes", "devices", "precisions"]
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser("backends", help="list backends, versions and availability")
    add_json(p, "every backend's status, version, kernel and what it runs")
    add_python(p), add_threads(p)
    p.set_defaults(fn=cmd_backends)
    sub.add_parser("presets", help="list presets with sizes and FLOPs per character").set_defaults(fn=cmd_presets)
