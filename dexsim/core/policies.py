"""Policies: each is a rule for choosing a round's node-layers and a rule for expanding, on the one
lattice core (DESIGN.md section 3). A policy never decides a token.

`select(lat, s)` returns, for the live sequences s, an [len(s), M] mask of nodes that each compute one
more layer this round, and `hold`: for how many rounds that same choice stays right if nothing
exits, spawns or commits (the core jumps over them). `wants(lat, s, j, tok, conf)` says which nodes
that just read an exit ask for a child with that token; the core drops duplicates and enforces the
live-branch buffer.

A built-in policy's rules are compiled, per sequence (`select_seq`, `wants_node`), so a replay runs
them without leaving compiled code; adding one is a class here with its `params` and its branch in
those two functions, plus its `PolicySpec` in `registry.py` (what every tool knows of it; parameters
are checked against `params.py`). Any other object with `select`, `wants`, `exits`, `buffer` and `name` is a
policy too (the tests use such), run by the core one Python round at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from dexsim.core.lattice import FOREVER
from dexsim.core.params import PRIORITIES, check
from dexsim.errors import UserError


# Built-in policies as the compiled core sees them: `params` = (kind, explorers, buffer, priority,
# exit, threshold, evict).
AR_KIND, LAYERSKIP_KIND, ADAPTIVE_KIND, DEX_KIND = range(4)
EAGER, ALIGN, DEEP, CONFIDENT = range(4)


@njit(cache=True)
def select_seq(st, s, pol, chosen):
    """Fill `chosen` ([M] bool) with the node-layers sequence s computes this round; return for how
    many rounds that choice holds if nothing exits, spawns or commits."""
    kind, k, priority, exit = pol[0], pol[1], pol[3], pol[4]
    chosen[:] = False
    n, L = st.n[s], st.L
    if kind == AR_KIND:
        chosen[0] = True
        return FOREVER
    if kind == LAYERSKIP_KIND:
        tip = n - 1  # the chain's last node; it is the only one that can be below e
        if st.depth[s, tip] < exit:
            chosen[tip] = True
            return exit - st.depth[s, tip]
        for j in range(n):
            chosen[j] = st.depth[s, j] < L
        return FOREVER
    if kind == ADAPTIVE_KIND or priority == ALIGN:
        return _lowest_layer_first(st, s, k, chosen)
    if priority == EAGER:
        moved = everyone = 0
        for j in range(n):
            if st.depth[s, j] < L:  # movable: a child at its parent's depth may move along with it
                everyone += 1
                if moved < k:  # parents sit before children, so a kept child's parent is kept too
                    chosen[j] = True
                    moved += 1
        return FOREVER if moved == everyone else 1
    return _legal_greedy(st, s, k, priority == DEEP, chosen)


@njit(cache=True)
def _lowest_layer_first(st, s, k, chosen):
    """Advance the nodes at the lowest pending layer together, up to k: laggards catch up alone
    (drafting), then everyone moves layer-aligned (verification), sharing weight loads."""
    n, L = st.n[s], st.L
    dmin = L
    for j in range(n):
        dmin = min(dmin, st.depth[s, j])
    moved, left_out, rest = 0, False, L
    for j in range(n):
        d = st.depth[s, j]
        if d == dmin and moved < k:
            chosen[j] = True
            moved += 1
        elif d < L:
            rest = min(rest, d)
            left_out |= d == dmin
    return 1 if left_out else max(rest - dmin, 1)


@njit(cache=True)
def _legal_greedy(st, s, k, deep, chosen):
    """Anchor first, then branches by a key (spawn depth, or spawn confidence), greatest first,
    ties oldest first; each only if the dependency rule allows it given the choices before it: the
    parent is deeper, or at the same depth and chosen too. Because a child is never deeper than
    its parent, checking the parent is checking every ancestor."""
    n, L = st.n[s], st.L
    order = np.empty(n, np.int64)
    key = np.empty(n, np.float64)
    for j in range(n):  # insertion sort, descending key: stable
        key[j] = np.inf if j == 0 else (st.spawn_depth[s, j] if deep else st.spawn_conf[s, j])
        i = j
        while i > 0 and key[order[i - 1]] < key[j]:
            order[i] = order[i - 1]
            i -= 1
        order[i] = j
    moved = everyone = 0
    for i in range(n):
        j = order[i]
        d, p = st.depth[s, j], st.parent[s, j]
        if d >= L:
            continue
        everyone += 1
        pd = st.depth[s, p] if p >= 0 else 0
        if moved < k and (p < 0 or pd > d or (pd == d and chosen[p])):
            chosen[j] = True
            moved += 1
    return FOREVER if moved == everyone else 1


@njit(cache=True)
def wants_node(st, s, j, tok, conf, pol):
    """Does node (s, j), which just read exit token `tok` with confidence `conf`, ask for a child?"""
    kind, exit, threshold = pol[0], pol[4], pol[5]
    d, L = st.depth[s, j], st.L
    if kind == LAYERSKIP_KIND:
        return d == exit and exit < L
    if kind == ADAPTIVE_KIND:
        return not st.guessed[s, j] and ((conf >= threshold and d < L) or (d == L and j > 0))
    if kind == DEX_KIND:
        return d < L or j > 0
    return False


@njit(cache=True)
def _select_all(st, s, pol):
    chosen = np.zeros((len(s), st.M), np.bool_)
    hold = np.empty(len(s), np.int64)
    for i in range(len(s)):
        hold[i] = select_seq(st, s[i], pol, chosen[i])
    return chosen, hold


@njit(cache=True)
def _wants_all(st, s, j, tok, conf, pol):
    out = np.empty(len(s), np.bool_)
    for i in range(len(s)):
        out[i] = wants_node(st, s[i], j[i], tok[i], conf[i], pol)
    return out


def _params(kind, explorers=1, buffer=0, priority=EAGER, exit=0, threshold=0.0, evict=False):
    return (kind, int(explorers), int(buffer), int(priority), int(exit), float(threshold), bool(evict))


class _Compiled:
    """`select` and `wants` of a built-in policy: its compiled rules applied to many sequences."""

    def select(self, lat, s):
        return _select_all(lat.st, np.asarray(s, np.int64), self.params)

    def wants(self, lat, s, j, tok, conf):
        return _wants_all(lat.st, s, j, np.asarray(tok, np.int64), np.asarray(conf, np.float32), self.params)


@dataclass
class AR(_Compiled):
    """Autoregressive decoding: E = {L}, one explorer, never expands. The baseline."""

    L: int
    name = "ar"

    def __post_init__(self):
        self.exits = np.array([self.L])
        self.explorers, self.buffer = 1, 0

    @property
    def params(self):
        return _params(AR_KIND)


@dataclass
class LayerSkip(_Compiled):
    """LayerSkip self-speculative decoding with KV reuse: draft gamma tokens one after another
    through the first e layers (expanding only at depth e, along one chain), then run the anchor and
    all drafts layer-aligned from e+1 to L (the verification batch)."""

    L: int
    exit: int
    draft: int
    name = "layerskip"

    def __post_init__(self):
        if not 1 <= self.exit <= self.L:
            raise UserError(f"--exit {self.exit}: must be in 1..{self.L}")
        check(draft=self.draft)
        self.exits = np.unique([self.exit, self.L])
        self.explorers, self.buffer = self.draft + 1, self.draft

    @property
    def params(self):
        return _params(LAYERSKIP_KIND, self.explorers, self.buffer, exit=self.exit)


@dataclass
class Adaptive(_Compiled):
    """Single-depth selection (AdaDecode / CALM / DEL family): each node makes one guess, at the first
    exit depth whose confidence reaches tau (a branch that reaches L guesses its exact final token);
    its remaining layers are deferred and run aligned with its descendants (lowest layer first)."""

    L: int
    exits: np.ndarray
    threshold: float
    buffer: int
    name = "adaptive"

    def __post_init__(self):
        check(threshold=self.threshold, buffer=self.buffer)
        self.explorers = self.buffer + 1

    @property
    def params(self):
        return _params(ADAPTIVE_KIND, self.explorers, self.buffer, threshold=self.threshold)


@dataclass
class DEX(_Compiled):
    """Depth exploration: expand at every exit depth whose token is new among the node's children,
    keep at most `buffer` live branches (when full, with `evict`, a new guess replaces the leaf
    branch spawned at the shallowest depth, if that is shallower), advance up to k explorers a
    round, by a priority rule:

    - eager: every node that can move, anchor first, then oldest first;
    - align: the lowest pending layer first, all nodes at it together (shared weight loads);
    - deep: anchor first, then branches spawned at a greater depth first (likelier right);
    - confident: anchor first, then branches whose spawning exit was more confident first.
    """

    L: int
    exits: np.ndarray
    explorers: int
    buffer: int
    priority: str = "eager"
    evict: bool = True
    name = "dex"

    def __post_init__(self):
        check(explorers=self.explorers, buffer=self.buffer, priority=self.priority)

    @property
    def eviction(self) -> str:  # the registry's parameter (params.py) for `evict`
        return "on" if self.evict else "off"

    @property
    def params(self):
        return _params(DEX_KIND, self.explorers, self.buffer, PRIORITIES.index(self.priority), evict=self.evict)
