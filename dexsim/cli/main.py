"""`python -m dexsim`: one subcommand per module of this package, each added by its `register()`.

A user error (bad file, field or flag) ends the command with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse

from dexsim import config
from dexsim.cli import analyze, cost, replay, sweep, synth, tune

COMMANDS = (replay, synth, analyze, sweep, tune, cost)


def build_parser() -> argparse.ArgumentParser:
    parser = config.Parser(prog="python -m dexsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=config.Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv=None) -> int:
    return config.run(build_parser, argv)
