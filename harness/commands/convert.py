"""`lstmbench convert SRC --to FORMAT --out DST [--like TEMPLATE] [--from FORMAT] [--vocab FILE]`:
a model from one framework's file to another's, verified before it counts (impls.porting).

SRC's format is recognised from the file (--from forces it); SRC is read into the canonical
model in its framework's environment, written as DST in DST's (beside DST under a temporary
name), and then both files are loaded by their own frameworks' public loaders and run on a
probe batch (seeded tokens, two sequences, from a zero state and from a non-zero one where the
format takes a state). Only when every output agrees within impls/tolerances.py's float32
bound is DST put in place (atomically, never over a file); otherwise it exits 1 and leaves
nothing. Bad input is one line and exit 2, before anything is written."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from impls.case import check_new_path
from impls.files import fsync_dir, write_atomic
from impls.porting import FORMATS, PortError, get_format, module_of, table_lines
from impls.porting.assemble import sizes
from impls.porting.detect import detect, read_vocab, target_format
from impls.porting.model import FORWARD, Outputs, Ported, Row, agree, compare, format_rows, make_probe

from ..envs.interpreters import parse_python_overrides
from ..engine.porting import PortSession, RunFailed, keras_engine
from .options import add_python

Log = Callable[[str], None]


@dataclass
class Converted:
    src: Ported  # what SRC was read as
    written: str  # what DST holds
    rows: list[Row]  # the verification, per output
    ok: bool  # every output agreed: DST is in place
    failure: str | None = None  # why a side could not be run, where one could not
    outputs: tuple[Outputs, Outputs] | None = None  # SRC's and DST's, each by its own framework


def loader(fmt: str) -> str:
    return FORMATS[fmt].loader + (f" on the {keras_engine()} engine" if fmt == "keras" else "")


def likes(src: Path, src_fmt: str, to: str, like: Path | None) -> tuple[Path | None, Path | None]:
    """(SRC's architecture, DST's template) from --like: a .weights.h5 SRC takes it as its
    architecture; otherwise it is DST's template, of DST's format."""
    if like is None:
        return None, None
    like_fmt = detect(like)
    src_like = like if src_fmt == "keras" and src.name.lower().endswith(".weights.h5") else None
    if src_like is not None and like_fmt != "keras":
        raise PortError(f"--like {like}: SRC {src} is a .weights.h5 file and needs its Keras model "
                        "(a .keras file) as --like")
    if like_fmt == to:
        return src_like, like
    if src_like is None:
        raise PortError(f"--like {like} is a {like_fmt} file, but DST is {to}: the template gives DST "
                        f"its names, so give a {to} file of the same shapes (or drop --like)")
    return src_like, None


def convert(session: PortSession, src: str | Path, to: str, out: str | Path, *, like: str | Path | None = None,
            src_format: str | None = None, vocab: str | Path | None = None, seed: int = 0,
            log: Log = lambda s: None) -> Converted:
    """The whole conversion (module docstring); PortError (FileExistsError for DST) before
    anything is written."""
    src, out = Path(src), Path(out)
    get_format(to)
    check_new_path(out, "--out")
    target_format(out, to)
    if not src.exists():
        raise PortError(f"{src}: no such file or folder")
    fmt = get_format(src_format).name if src_format else detect(src)
    if like is not None and not Path(like).exists():
        raise PortError(f"--like {like}: no such file or folder")
    src_like, dst_like = likes(src, fmt, to, Path(like) if like else None)
    words = read_vocab(vocab) if vocab else None
    session.require(fmt)
    session.require(to)
    p = session.read(src, fmt, like=src_like)
    log(f"read   {src} ({fmt}): {p.describe}")
    log(f"       the model: {sizes(p.model)}; vocabulary: "
        + (f"{len(p.vocab)} tokens in the file" if p.vocab else "none in the file"))
    if words is not None:
        if len(words) != p.model.vocab_size:
            raise PortError(f"--vocab {vocab}: {len(words)} characters, but the model has {p.model.vocab_size} tokens")
        p.vocab = words
    why = module_of(to).can_hold(p.model)
    if why:
        raise PortError(why)
    if to == "canonical" and p.vocab is None:
        raise PortError(f"a canonical checkpoint holds the vocabulary and {src} ({fmt}) has none: give "
                        "--vocab FILE (a JSON list of the characters, in id order)")
    tmpdir = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        tmp = tmpdir / out.name
        written = session.write(p, to, tmp, like=dst_like)
        log(f"wrote  {out} ({to}): {written}" + (f"; vocabulary: {len(p.vocab)} tokens" if p.vocab and
                                                  FORMATS[to].vocab else ""))
        m = p.model
        probe = make_probe(m.vocab_size, (m.num_layers, m.hidden_size), seed)
        log(f"verify {src} by {loader(fmt)};\n       {out} by {loader(to)};\n       "
            f"on {probe.tokens.shape[0]} sequences x {probe.tokens.shape[1]} tokens (seed {seed}), "
            f"against the float32 tolerance {FORWARD.rel:g} (impls/tolerances.py):")
        try:
            a = session.run(src, fmt, probe, like=src_like)
        except RunFailed as e:
            return Converted(p, written, [], False, f"SRC does not run: {e}")
        try:
            b = session.run(tmp, to, probe, like=dst_like or (src_like if to == "keras" else None))
        except RunFailed as e:
            return Converted(p, written, [], False, f"DST does not run: {e}")
        rows = compare(a, b, str(src), str(out))
        ok = agree(rows)
        if ok:
            place(tmp, out)
        return Converted(p, written, rows, ok, outputs=(a, b))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def place(tmp: Path, out: Path) -> None:
    """A verified file (or Orbax folder) into place: never over an existing name."""
    if tmp.is_dir():  # Orbax wrote a folder: one rename, after the never-overwrite check
        if os.path.lexists(out):
            raise FileExistsError(f"{out} exists; choose another name (results are never overwritten)")
        os.rename(tmp, out)
        fsync_dir(out.parent)
        return
    with open(tmp, "rb") as f:
        write_atomic(out, lambda g: shutil.copyfileobj(f, g), mkdir=False)


def cmd_convert(a: argparse.Namespace) -> int:
    with PortSession(parse_python_overrides(a.python)) as session:
        res = convert(session, a.src, a.to, a.out, like=a.like, src_format=a.src_format, vocab=a.vocab,
                      seed=a.seed, log=print)
    if res.failure:
        print(f"verification FAILED: {res.failure}; nothing was written")
        return 1
    print("\n".join(format_rows(res.rows)))
    if not res.ok:
        print(f"verification FAILED: {a.out} does not compute what {a.src} computes; nothing was written "
              f"(`lstmbench crosscheck {a.src} FILE` says why for a file you wrote)")
        return 1
    print(f"converted {a.src} ({res.src.format}) -> {a.out} ({a.to}): every output within {FORWARD.rel:g}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert a model between frameworks' files, verified by both frameworks",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=("a model from one framework's file to another's, verified by both frameworks "
                                   "before it is written"),
                       epilog="formats:\n  " + "\n  ".join(table_lines()) +
                              "\n\nUntrusted files are never executed: torch.load(weights_only=True), Keras "
                              "safe_mode=True,\nnp.load(allow_pickle=False); ONNX and Orbax files are data.")
    p.add_argument("src", metavar="SRC", help="the model file (an Orbax checkpoint folder for flax)")
    p.add_argument("--to", required=True, choices=list(FORMATS), help="the format to write")
    p.add_argument("--out", required=True, metavar="DST", help="the file (or folder, flax) to write; never "
                   "over an existing one")
    p.add_argument("--like", metavar="TEMPLATE", help="a file of DST's format with the same shapes: DST takes "
                   "its names (your own module's state_dict, your .keras model, ...); for a .weights.h5 "
                   "SRC, its .keras model")
    p.add_argument("--from", dest="src_format", choices=list(FORMATS), help="SRC's format (default: "
                   "recognised from the file)")
    p.add_argument("--vocab", metavar="FILE", help="the vocabulary where SRC has none (a JSON list of the "
                   "characters in id order, or a text file of them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe batch (default 0)")
    add_python(p)
    p.set_defaults(fn=cmd_convert)
