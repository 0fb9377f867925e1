"""Hindsight policies (oracle-select): replay every candidate a hindsight policy picks among, then
pick one by an objective that the caller chooses (weight loads; simulated seconds on some hardware)."""
from __future__ import annotations

import numpy as np

from dexsim.core import registry
from dexsim.replay.executor import replay, result
from dexsim.traces.format import Trace


def candidates(trace: Trace, name: str, exits=None, **params) -> list:
    """The policy objects hindsight policy `name` chooses among on `trace` (exits: default every
    recorded depth)."""
    spec = registry.get(name)
    exits = trace.depths if exits is None else np.asarray(exits)
    full = registry.full_params(spec, params)
    return [registry.make_policy(n, trace.L, depths=trace.depths, **p)
            for n, p in spec.candidates(trace.L, exits, full)]


def replay_all(trace: Trace, policies: list, *, seed: int = 0) -> list[tuple[dict, object]]:
    """(result, finished lattice) of each candidate."""
    out = []
    for policy in policies:
        lat = replay(trace, policy, seed=seed)
        out.append((result(trace, lat, policy), lat))
    return out


def pick(name: str, results: list[dict], costs) -> tuple[dict, int]:
    """The candidate with the least cost (the first such on ties), as the hindsight policy's result."""
    best = int(np.argmin(costs))
    return {**results[best], "policy": name, "oracle_policy": results[best]["policy"]}, best


def oracle_select(trace: Trace, *, exits=None, drafts=None, seed: int = 0, objective=None) -> dict:
    """The best fixed depth in hindsight: AR or LayerSkip at one exit depth of E (and one draft length),
    whichever minimises `objective(result)` (default: weight loads, one device's cost)."""
    objective = objective or (lambda r: r["weight_loads"])
    done = replay_all(trace, candidates(trace, "oracle-select", exits, draft=drafts), seed=seed)
    results = [r for r, _ in done]
    return pick("oracle-select", results, [objective(r) for r in results])[0]
