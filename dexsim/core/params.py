"""Policy parameters, each described once: flag, type, default, allowed values, help text, and the
flag of its axis in a sweep. Every CLI, the sweep's grid, the result columns and the test strategies
read them from here (the policies that take each one are in `registry.py`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dexsim.errors import UserError

PRIORITIES = ("eager", "align", "deep", "confident")  # dex's rules for choosing a round's branches
DEFAULT_DRAFT = 4  # layerskip's draft length when none is given
ORACLE_DRAFTS = (1, 2, 3, 4, 6, 8)  # the draft lengths oracle-select searches when none is given


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float or str
    default: object  # None: the policy decides (see its spec)
    help: str
    short: str | None = None
    low: float | None = None  # allowed values: low <= v <= high, or one of choices
    high: float | None = None
    choices: tuple = ()
    axis: str | None = None  # the sweep's flag for a comma-separated list of values (None: one value)
    axis_default: str | None = None  # the default sweep's values
    on_model: Callable | None = None  # (L, readable depths) -> the value when none is given, if it depends on them
    space: tuple = ()  # (low, high[, step or "log"]): the values `tune` searches (choices, depths, exit sets need none)

    @property
    def flag(self) -> str:
        return "--" + self.name

    def check(self, value, flag: str | None = None):
        """`value`, or one line naming the flag if it is not allowed."""
        flag = flag or self.flag
        if self.choices and value not in self.choices:
            raise UserError(f"{flag} {value!r}: must be one of {', '.join(self.choices)}")
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise UserError(f"{flag} {value}: must be in [{self.low:g}, {self.high:g}]")
        if self.low is not None and value < self.low:
            raise UserError(f"{flag} {value}: must be >= {self.low:g}")
        return value


def nearest_half(L: int, depths) -> int:
    """The depth below L nearest L/2 (ties: the shallower, so L//2 when every depth can exit), or L."""
    below = [int(d) for d in depths if d < L]
    return min(below, key=lambda d: (abs(2 * d - L), d)) if below else L


PARAMS = {p.name: p for p in (
    Param("exits", str, "all", "exit set E: all | every:N | settle:N | d1,d2,... (L always included; all: every "
          "depth the trace recorded, or the exit heads can read; settle:N: the N recorded depths below L where "
          "most of the trace's tokens settle)",
          axis="exits", axis_default="every:8,settle:2"),
    Param("explorers", int, 4, "explorers: node-layers advanced per round", short="-k", low=1,
          axis="explorers", axis_default="4,8", space=(1, 16, "log")),
    Param("buffer", int, 8, "most live branches B", low=0, space=(1, 16, "log")),
    Param("priority", str, "eager", "which branches advance first", choices=PRIORITIES,
          axis="priorities", axis_default="eager,deep"),
    Param("eviction", str, "on", "with a full buffer, a guess from a deeper exit replaces the leaf branch spawned "
          "at the shallowest depth (on) or is dropped (off)", choices=("on", "off"), axis="evictions",
          axis_default="on"),
    Param("exit", int, None, "the fixed exit depth e (default: the readable depth nearest L/2)", low=1,
          on_model=nearest_half),
    Param("draft", int, None, f"draft length gamma (layerskip: {DEFAULT_DRAFT} if not given; oracle-select "
          f"searches {', '.join(map(str, ORACLE_DRAFTS))} if not given)", low=0, axis="drafts", axis_default="1,2,4",
          space=(1, 8, "log")),
    Param("threshold", float, 0.9, "exit confidence threshold tau", low=0.0, high=1.0,
          axis="thresholds", axis_default="0.9", space=(0.05, 1.0, 0.05)),
)}


def check(**values) -> None:
    """Each named parameter's value is allowed (policy objects check what they are built with)."""
    for name, v in values.items():
        PARAMS[name].check(v)
