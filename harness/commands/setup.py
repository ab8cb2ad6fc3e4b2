"""`lstmbench setup [ENV...]`: build the environments some backends need (chainer's, NumPy < 2),
or with --name one holding chosen package versions for a variant (harness.envs.interpreters)."""
from __future__ import annotations

import argparse
from typing import Any

from ..envs.interpreters import RECIPES
from ..envs.setup import setup, setup_named


def cmd_setup(a: argparse.Namespace) -> int:
    if a.name is not None:  # a named environment with the packages given (framework releases)
        setup_named(a.name, a.envs)
        return 0
    for env in a.envs or list(RECIPES):
        setup(env)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("setup", help="build the environments some backends need (chainer), or a "
                                      "named one with chosen package versions")
    p.add_argument("envs", nargs="*", metavar="ENV|PACKAGE",
                   help=f"environments to build (default: {', '.join(RECIPES)}); with --name, the "
                        "packages to install, e.g. jax==0.9.2")
    p.add_argument("--name", help="build the environment .venv-NAME with the PACKAGEs given, for a "
                                  "variant (--variant old:python.jax=.venv-NAME/bin/python)")
    p.set_defaults(fn=cmd_setup)
