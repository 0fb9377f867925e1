"""Output files: checking a path before the (slow) rendering starts, figures on the Agg backend, PNGs.

Figures are built as `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: no display,
no global figure registry, the same result on every machine.
"""
from __future__ import annotations

import os
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
