"""Settings at the CLI edge: each option described once, as data, feeding argparse.

A concern's settings are a frozen dataclass whose fields carry their help text (`option`). `add_flags`
makes its argparse flags and `from_args` builds it from the parsed flags, once, at the edge: library
code takes the dataclass and never sees argparse. `Parser` and `run` are the one argparse front end
of every CLI here (dexsim, dexref, viz, proofs): bad input is one line on stderr and exit status 2.
The checks every command shares are here too: a seed's range (`parse_seed`), a size against this
machine's memory before allocating (`check_fits`), an output path before long work (`check_writable`),
and the one way a file is written whole (`write_atomically`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
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


# Seeds reach numba as int64 and numpy as uint64: every seeded part here takes 0 <= seed < 2**63.
SEED_MAX = 2**63 - 1


def parse_seed(text: str) -> int:
    """An argparse type: a `--seed` value, or one line naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--seed {text!r}: expected an integer") from None
    return check_seed(value)


def check_seed(value: int, flag: str = "--seed") -> int:
    if value < 0:
        raise UserError(f"{flag} {value}: must be >= 0")
    if value > SEED_MAX:
        raise UserError(f"{flag} {value}: must be <= {SEED_MAX} (2**63 - 1)")
    return value


def physical_memory() -> int:
    """Bytes of memory on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(flag: str, nbytes: float, what: str) -> None:
    """One line naming the flag when `what` would need more memory than this machine has: refused
    before anything is allocated, not by a MemoryError half-way."""
    have = physical_memory()
    if nbytes > have:
        raise UserError(f"{flag}: {what} would need {nbytes / 2**30:,.1f} GiB, more than this machine's "
                        f"{have / 2**30:,.1f} GiB")


def check_writable(flag: str, path: str, *, folder: bool = False) -> str:
    """`path`, once a file (or, with `folder`, files in that folder) can be created there: checked
    before long work, by creating and removing a probe file (permissions alone miss read-only file
    systems and root)."""
    if not str(path).strip():
        raise UserError(f"{flag}: empty path")
    path = os.fspath(path)
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{flag} {path}: not a folder")
        where = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    else:
        if os.path.isdir(path):
            raise UserError(f"{flag} {path}: is a folder; name a file")
        _check_regular(flag, path)
        where = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)  # a folder still to be created: its nearest existing parent
    if not os.path.isdir(where):
        raise UserError(f"{flag} {path}: folder {where} does not exist")
    probe = os.path.join(where, f".write-probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {where} ({e.strerror or e})") from None
    return path


def _check_regular(flag: str | None, path: str) -> None:
    # a file is written by renaming a new one over it: over /dev/null that would, as root, put a
    # regular file where the device was
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"{flag + ' ' if flag else ''}{path}: not a regular file (a device, pipe or socket); "
                        f"name a file")


def write_atomically(path, write, flag: str | None = None) -> None:
    """Write a file whole: `write(f)` fills a new file (binary) beside `path`, which is fsynced and renamed
    over it, so a reader sees the old file or the new one, never half of one, and two writers never
    share a temporary file. An existing target that is not a regular file is refused."""
    path = os.fspath(path)
    _check_regular(flag, path)
    # open(..., "x") (unlike mkstemp) honours the umask
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{flag + ' ' if flag else ''}{path}: cannot write ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, and no flag or argument here takes an empty value: a path, a name or a list."""
        ns, rest = super().parse_known_args(args, namespace)
        if "" in rest:
            raise UserError(f"{self.prog}: unrecognized arguments: '' (an empty argument)")
        for action in self._actions:
            value = getattr(ns, action.dest, None)
            if value == "" and action.default != "":
                name = action.option_strings[-1] if action.option_strings else action.dest
                raise UserError(f"{name}: empty value")
        return ns, rest


def print_result(out: dict, as_json: bool) -> None:
    """A run's figures on stdout: one JSON line (`--json`), or one `name: value` line each."""
    if as_json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")


def one_line(text: str) -> str:
    """`text` with what is not printable (a line break or a stray byte in a path or a value) escaped, so an
    error is one line whatever the input held."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def usable_cpus() -> int:
    """The CPUs this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run(build, argv=None) -> int:
    """Parse with the parser `build()` makes and run the chosen command's `func(args)`; a UserError is
    one line on stderr and exit status 2."""
    try:
        args = build().parse_args(argv)
        return args.func(args) or 0
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
