"""`python -m viz`: lattice animations and plots, one subcommand per module (`animate`, `sweep`, `trace`, `tune`, `load`).

As in `python -m dexsim`: a user error (bad file, field, flag or output path) ends the command with one
line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from dexsim.config import Parser, run

# Each module here has `register(subparsers)`, which adds its subcommand with a `func(args)`.
COMMAND_MODULES = ["animate", "plots", "traceplot", "tuneplot", "loadplot"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m viz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    parser.add_argument("--wait", action="store_true",
                        help="read standard input to its end before running the command: a program that "
                             "writes the results starts its plotter early, so that matplotlib loads meanwhile")
    for name in COMMAND_MODULES:
        importlib.import_module(f"viz.{name}").register(sub)
    for p in sub.choices.values():
        p.set_defaults(func=_after_input(p.get_default("func")))
    return parser


def _after_input(func):
    def run_when_told(args):
        if args.wait:
            sys.stdin.read()
        return func(args)
    return run_when_told


def main(argv=None) -> int:
    return run(build_parser, argv)
