"""`python -m dexsim sweep`: replay traces under a grid of policies, priced on a grid of hardware
(dexsim/sweep); prints where the rows went and the best configuration per trace and hardware."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from dexsim import config
from dexsim.core import registry
from dexsim.core.params import PARAMS
from dexsim.errors import UserError
from dexsim.specs.profile import widest
from dexsim.sweep.grid import SweepConfig, axis_defaults, axis_flag, build_grid
from dexsim.sweep.run import sweep
from dexsim.sweep.store import FILES
from dexsim.sweep.table import best_table


# A run writes its plots unless told not to (when matplotlib is installed). The test suite runs hundreds
# of small sweeps and turns this off (tests/conftest.py); its plot tests pass --plots or set it.
PLOTS_BY_DEFAULT = True


def cmd_sweep(args) -> int:
    cfg = config.from_args(SweepConfig, args, axes={n: getattr(args, n) for n in PARAMS}).checked()
    grid = build_grid(cfg)
    if not grid.specs:
        why = grid.notes[0] if grid.notes else "no rows"
        raise UserError(f"nothing to run: every configuration was skipped ({why})")

    def notes():  # once the folder is ours: a refused run says one line, not the grid's notes too
        for note in dict.fromkeys(grid.notes):
            print(f"note: {note}", file=sys.stderr)

    with plots_of(cfg.out, "sweep", wants_plots(cfg.plots, cfg.no_plots)):
        beyond: list[str] = []
        rows = sweep(grid, cfg.out, resume=cfg.resume, jobs=cfg.jobs, force=cfg.force, on_start=notes,
                     dask=cfg.dask, notes=beyond)
        extrapolation_note(cfg.profile, rows, beyond)
        print(f"{len(rows)} rows in {Path(cfg.out) / FILES[1]} (and {FILES[0]}, {FILES[2]})")
        scheds = ", ".join(dict.fromkeys(config.csv_list("--scheduler", cfg.scheduler)))
        print(f"best lossless configuration per trace and hardware ({scheds}, simulated tokens/s)")
        print(best_table(rows, grid.traces))
        print("L/EAD: the ceiling, L / mean EAD; vs ar: speedup over ar on the same hardware (below 1: slower); "
              "vs single: best dex over the best single-depth method")
    return 0


def extrapolation_note(profile: str | None, rows: list[dict], notes: list[str]) -> None:
    """One stderr line for a sweep priced from a profile beyond its grid: how many rows, and what."""
    flagged = sum(bool(r["profile_extrapolated"]) for r in rows)
    if profile is None or not flagged:
        return
    what = "; ".join(widest(notes)) if notes else "rows of an earlier run (resumed)"
    print(f"note: --profile {profile}: {flagged} of {len(rows)} rows priced beyond its measured grid "
          f"(column profile_extrapolated): {what}", file=sys.stderr)


def wants_plots(plots: bool, no_plots: bool) -> bool:
    if plots and no_plots:
        raise UserError("--plots and --no-plots: choose one")
    if plots or (not no_plots and PLOTS_BY_DEFAULT and importlib.util.find_spec("matplotlib") is not None):
        return True
    if not no_plots and PLOTS_BY_DEFAULT:
        print("note: no plots: matplotlib is not installed (pip install -e '.[viz]')", file=sys.stderr)
    return False


def start_plots(out: str, command: str = "sweep") -> subprocess.Popen:
    """`python -m viz --wait COMMAND OUT`, in its own process (plots read results, never the other way
    round), started before the run: it loads matplotlib on a core the compiling or replaying leaves
    idle, then waits for `finish_plots`."""
    return subprocess.Popen([sys.executable, "-m", "viz", "--wait", command, out], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_lower_priority if os.name == "posix" else None)


def _lower_priority() -> None:
    """Niced: loading matplotlib must not slow a warm run's replays, which keep every core busy."""
    os.nice(10)


def finish_plots(plotter: subprocess.Popen) -> None:
    """The results are written: let the plotter draw them, and print what it wrote."""
    stdout, stderr = plotter.communicate("")
    if plotter.returncode != 0:
        last = (stderr.strip().splitlines() or ["failed"])[-1]
        if "ModuleNotFoundError" in stderr or "No module named" in stderr:
            last = "needs the viz extra: pip install -e '.[viz]'"
        raise UserError(f"--plots: {last.removeprefix('error: ')}")
    sys.stderr.write(stderr)
    for path in stdout.splitlines():
        print(f"plot: {path}")


@contextmanager
def plots_of(out: str, command: str, wanted: bool):
    """Plot the results written inside the block (if `wanted`); the plotter dies with a failed run."""
    plotter = start_plots(out, command) if wanted else None
    try:
        yield
    except BaseException:
        if plotter is not None:
            plotter.kill()
            plotter.wait()
        raise
    if plotter is not None:
        finish_plots(plotter)


def add_axis_flags(p) -> None:
    """One flag per policy parameter: a comma-separated axis, or one value for every row."""
    for name, default in axis_defaults().items():
        param = PARAMS[name]
        users = ", ".join(s.name for s in registry.REGISTRY.values() if name in s.params)
        shown = "" if default is None else f" (default: {default})"
        if param.axis:
            extra = "; several exit sets: separate them by ';' when one is a depth list" if name == "exits" else ""
            p.add_argument(axis_flag(name), dest=name, default=default,
                           help=f"{users}: {param.help}, comma-separated{extra}{shown}")
        else:
            p.add_argument(param.flag, dest=name, type=param.kind, default=default,
                           help=f"{users}: {param.help}{shown}")


def register(sub) -> None:
    p = sub.add_parser("sweep", help="replay traces under a grid of policies, priced on a grid of GPUs")
    config.add_flags(p, SweepConfig, defaults={"jobs": config.usable_cpus(),
                                               "policies": ",".join(registry.names())})
    add_axis_flags(p)
    p.set_defaults(func=cmd_sweep)
