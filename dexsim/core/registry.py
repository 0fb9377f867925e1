"""The policy registry: one `PolicySpec` per policy, the only list of policies in the project.

Adding a policy is two things: its rule (a class in `policies.py`, with its `kind` branch in the
compiled `select_seq`/`wants_node`, or any Python object with `select`, `wants`, `exits`, `buffer` and
`name`, which the core runs one Python round at a time) and one `PolicySpec` here. The flags of every
CLI, the sweep's axes and rows, the result columns, the table and plot labels and the test strategies
all come from the specs and from `params.PARAMS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dexsim.core.params import DEFAULT_DRAFT, ORACLE_DRAFTS, PARAMS
from dexsim.core.policies import AR, DEX, Adaptive, LayerSkip
from dexsim.errors import UserError

# Result fields every policy reports, then its own parameters (in PARAMS order).
COMMON = ("explorers", "buffer", "exits")


@dataclass(frozen=True)
class PolicySpec:
    """A policy as every tool sees it.

    `build(L, exits, depths, params)` makes the policy object: `exits` the exit set asked for, `depths`
    the depths that can be read at all (a trace's recorded ones, a model's exit heads), `params` every
    parameter of `params` with its value (`full_params`). A *hindsight* policy has no `build`: it
    picks, per trace and hardware, the best of its `candidates(L, exits, params)` [(name, params)],
    which only a replay can do; its `search` parameter takes a list of values (the sweep's whole axis)."""

    name: str
    help: str
    params: tuple = ()  # names in PARAMS, in the order a sweep nests their axes (outermost first)
    build: Callable | None = None
    candidates: Callable | None = None
    search: str | None = None  # hindsight: the parameter it searches over, and its result column
    search_column: str | None = None
    single_depth: bool = False  # a selection method: what DEX is measured against
    describe: Callable[[dict], str] = field(default=lambda row: row["policy"])
    effort: Callable[[dict], tuple] = field(default=lambda params: (0,))  # replays to start first: larger

    @property
    def hindsight(self) -> bool:
        return self.build is None


def _layerskip(L, exits, depths, p):
    return LayerSkip(L, p["exit"], DEFAULT_DRAFT if p["draft"] is None else p["draft"])


def _oracle_candidates(L, exits, p) -> list[tuple[str, dict]]:
    drafts = ORACLE_DRAFTS if p["draft"] is None else tuple(np.atleast_1d(p["draft"]).tolist())
    return [("ar", {})] + [("layerskip", {"exit": int(e), "draft": int(g)}) for e in exits if e < L for g in drafts]


def _oracle_pick(row: dict) -> str:
    return "ar" if row.get("oracle_policy") == "ar" else f"e={row.get('exit')} g={row.get('draft')}"


BUILTIN = (
    PolicySpec("ar", "autoregressive decoding: the baseline", build=lambda L, exits, depths, p: AR(L)),
    PolicySpec("layerskip", "LayerSkip self-speculative decoding: draft at depth e, verify gamma drafts at once",
               params=("exit", "draft"), build=_layerskip, single_depth=True,
               describe=lambda r: f"layerskip e={r['exit']} g={r['draft']}", effort=lambda p: (1,)),
    PolicySpec("adaptive", "single-depth selection (AdaDecode/CALM/DEL): guess at the first exit whose "
               "confidence reaches tau", params=("exits", "threshold", "buffer"),
               build=lambda L, exits, depths, p: Adaptive(L, exits, p["threshold"], p["buffer"]),
               single_depth=True, effort=lambda p: (2,),
               describe=lambda r: f"adaptive tau={r['threshold']:g} B={r['buffer']} E={r['exits']}"),
    PolicySpec("oracle-select", "the best fixed depth in hindsight (AR or LayerSkip at one exit of E, "
               "each draft length)", params=("exits", "draft"), candidates=_oracle_candidates,
               search="draft", search_column="oracle_drafts", single_depth=True,
               describe=lambda r: f"oracle-select E={r['exits']} ({_oracle_pick(r)})"),
    PolicySpec("dex", "depth exploration: a branch per new exit guess, k explorers a round",
               params=("exits", "explorers", "buffer", "priority", "eviction"),
               build=lambda L, exits, depths, p: DEX(L, exits, p["explorers"], p["buffer"], p["priority"],
                                                     p["eviction"] == "on"),
               describe=lambda r: f"dex k={r['explorers']} B={r['buffer']} {r['priority']} E={r['exits']}"
                                  + (" no-evict" if r.get("eviction") == "off" else ""),
               effort=lambda p: (3, p["priority"] != "align", p["explorers"])),
)
REGISTRY: dict[str, PolicySpec] = {s.name: s for s in BUILTIN}


def register(spec: PolicySpec) -> PolicySpec:
    if any(p not in PARAMS for p in spec.params):
        raise ValueError(f"policy {spec.name}: unknown parameter in {spec.params}")
    REGISTRY[spec.name] = spec
    return spec


def names(hindsight: bool = True) -> list[str]:
    """Every policy's name in registry order (without hindsight ones if asked)."""
    return [n for n, s in REGISTRY.items() if hindsight or not s.hindsight]


def get(name: str, flag: str = "--policy", known: list[str] | None = None) -> PolicySpec:
    known = names() if known is None else known
    if name not in known:
        hint = ""
        if name in REGISTRY and REGISTRY[name].hindsight:
            hint = " (it needs hindsight: use `python -m dexsim replay` on a trace)"
        raise UserError(f"{flag}: unknown policy {name!r}{hint} (known: {', '.join(known)})")
    return REGISTRY[name]


def full_params(spec: PolicySpec, given: dict, L: int | None = None, depths=None) -> dict:
    """The spec's parameters: given values, the others at their defaults, resolved on a model of L
    layers whose readable depths are `depths` where a default depends on them (the policy objects
    check the values)."""
    out = {}
    for name in spec.params:
        v = given.get(name)
        if v is None and PARAMS[name].on_model is not None and L is not None:
            v = PARAMS[name].on_model(L, depths)
        out[name] = PARAMS[name].default if v is None else v
    return out


def make_policy(name: str, L: int, *, exits=None, depths=None, **params):
    """A policy object from its name and parameter values (defaults where not given). `depths`: the
    depths that can be read (default every layer); `exits`: the exit set (default `depths`: a trace
    recorded every few layers exits where it recorded)."""
    spec = get(name)
    if spec.hindsight:
        raise UserError(f"--policy {name}: picks among other policies in hindsight; it has no policy object")
    depths = np.arange(1, L + 1) if depths is None else np.asarray(depths)
    exits = depths if exits is None else np.asarray(exits)
    return spec.build(L, exits, depths, full_params(spec, params, L, depths))


def policy_params(policy) -> dict:
    """A policy object's parameters as result fields: explorers, buffer, exits, then its own."""
    out = {"explorers": int(policy.explorers), "buffer": int(policy.buffer),
           "exits": ",".join(map(str, np.asarray(policy.exits).tolist()))}
    spec = REGISTRY.get(policy.name)
    for name in PARAMS:
        if spec is not None and name in spec.params and name not in COMMON:
            out[name] = getattr(policy, name)
    return out


def describe(row: dict) -> str:
    """A configuration (a result row, or a policy name and its parameters) in a few words."""
    spec = REGISTRY.get(row["policy"])
    try:
        return spec.describe(row) if spec is not None else str(row["policy"])
    except (KeyError, TypeError, ValueError):  # a row without the parameters (an old or foreign file)
        return str(row["policy"])


# ---------------------------------------------------------------------------- at the CLI edge

@dataclass(frozen=True)
class PolicyConfig:
    """A policy by name with the values of its flags (every PARAMS entry; None: not given)."""

    name: str
    params: dict

    @property
    def spec(self) -> PolicySpec:
        return get(self.name)

    def own(self) -> dict:
        """The values of the policy's own parameters, `exits` aside (the caller resolves the exit set)."""
        return {k: v for k, v in self.params.items() if k in self.spec.params and k != "exits"}

    def policy(self, L: int, exits=None, depths=None):
        """The policy object on a model of L layers (see `make_policy`)."""
        return make_policy(self.name, L, exits=exits, depths=depths, **self.own())


def add_policy_flags(parser, known: list[str] | None = None, default: str | None = "dex") -> None:
    """`--policy` and one flag per parameter, each naming the policies that use it."""
    known = names() if known is None else known
    shown = "" if default is None else f" (default: {default})"
    listed = "; ".join(f"{n}: {REGISTRY[n].help}" for n in known)
    parser.add_argument("--policy", default=default, help=f"one of {', '.join(known)}{shown}. {listed}")
    for p in PARAMS.values():
        users = [s.name for s in REGISTRY.values() if p.name in s.params and s.name in known]
        if not users:
            continue
        shown = (f" ({', '.join(p.choices)})" if p.choices else "")
        shown += "" if p.default is None else f" (default: {p.default})"
        parser.add_argument(p.flag, *([p.short] if p.short else []), dest=p.name, type=p.kind, default=p.default,
                            help=f"{', '.join(users)}: {p.help}{shown}")


def policy_config(args) -> PolicyConfig:
    """The PolicyConfig of parsed `add_policy_flags` flags; every value given is in its range, whether or
    not the chosen policy reads it (`--threshold 1.1` is a mistake under any policy)."""
    params = {name: getattr(args, name) for name in PARAMS if hasattr(args, name)}
    for name, value in params.items():
        if value is not None:
            PARAMS[name].check(value)
    return PolicyConfig(args.policy, params)
