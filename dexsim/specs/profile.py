"""A measured hardware profile (`dex-profile/1`): what `python -m dexref profile` times on a device and
`python -m dexsim calibrate` measures of this CPU, read and checked here (numpy only, no torch).

One format, two uses:

- `rates` (every profile): the device's achieved memory bandwidth, fp32 matmul FLOP/s and per-op
  time. For the `cpu-local` catalog entry: `calibrate` writes a profile holding only these (and the
  host's per-round control cost), and `catalog.gpus()` overlays the file in the user cache on the
  bundled entry.
- the tables (profiles of a model shape, from `dexref profile`): seconds of one layer step over a grid
  of rows x context per row, of one exit-head group over rows, the host's control cost per round,
  a stage-to-stage transfer where the machine had two devices, and `head_refill`: the layer steps'
  worth of time a head group costs the layer calls after it (0 where a profile does not say).
  `--profile` prices from them instead of the roofline (`dexsim/hardware/cost.py`).

Between grid points a table is interpolated linearly in rows and in context (a layer's cost is close
to affine in both: weights once, then KV and activations per row and position), so the grid points
themselves are reproduced exactly; outside the grid it is extrapolated linearly from the two nearest
points, never below the cheapest point measured, and `extrapolated` says so.
Every problem with a file is one line naming the file and the field.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dexsim.errors import UserError

FORMAT = "dex-profile/1"
# The arch fields a profile's shape must share with the model it prices (`check_shape`).
SHAPE_FIELDS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")
RATES = ("peak_flops", "memory_bandwidth", "kernel_overhead_s")


@dataclass(frozen=True, eq=False)  # equal and hashed as the one loaded object: hardware holding it keys caches
class Profile:
    """The measured tables of one device and model shape (seconds)."""

    path: str
    device: str  # the device's name as measured (e.g. the CUDA device name, or the CPU model)
    catalog_gpu: str | None  # the catalog entry this device prices as (cpu-local for a CPU), or None
    arch: dict
    dtype: str
    rows: np.ndarray  # [R] increasing
    contexts: np.ndarray  # [C] increasing, KV positions each row reads
    layer_s: np.ndarray  # [R, C]
    head_rows: np.ndarray  # [H] increasing
    head_s: np.ndarray  # [H]
    host_round_s: float  # the host's control per core round (core + engine bookkeeping, compute stubbed)
    host_exit_s: float  # ... and per exit read
    head_refill: float  # layer steps' worth of time an exit-head group adds to the layer calls after it
    transfer_rows: np.ndarray | None  # [T] rows of one stage-to-stage message, None: not measured
    transfer_s: np.ndarray | None

    def layer(self, rows, ctx_per_row):
        """Seconds of one layer step of `rows` rows, each reading `ctx_per_row` KV positions (broadcast)."""
        return _grid2(self.rows, self.contexts, self.layer_s, rows, ctx_per_row)

    def head(self, rows):
        return _grid1(self.head_rows, self.head_s, rows)

    def transfer(self, rows):
        return _grid1(self.transfer_rows, self.transfer_s, rows)

    def extrapolated(self, layer_rows=(), ctx_per_row=None, head_rows=(), transfer_rows=()) -> list[str]:
        """What of a priced run lies outside the measured grid (empty: nothing). `ctx_per_row`: the
        context per row priced (one value, or every value a run priced)."""
        out = []
        for what, grid, values in (("layer rows", self.rows, layer_rows), ("head rows", self.head_rows, head_rows),
                                   ("transfer rows", self.transfer_rows, transfer_rows)):
            v = np.asarray(values, float)
            v = v[v > 0]
            if grid is not None and v.size and (v.min() < grid[0] or v.max() > grid[-1]):
                out.append(f"{what} {int(v.min())}..{int(v.max())} outside the measured {int(grid[0])}..{int(grid[-1])}")
        c = np.asarray([] if ctx_per_row is None else ctx_per_row, float).ravel()
        if c.size and (c.min() < self.contexts[0] or c.max() > self.contexts[-1]):
            shown = f"{c.min():.0f}" if c.min() == c.max() else f"{c.min():.0f}..{c.max():.0f}"
            out.append(f"context {shown} per row outside the measured "
                       f"{int(self.contexts[0])}..{int(self.contexts[-1])}")
        return out


_NOTE = re.compile(r"(?P<what>.+?) (?P<lo>\d+)(?:\.\.(?P<hi>\d+))?(?P<per> per row)? outside the measured (?P<grid>.+)")


def widest(notes: list[str]) -> list[str]:
    """Notes of `Profile.extrapolated` from many priced runs as one per kind, over the widest range."""
    out: dict[str, list] = {}
    for n in notes:
        m = _NOTE.fullmatch(n)
        if m is None:
            out.setdefault(n, [n])
            continue
        lo, hi = float(m["lo"]), float(m["hi"] or m["lo"])
        w = out.setdefault(m["what"], [None, lo, hi, m["per"] or "", m["grid"]])
        w[1], w[2] = min(w[1], lo), max(w[2], hi)
    return [w[0] if len(w) == 1 else f"{what} {w[1]:.0f}{'' if w[1] == w[2] else f'..{w[2]:.0f}'}{w[3]} outside "
            f"the measured {w[4]}" for what, w in out.items()]


def _interp(grid: np.ndarray, x) -> tuple[np.ndarray, np.ndarray]:
    """(index i, weight w) with x = (1 - w) grid[i] + w grid[i+1]: linear, extrapolated past the ends."""
    x = np.asarray(x, float)
    if len(grid) == 1:
        return np.zeros(x.shape, np.int64), np.zeros(x.shape)
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    w = (x - grid[i]) / (grid[i + 1] - grid[i])
    return i, w


def _grid1(grid, table, x):
    i, w = _interp(grid, x)
    v = table[i] if len(grid) == 1 else (1 - w) * table[i] + w * table[i + 1]
    v = np.maximum(v, table.min())  # extrapolated below the grid: never cheaper than the cheapest step measured
    return float(v) if v.ndim == 0 else v


def _grid2(rgrid, cgrid, table, r, c):
    r, c = np.broadcast_arrays(np.asarray(r, float), np.asarray(c, float))
    i, wi = _interp(rgrid, r)
    j, wj = _interp(cgrid, c)
    i1 = i if len(rgrid) == 1 else i + 1
    j1 = j if len(cgrid) == 1 else j + 1
    v = ((1 - wi) * (1 - wj) * table[i, j] + (1 - wi) * wj * table[i, j1]
         + wi * (1 - wj) * table[i1, j] + wi * wj * table[i1, j1])
    v = np.maximum(v, table.min())  # extrapolated below the grid: never cheaper than the cheapest step measured
    return float(v) if v.ndim == 0 else v


# --- reading and checking ---------------------------------------------------------------------------

def _problem(path, field: str, what: str) -> UserError:
    return UserError(f"{path}: field {field}: {what}")


def _grid(path, d: dict, field: str) -> np.ndarray:
    v = d.get(field)
    if not isinstance(v, list) or not v or not all(_is_number(x) and x > 0 for x in v):
        raise _problem(path, field, f"{_short(v)} is not a non-empty list of positive numbers")
    a = np.asarray(v, float)
    if (np.diff(a) <= 0).any():
        raise _problem(path, field, f"{_short(v)} is not strictly increasing")
    return a


def _table(path, d: dict, field: str, shape: tuple) -> np.ndarray:
    v = d.get(field)
    try:
        a = np.asarray(v, float)
    except (TypeError, ValueError):
        raise _problem(path, field, f"{_short(v)} is not a table of numbers") from None
    if v is None or a.shape != shape:
        raise _problem(path, field, f"shape {a.shape if v is not None else 'missing'} does not match the grid "
                                    f"{shape} (a grid point is missing)")
    bad = np.argwhere(~np.isfinite(a) | (a <= 0))
    if len(bad):
        at = tuple(int(x) for x in bad[0])
        raise _problem(path, f"{field}{list(at)}", f"{a[at]!r} is not a positive finite time in seconds")
    return a


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def read_json(path) -> dict:
    """A profile file as a JSON object, or one line naming the file."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such profile file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # JSON errors, bad UTF-8
        raise UserError(f"{path}: not a JSON profile ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a JSON object (a {FORMAT} profile)")
    return d


