"""`python -m dexsim`: one subcommand per module, each registered by that module's `register()`.

A user error (bad file, field or flag) ends the command with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# Each module here has `register(subparsers)`, which adds its subcommand(s) with a `func(args)`.
COMMAND_MODULES = ["replay", "synth", "analyze", "sweep", "costcli"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m dexsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"dexsim.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"dexsim.{name}":  # that command is not built yet
                continue
            raise
        module.register(sub)
    return parser


def run(build, argv=None) -> int:
    """Parse with the parser `build()` makes and run the chosen command; a UserError is one line on
    stderr and exit status 2. Every CLI of the project (dexsim, dexref, viz) ends here."""
    try:
        args = build().parse_args(argv)
        return args.func(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def main(argv=None) -> int:
    return run(build_parser, argv)
