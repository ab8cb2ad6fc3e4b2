"""`lstmbench run`: a benchmark matrix measured by the engine (harness.session.benchmark, on the
executor --cluster names), its workloads told by the console reporter (harness.report.console);
the quality matrices go to harness.commands.quality; `--resume JOURNAL` continues whatever run
the journal belongs to (harness.session.kinds). The options `run` and `ab` share are declared
here, and checked into one RunSettings (harness.session.settings)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from impls import registry

from ..engine.matrix import Matrix, load_matrix
from ..envs.host import require_device
from ..envs.interpreters import parse_python_overrides
from ..envs.variants import Variant, check_src, parse_variants, split
from ..errors import UsageError
from ..report.console import RunConsole
from ..session.benchmark import read_resume, run_matrix
from ..session.kinds import continue_run
from ..session.session import Resume
from ..session.settings import RunSettings
from ..training.quality import MATRICES as QUALITY
from .options import (BENCH_BACKENDS, DEFAULT_THREADS, add_cluster_options, add_threads, backend_list,
                      out_folder, positive_threads, threads_for)
from .quality import cmd_quality


def cmd_run(a: argparse.Namespace) -> int:
    positive_threads(a.threads)
    if a.resume:  # whatever run the journal belongs to (harness.session.kinds), its journal read once
        return continue_run(a, Resume.read(a.resume))
    if a.matrix in QUALITY:  # training to a target (harness.commands.quality)
        return cmd_quality(a)
    return _benchmark(a, None)


def resume_benchmark(a: argparse.Namespace, resume: Resume) -> int:
    """`run --resume` of a benchmark run's journal (harness.session.kinds)."""
    return _benchmark(a, read_resume(resume))


def _benchmark(a: argparse.Namespace, resume: Resume | None) -> int:
    if a.jobs is not None:
        raise UsageError(f"--jobs applies to the quality matrices ({', '.join(QUALITY)}) only; "
                         "a benchmark matrix measures one workload at a time")
    variants = parse_variants(a.variant)
    if variants and resume is not None:
        raise UsageError("--resume continues the journal's variants; leave --variant out")
    if a.on and not a.cluster:
        raise UsageError("--on KIND chooses machine kinds of a cluster: give --cluster ADDRESS too")
    run_matrix(run_settings(a, default_matrix="default", variants=variants, resume=resume),
               reporter=RunConsole())
    return 0


DEFAULT_VARIANT_PROCESSES = 1  # worker sets per variant unless --processes: chosen by experiment (docs/measurement.md, "Duet measurement")


def resume_variants(header: dict[str, Any]) -> tuple[list[Variant], dict[str, str]]:
    """The variants of an interrupted run (re-read from their recorded text) and the commit each
    revision variant measured, so that the rest is measured on the same code."""
    recorded = header.get("variants") or {}
    vs = parse_variants([d["text"] for d in recorded.values()]) if recorded else []
    pinned = {n: d["source"]["commit"] for n, d in recorded.items()
              if (d.get("source") or {}).get("kind") == "rev" and d["source"].get("commit")}
    return vs, pinned


def _resumed_settings(a: argparse.Namespace, r: Resume) -> dict[str, Any]:
    """A resumed run's settings, from its journal's header; what the command line says must agree."""
    header = r.header
    matrix = Matrix.from_dict(header["matrix"])
    if a.matrix is not None and load_matrix(a.matrix).to_dict() != header["matrix"]:
        raise UsageError(f"--resume: the journal's matrix is {matrix.name!r}, not {a.matrix!r}; "
                         "leave --matrix out to continue it")
    backends = list(dict.fromkeys(split(n)[0] for n in header.get("backends") or []))
    if a.backends and backend_list(a.backends, []) != backends:
        raise UsageError(f"--resume: the journal's backends are {','.join(backends)}; "
                         "leave --backends out to continue it")
    variants, pinned = resume_variants(header)
    return dict(matrix=matrix, backends=backends, device=header.get("device", a.device),
                precision=header.get("precision", a.precision),
                threads=header.get("threads") or a.threads or DEFAULT_THREADS,
                omp_wait_policy=header.get("omp_wait_policy"), processes=header.get("processes") or 1,
                variants=variants, pinned=pinned,
                cluster=a.cluster or (header.get("cluster") or {}).get("address"), seed=header.get("seed"))


def run_settings(a: argparse.Namespace, *, default_matrix: str, variants: list[Variant] | None = None,
                 resume: Resume | None = None) -> RunSettings:
    """The run's settings from `run`'s (or `ab`'s) options, every one checked before any worker
    starts; a resumed run's come from its journal's header (`resume`, read once)."""
    if a.processes is not None and a.processes < 1:
        raise UsageError(f"--processes must be an integer >= 1, got {a.processes}")
    if resume is not None:
        got = _resumed_settings(a, resume)
    else:
        matrix = load_matrix(a.matrix or default_matrix)
        default = [b for b in (matrix.default_backends or BENCH_BACKENDS)
                   if a.device in registry.BACKENDS[b].devices]
        backends = backend_list(a.backends, default)
        if a.backends and matrix.mode_backends:  # named backends: each runs in every mode
            matrix = dataclasses.replace(matrix, mode_backends={})
        got = dict(matrix=matrix, backends=backends, device=a.device,
                   precision=a.precision, threads=threads_for(a.threads, matrix.threads),
                   omp_wait_policy=a.omp_wait_policy, variants=list(variants or []), seed=a.seed,
                   processes=a.processes or (DEFAULT_VARIANT_PROCESSES if variants else matrix.processes),
                   cluster=getattr(a, "cluster", None))
    require_device(got["device"], got["precision"], got["backends"], here=not got["cluster"])
    for v in got["variants"]:
        if v.src is not None:
            check_src(v.src, f"--variant {v.name}: src")
    return RunSettings(**{**got, "backends": tuple(got["backends"]), "variants": tuple(got["variants"])},
                       overrides=tuple(parse_python_overrides(a.python).items()), out_dir=out_folder(a.out),
                       resume=resume, command=("lstmbench", *sys.argv[1:]), on=getattr(a, "on", None))


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
