"""`lstmbench run`: a benchmark matrix measured by the engine (harness.session.benchmark), its
workloads told by the console reporter (harness.report.console); the quality matrices (by name,
or an interrupted quality run's journal) go to harness.commands.quality. The options `run` and
`ab` share are declared and checked here."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from impls import registry

from ..envs.host import require_device
from ..envs.interpreters import parse_python_overrides
from ..engine.matrix import Matrix, load_matrix
from ..session.benchmark import load_resume, run_matrix
from ..envs.variants import check_src, parse_variants, split
from ..errors import UsageError
from ..report.console import RunConsole
from ..training.quality import MATRICES as QUALITY
from .options import (BENCH_BACKENDS, DEFAULT_THREADS, add_cluster_options, add_threads, backend_list,
                      out_folder, positive_threads, threads_for)
from .quality import cmd_quality, is_quality_journal


def cmd_run(a: argparse.Namespace) -> int:
    positive_threads(a.threads)
    # training to a target (harness.commands.quality): by name, or a quality run's journal to resume
    if a.matrix in QUALITY or (a.matrix is None and a.resume and is_quality_journal(a.resume)):
        if a.variant:
            raise UsageError("--variant applies to the benchmark matrices; a quality matrix trains "
                             "each backend once")
        return cmd_quality(a)
    if a.jobs is not None:
        raise UsageError(f"--jobs applies to the quality matrices ({', '.join(QUALITY)}) only; "
                         "a benchmark matrix measures one workload at a time")
    variants = parse_variants(a.variant)
    if variants and a.resume:
        raise UsageError("--resume continues the journal's variants; leave --variant out")
    if a.on and not a.cluster:
        raise UsageError("--on KIND chooses machine kinds of a cluster: give --cluster ADDRESS too")
    opts = run_options(a, default_matrix="default", variants=variants)
    on_cluster = a.cluster or (opts["resume"] is not None and load_resume(opts["resume"])[2].get("cluster"))
    if on_cluster:  # Ray only here (harness.cluster.executor), and only with --cluster
        from ..cluster.executor import run_cluster
        if opts["resume"] is not None:  # the interrupted run's variants (python=, env=), from its header
            header = load_resume(opts["resume"])[2]
            opts["variants"] = parse_variants([d["text"] for d in (header.get("variants") or {}).values()]) or None
        run_cluster(**opts, address=a.cluster, on=a.on, command=["lstmbench", *sys.argv[1:]],
                    reporter=RunConsole())
        return 0
    run_matrix(**opts, command=["lstmbench", *sys.argv[1:]], reporter=RunConsole())
    return 0


DEFAULT_VARIANT_PROCESSES = 1  # worker sets per variant unless --processes: chosen by experiment (docs/measurement.md, "Duet measurement")


def run_options(a: argparse.Namespace, *, default_matrix: str, variants: list | None = None
                ) -> dict[str, Any]:
    """run_matrix's arguments from `run`'s (or `ab`'s) options, every one checked before any
    worker starts; a resumed run's settings come from its journal's header."""
    if a.processes is not None and a.processes < 1:
        raise UsageError(f"--processes must be an integer >= 1, got {a.processes}")
    resume = Path(a.resume) if getattr(a, "resume", None) else None
    if resume is not None:  # the interrupted run's settings, from its journal's header
        _, _, header, _ = load_resume(resume)
        matrix = Matrix.from_dict(header["matrix"])
        if a.matrix is not None and load_matrix(a.matrix).to_dict() != header["matrix"]:
            raise UsageError(f"--resume: the journal's matrix is {matrix.name!r}, not {a.matrix!r}; "
                             "leave --matrix out to continue it")
        backends = list(dict.fromkeys(split(n)[0] for n in header.get("backends") or []))
        if a.backends and backend_list(a.backends, []) != backends:
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
        backends = backend_list(a.backends, default)
        if a.backends and matrix.mode_backends:  # named backends: each runs in every mode
            matrix = dataclasses.replace(matrix, mode_backends={})
        a.threads = threads_for(a.threads, matrix.threads)
    require_device(a.device, a.precision, backends, here=not getattr(a, "cluster", None))
    for v in variants or []:
        if v.src is not None:
            check_src(v.src, f"--variant {v.name}: src")
    processes = a.processes or (DEFAULT_VARIANT_PROCESSES if variants else matrix.processes)
    return dict(matrix=matrix, backends=backends, device=a.device, precision=a.precision,
                threads=a.threads, overrides=parse_python_overrides(a.python), out_dir=out_folder(a.out),
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
    p.add_argument("--out", default="results", metavar="FOLDER",
                   help="results folder: files go into FOLDER/<machine>/<time>-<matrix>-<device>.json "
                        "(default results/)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="fresh worker processes per backend (per variant) and workload (default: "
                        f"{DEFAULT_VARIANT_PROCESSES} per variant with variants; else the matrix's, 1 for "
                        "smoke, 2 for default; docs/measurement.md)")
    p.add_argument("--omp-wait-policy", choices=["passive", "active"],
                   help="OMP_WAIT_POLICY for every worker (default: unset, the runtime's own)")
    p.add_argument("--seed", type=int, help="seed of the interleaving order (default: from the clock; recorded)")
    add_threads(p, matrix=True)
    p.add_argument("--python", action="append", metavar="BACKEND=INTERPRETER",
                   help="run BACKEND with this interpreter (repeatable)")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a benchmark matrix")
    add_run_options(p, default_matrix="default")
    add_cluster_options(p, "the workloads (one per node at a time), or a quality matrix's training")
    p.add_argument("--variant", action="append", metavar="NAME[:KEY=VALUE,...]",
                   help="measure every backend once per variant, interleaved (repeatable, two or more): "
                        "keys python=PATH, python.BACKEND=PATH, src=DIR|REV, env.VAR=VALUE, threads=N "
                        "(harness/envs/variants.py); compare them with `compare RESULTS --variants A,B`")
    p.add_argument("--resume", metavar="PATH",
                   help="continue an interrupted run from its journal (or the journal's target file)")
    p.add_argument("--jobs", metavar="N",
                   help="quality matrices: backends trained side by side, one lane each "
                        "(default: the cores // --threads)")
    p.set_defaults(fn=cmd_run)
