"""The exit-depth grammar, shared by every flag that names depths (`--exits`, `--depths`):
`all` (every layer), `every:N` (N, 2N, ... and L) or `d1,d2,...`; L is always in the set. On a trace,
`all` is every recorded depth and `settle:N` the N recorded depths below L where most tokens settle
(their stable EAD: the exit set a trace's own profile suggests). A sweep takes several sets at once
(`specs`)."""
from __future__ import annotations

import numpy as np

from dexsim.errors import UserError


def check_depths(values, L: int, flag: str = "--depths") -> np.ndarray:
    """Sorted unique depths with L added; a depth outside [1, L] is an error naming the flag."""
    values = np.asarray(values, dtype=np.int64).ravel()
    bad = values[(values < 1) | (values > L)]
    if bad.size:
        raise UserError(f"{flag}: depth {bad[0]} outside [1, {L}]")
    return np.unique(np.append(values, L)).astype(np.int16)


def parse_depths(spec: str, L: int, flag: str = "--depths") -> np.ndarray:
    """One spec on a model of L layers -> int16 depths."""
    if spec == "all":
        return check_depths(np.arange(1, L + 1), L, flag)
    if spec.startswith("settle:"):
        raise UserError(f"{flag} {spec}: needs a trace (the depths where its tokens settle)")
    try:
        if spec.startswith("every:"):
            step = int(spec.removeprefix("every:"))
            if step < 1:
                raise UserError(f"{flag} {spec!r}: step must be >= 1")
            return check_depths(np.arange(step, L + 1, step), L, flag)
        return check_depths([int(x) for x in spec.split(",")], L, flag)
    except ValueError:
        raise UserError(f"{flag} {spec!r}: expected all, every:N or d1,d2,...") from None


def settled(spec: str, L: int, order) -> np.ndarray:
    """`settle:N` on a trace: the first N of `order` (its recorded depths below L, most tokens settling
    there first), and L."""
    n = int(spec.removeprefix("settle:"))
    return check_depths(np.asarray(list(order)[:n], np.int64), L)


def on_trace(spec: str, L: int, depths, flag: str = "--exits", where: str = "the trace", order=()) -> np.ndarray:
    """A spec on a trace that recorded `depths`: `all` is every recorded depth (not every layer: a
    trace may record every few layers only), `settle:N` the first N of `order` (see `settled`); any
    other spec must name recorded depths only (one line naming the flag and the first depth `where`
    lacks)."""
    if spec == "all":
        return np.asarray(depths, np.int16)
    if spec.startswith("settle:"):
        _check_syntax(spec, flag)
        return settled(spec, L, order)
    out = parse_depths(spec, L, flag)
    missing = out[~np.isin(out, depths)]
    if missing.size:
        raise UserError(f"{flag} {spec}: depth {missing[0]} is not recorded in {where} (its field 'depths': "
                        f"{','.join(map(str, np.asarray(depths).tolist()))})")
    return out


def recorded(spec: str, L: int, depths, flag: str = "--exits", order=()) -> tuple | None:
    """A spec on a trace that recorded `depths`: `all` is every recorded depth, `settle:N` the first N
    of `order` (see `settled`); None if the spec names a depth that is not recorded."""
    if spec == "all":
        return tuple(int(d) for d in depths)
    if spec.startswith("settle:"):
        return tuple(int(d) for d in settled(spec, L, order))
    out = parse_depths(spec, L, flag)
    return tuple(int(d) for d in out) if np.isin(out, depths).all() else None


def specs(text: str, flag: str = "--exits") -> list[str]:
    """Several specs, separated by commas, or by `;` when one is a depth list (`"4,8,16;every:4"`).
    Only the syntax is checked here: whether the depths exist is a question for each model."""
    if ";" in text:
        parts = [s.strip() for s in text.split(";") if s.strip()]
    else:
        parts = [s.strip() for s in text.split(",") if s.strip()]
        if parts and all(p.isdigit() for p in parts):  # one explicit depth set
            parts = [",".join(parts)]
        elif any(p.isdigit() for p in parts):
            raise UserError(f"{flag} {text!r}: separate an explicit depth set from other specs with ';'")
    if not parts:
        raise UserError(f"{flag}: empty list")
    for spec in parts:
        _check_syntax(spec, flag)
    return parts


def _check_syntax(spec: str, flag: str) -> None:
    try:
        if spec == "all":
            return
        prefix = next((p for p in ("every:", "settle:") if spec.startswith(p)), None)
        depths = [int(spec.removeprefix(prefix))] if prefix else map(int, spec.split(","))
        if all(d >= 1 for d in depths):
            return
    except ValueError:
        pass
    raise UserError(f"{flag} {spec!r}: expected all, every:N, settle:N or d1,d2,... with N and depths >= 1")
