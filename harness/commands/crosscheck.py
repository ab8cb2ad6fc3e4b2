"""`lstmbench crosscheck A B [--json PATH]`: do two model files, of any two formats, compute
the same function? Each is loaded and run by its own framework on one probe batch; exit 0 if
every output agrees within impls/tolerances.py's float32 bound, 1 if not, with a table per
output. When they disagree it says why, from the parameters, A taken as the reference
(impls.porting.diagnose): gate blocks permuted (in B's format's own letters), a matrix
transposed, a bias counted twice or missing, a forget-gate bias offset, a vocabulary or size
mismatch, one-hot against embedding, layers swapped."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impls.porting import FORMATS, PortError, get_format, table_lines
from impls.porting.assemble import sizes
from impls.porting.detect import detect
from impls.porting.diagnose import EQ, diagnose
from impls.porting.model import FORWARD, Ported, Row, agree, compare, format_rows, make_probe

from ..envs.interpreters import parse_python_overrides
from ..engine.porting import PortSession, RunFailed
from .convert import loader
from .options import add_json, add_python, json_target, text_log, write_json


@dataclass
class Crosscheck:
    a: Ported
    b: Ported
    rows: list[Row]
    agree: bool
    findings: list[str]
    failed: dict[str, str]  # "A"/"B" -> why it could not be run
    probe: tuple[int, int, int]  # B, T, seed

    def to_json(self) -> dict[str, Any]:
        side = lambda p: {"path": p.path, "format": p.format, "describe": p.describe, "model": sizes(p.model)}  # noqa: E731
        return {"a": side(self.a), "b": side(self.b), "agree": self.agree, "tolerance": FORWARD.rel,
                "params_tolerance": EQ, "probe": {"batch": self.probe[0], "seq_len": self.probe[1], "seed": self.probe[2]},
                "outputs": [r.to_json() for r in self.rows], "could_not_run": self.failed, "findings": self.findings}


def _format(path: Path, given: str | None) -> str:
    if not path.exists():
        raise PortError(f"{path}: no such file or folder")
    return get_format(given).name if given else detect(path)


def _like(path: Path, fmt: str, like: Path | None) -> Path | None:
    return like if like is not None and fmt == "keras" and path.name.lower().endswith(".weights.h5") else None


def crosscheck(session: PortSession, a: str | Path, b: str | Path, *, formats: tuple[str | None, str | None] = (None, None),
               like: str | Path | None = None, seed: int = 0) -> Crosscheck:
    a, b = Path(a), Path(b)
    fa, fb = _format(a, formats[0]), _format(b, formats[1])
    like = Path(like) if like else None
    if like is not None and not like.exists():
        raise PortError(f"--like {like}: no such file")
    session.require(fa)
    session.require(fb)
    pa = session.read(a, fa, like=_like(a, fa, like), lenient=True)
    pb = session.read(b, fb, like=_like(b, fb, like), lenient=True)
    ma, mb = pa.model, pb.model
    shared = (ma.num_layers, ma.hidden_size) == (mb.num_layers, mb.hidden_size)
    probe = make_probe(min(ma.vocab_size, mb.vocab_size), (ma.num_layers, ma.hidden_size) if shared else None, seed)
    outs, failed = {}, {}
    for side, path, fmt in (("A", a, fa), ("B", b, fb)):
        try:
            outs[side] = session.run(path, fmt, probe, like=_like(path, fmt, like))
        except RunFailed as e:
            failed[side] = str(e)
    rows = compare(outs["A"], outs["B"], "A", "B") if not failed else []
    # the same function of token ids, but over other characters, is not the same model
    vocabs = bool(pa.vocab and pb.vocab and pa.vocab != pb.vocab)
    ok = not failed and agree(rows) and not vocabs
    findings = [] if ok else diagnose(pa, pb)
    return Crosscheck(pa, pb, rows, ok, findings, failed, (*probe.tokens.shape, seed))


def cmd_crosscheck(a: argparse.Namespace) -> int:
    target = json_target(a.json)
    log = text_log(target)
    parts = a.formats.split(",") if a.formats else [None]
    if len(parts) > 2:
        raise PortError(f"--from {a.formats}: give one format for both, or A's and B's: FORMAT,FORMAT")
    with PortSession(parse_python_overrides(a.python)) as session:
        res = crosscheck(session, a.a, a.b, formats=(parts[0] or None, parts[-1] or None), like=a.like,
                         seed=a.seed)
    for side, p in (("A", res.a), ("B", res.b)):
        log(f"{side}  {p.path} ({p.format}): {p.describe}\n   the model: {sizes(p.model)}")
    log(f"each run by its own framework (A: {loader(res.a.format)}; B: {loader(res.b.format)}) on "
        f"{res.probe[0]} sequences x {res.probe[1]} tokens (seed {res.probe[2]}), float32 tolerance {FORWARD.rel:g}:")
    for side, why in res.failed.items():
        log(f"  {side} could not be run: {why}")
    if res.rows:
        log("\n".join(format_rows(res.rows)))
    if res.agree:
        log("AGREE: A and B compute the same function (every output within the tolerance)")
    else:
        log("DISAGREE: " + ("they cannot be compared output by output" if res.failed else
                            "B computes another function than A" if not agree(res.rows) else
                            "the outputs agree on token ids, but the ids stand for other characters")
            + ". From the parameters (A taken as the reference):")
        for f in res.findings or [f"no parameter differs beyond {EQ:g} (relative): the frameworks compute "
                                  "differently from the same numbers (another activation? dropout at inference?)"]:
            log(f"  - {f}")
    write_json(target, res.to_json(), log)
    return 0 if res.agree else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("crosscheck", help="do two model files (any formats) compute the same function? why not?",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=("do two model files (any two formats) compute the same function? If not, "
                                   "why, from the parameters"),
                       epilog="formats:\n  " + "\n  ".join(table_lines()))
    p.add_argument("a", metavar="A", help="the reference model file (or Orbax folder)")
    p.add_argument("b", metavar="B", help="the model file to hold against it")
    p.add_argument("--from", dest="formats", metavar="FORMAT[,FORMAT]",
                   help=f"A's and B's formats (default: recognised from the files): {', '.join(FORMATS)}")
    p.add_argument("--like", metavar="MODEL.keras", help="the Keras model a .weights.h5 A or B belongs to")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe batch (default 0)")
    add_json(p, "the verdict, the per-output table and the findings")
    add_python(p)
    p.set_defaults(fn=cmd_crosscheck)
