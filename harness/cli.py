"""The `lstmbench` command line (also `python -m harness`).

The parser is built from the commands' modules (harness.commands, one per verb, each adding its
subparser); main dispatches to the command. Bad input ends with one line and exit status 2; an
interruption with 130 (SIGINT) or 143 (SIGTERM)."""
from __future__ import annotations

import argparse
import sys

from impls import registry
from impls.case import CaseError
from impls.config import ConfigError

from .commands import (ab, backends, baselines, case, check, compare, convert, crosscheck, data, report,
                       run, setup, train)
from .engine.signals import exit_status, restore
from .errors import UsageError
from .results.schema import ResultsError

# The verbs in the order `lstmbench --help` lists them.
COMMANDS = (backends, case, check, run, setup, compare, report, baselines, ab, data, train, convert,
            crosscheck)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lstmbench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
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
        print("lstmbench: interrupted", file=sys.stderr)
        return exit_status(e)
    finally:
        if argv is not None:  # called in-process (tests): handlers back as they were; as the
            restore()  # process's entry point they stay in clean-up mode until exit, so a
            # late second Ctrl-C cannot print a traceback


if __name__ == "__main__":
    sys.exit(main())
