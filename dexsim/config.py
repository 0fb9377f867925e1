"""Settings at the CLI edge: each option described once, as data, feeding argparse.

A concern's settings are a frozen dataclass whose fields carry their help text (`option`). `add_flags`
makes its argparse flags and `from_args` builds it from the parsed flags, once, at the edge: library
code takes the dataclass and never sees argparse. `Parser` and `run` are the one argparse front end
of every CLI here (dexsim, dexref, viz): bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from dexsim.errors import UserError


def option(default, help: str, *, kind: type | None = None):
    """A dataclass field that is also a flag: `--name-with-dashes`, of type `kind` (default: the
    default's type; str if the default is None), `help` shown by --help with the default."""
    return dataclasses.field(default=default, metadata={"help": help, "kind": kind})


def add_flags(parser, cls, *, defaults: dict | None = None) -> None:
    """One flag per option field of the dataclass `cls`; `defaults` overrides some defaults."""
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        default = (defaults or {}).get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        kind = f.metadata["kind"] or (str if default is None else type(default))
        shown = "" if default is None else f" (default: {default})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=f.metadata["help"] + shown)


def from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass `cls` from the parsed flags (fields that are not flags come from `overrides`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def csv_list(flag: str, text: str, convert=str) -> list:
    """A comma-separated flag value: its items converted, or one line naming the flag."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise UserError(f"{flag}: empty list")
    try:
        return [convert(x) for x in items]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected a comma-separated list of {convert.__name__}") from None


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def run(build, argv=None) -> int:
    """Parse with the parser `build()` makes and run the chosen command's `func(args)`; a UserError is
    one line on stderr and exit status 2."""
    try:
        args = build().parse_args(argv)
        return args.func(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