def check_format(path, d: dict) -> None:
    if d.get("format") != FORMAT:
        raise _problem(path, "format", f"{_short(d.get('format'))}, expected {FORMAT!r}")


def load_profile(path) -> Profile:
    """The measured tables of a `dexref profile` file; one line naming the file and field if it is not one."""
    d = read_json(path)
    check_format(path, d)
    if "layer_s" not in d:
        raise _problem(path, "layer_s", "missing (a profile of this machine's rates only, from `python -m dexsim "
                                        "calibrate`, has no tables: make one with `python -m dexref profile`)")
    shape = d.get("shape")
    if not isinstance(shape, dict) or not isinstance(shape.get("arch"), dict):
        raise _problem(path, "shape.arch", "missing (the model shape the tables were measured on)")
    arch = shape["arch"]
    for k in SHAPE_FIELDS:
        if not _is_number(arch.get(k)) or arch[k] <= 0 or arch[k] != int(arch[k]):
            raise _problem(path, f"shape.arch.{k}", f"{_short(arch.get(k))} is not a positive integer")
    rows, contexts, head_rows = (_grid(path, d, f) for f in ("rows", "contexts", "head_rows"))
    layer_s = _table(path, d, "layer_s", (len(rows), len(contexts)))
    head_s = _table(path, d, "head_s", (len(head_rows),))
    host = d.get("host_round_s")
    if not _is_number(host) or host < 0:
        raise _problem(path, "host_round_s", f"{_short(host)} is not a non-negative time in seconds")
    host_exit = d.get("host_exit_s", 0.0)
    if not _is_number(host_exit) or host_exit < 0:
        raise _problem(path, "host_exit_s", f"{_short(host_exit)} is not a non-negative time in seconds")
    refill = d.get("head_refill", 0.0)  # profiles before it was measured: none priced
    if not _is_number(refill) or refill < 0:
        raise _problem(path, "head_refill", f"{_short(refill)} is not a non-negative number of layer steps")
    t_rows = t_s = None
    if d.get("transfer") is not None:
        t = d["transfer"]
        if not isinstance(t, dict):
            raise _problem(path, "transfer", f"{_short(t)} is not an object (or null: not measured)")
        t_rows = _grid(path, t, "rows")
        t_s = _table(path, t, "seconds", (len(t_rows),))
    device = d.get("device")
    if not isinstance(device, dict) or not isinstance(device.get("name"), str):
        raise _problem(path, "device.name", "missing (the device the tables were measured on)")
    gpu = d.get("catalog_gpu")
    if gpu is not None and not isinstance(gpu, str):
        raise _problem(path, "catalog_gpu", f"{_short(gpu)} is not a catalog GPU name")
    dtype = d.get("dtype")
    if not isinstance(dtype, str):
        raise _problem(path, "dtype", f"{_short(dtype)} is not a dtype name")
    return Profile(path=str(path), device=device["name"], catalog_gpu=gpu, arch={k: int(arch[k]) for k in SHAPE_FIELDS},
                   dtype=dtype, rows=rows, contexts=contexts, layer_s=layer_s, head_rows=head_rows, head_s=head_s,
                   host_round_s=float(host), host_exit_s=float(host_exit), head_refill=float(refill),
                   transfer_rows=t_rows, transfer_s=t_s)


def check_shape(profile: Profile, model) -> None:
    """The profile was measured on the shape of `model` (a catalog ModelSpec), or one line naming the field."""
    for k in SHAPE_FIELDS:
        if profile.arch[k] != getattr(model, k):
            raise UserError(f"{profile.path}: field shape.arch.{k}: {profile.arch[k]}, but the model priced "
                            f"({model.name}) has {getattr(model, k)}: a profile of another shape")


def rates_entry(d: dict) -> dict:
    """The catalog fields (`gpus.json` names) a profile's `rates` give the cpu-local entry."""
    rates = d.get("rates")
    if not isinstance(rates, dict):
        raise UserError("field rates: missing (not a measured profile of this machine)")
    out = {k: rates[k] for k in (*RATES, "memory_bytes", "bandwidth_efficiency") if k in rates}
    for field, key in (("host_round_s", "round_overhead_s"), ("host_exit_s", "exit_overhead_s"),
                       ("head_refill", "head_refill")):
        if field in d:
            out[key] = d[field]
    return out
