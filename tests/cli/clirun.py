"""Every CLI here run in-process (`main(argv)`), its exit status, stdout and stderr captured, and the
project's rule for bad input checked: exit 0, or exit 2 with exactly one stderr line naming a flag,
file or field that was involved; never a traceback, never exit 1."""
from __future__ import annotations

import contextlib
import io
import traceback
from dataclasses import dataclass


def _main(prog: str):
    if prog == "dexsim":
        from dexsim.cli.main import main
    elif prog == "viz":
        from viz.cli import main
    elif prog == "dexref":
        from dexref.cli import main
    elif prog == "proofs":
        from proofs.__main__ import main
    else:
        raise ValueError(prog)
    return main


@dataclass
class Run:
    argv: list
    rc: int
    out: str
    err: str
    crash: str | None  # the traceback of anything but SystemExit


def run_cli(prog: str, argv: list) -> Run:
    main = _main(prog)
    out, err = io.StringIO(), io.StringIO()
    crash = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # --help, or argparse before our Parser
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # noqa: BLE001 - any other exception is the failure this module looks for
            rc, crash = 1, "".join(traceback.format_exception(e))
    return Run([prog, *map(str, argv)], rc, out.getvalue(), err.getvalue(), crash)


def error_line(run: Run) -> str:
    """The one stderr line of a refused run (progress bars, which redraw with '\\r', are not lines)."""
    lines = [x for x in run.err.replace("\r", "\n").split("\n") if x.strip() and not x.startswith(("sweep:", "tune:"))]
    assert len(lines) == 1, f"{run.argv}: expected one stderr line, got {lines}"
    assert lines[0].startswith("error: "), lines
    return lines[0]


def check_clean(run: Run, names=()) -> None:
    """Exit 0, or exit 2 with one line that names one of `names` (flags, files, fields) if any are given."""
    assert run.crash is None, f"{run.argv}: traceback\n{run.crash}"
    assert run.rc in (0, 2), f"{run.argv}: exit {run.rc}\n{run.err}"
    if run.rc == 2:
        line = error_line(run)
        if names:
            assert any(str(n) in line for n in names), f"{run.argv}: {line!r} names none of {names}"
