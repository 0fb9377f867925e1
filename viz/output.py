"""Output files: checking a path before the (slow) rendering starts, figures on the Agg backend, PNGs.

Figures are built as `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: no display,
no global figure registry, the same result on every machine.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dexsim.errors import UserError


def check_out(path: str, extensions: tuple, flag: str = "--out") -> str:
    """The path's extension (lower case), once the path is known to be writable. Checked up front so a
    bad path fails in a second, not after the whole animation has been rendered."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in extensions:
        raise UserError(f"{flag} {path}: the file name must end in {' or '.join(extensions)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: folder {parent} does not exist")
    if p.is_dir():
        raise UserError(f"{flag} {path}: is a folder")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{flag} {path}: cannot write there (permission denied)")
    return ext


def check_dir(path: str, flag: str) -> Path:
    """A folder to write plots into: created if missing."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create ({e.strerror})") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write there (permission denied)")
    return p


class _Canvas(FigureCanvasAgg):
    """Agg, but `draw_idle` does nothing. An animation asks for an idle redraw after every frame and
    its writer then renders the frame again to save it; on Agg the idle redraw is immediate, so every
    frame would be rendered twice. Saving and `draw()` still render."""

    def draw_idle(self, *args, **kwargs):
        pass


def new_figure(width: float, height: float, dpi: float = 100) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi)
    _Canvas(fig)
    return fig


def save_png(fig: Figure, path, flag: str = "--out") -> str:
    try:
        fig.savefig(path, format="png", dpi=fig.dpi)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None
    return str(path)


_PENDING: list = []  # what `save_all`'s forked workers draw: they inherit it, nothing is pickled


def _save_one(i: int):
    path, make = _PENDING[i]
    fig = make()
    return None if fig is None else save_png(fig, path)


def save_all(figures: list, procs: int = 1) -> list:
    """Draw and save each (path, make) pair, `make()` building the figure or returning None (no plot):
    the paths written, None where nothing was drawn, in order. With procs > 1, in forked processes
    (Agg figures share nothing; a sweep's 15 PNGs take ~3.5 s on one core)."""
    global _PENDING
    _PENDING = list(figures)
    try:
        if procs <= 1 or len(_PENDING) < 2 or "fork" not in multiprocessing.get_all_start_methods():
            return [_save_one(i) for i in range(len(_PENDING))]
        with ProcessPoolExecutor(min(procs, len(_PENDING)), mp_context=multiprocessing.get_context("fork")) as ex:
            return list(ex.map(_save_one, range(len(_PENDING))))
    finally:
        _PENDING = []
