"""`python -m viz`: lattice animations and plots, one subcommand per module (`animate`, `sweep`, `trace`, `tune`, `load`).

As in `python -m dexsim`: a user error (bad file, field, flag or output path) ends the command with one
line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib

from dexsim.config import Parser, run

# Each module here has `register(subparsers)`, which adds its subcommand with a `func(args)`.
COMMAND_MODULES = ["animate", "plots", "traceplot", "tuneplot", "loadplot"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m viz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"viz.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    return run(build_parser, argv)
