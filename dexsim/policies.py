"""Policies: each is a rule for choosing a round's node-layers and a rule for expanding, on the one
lattice core (DESIGN.md section 3). A policy never decides a token.

`select(lat, s)` returns, for the live sequences s, an [len(s), M] mask of nodes that each compute one
more layer this round, and `hold`: for how many rounds that same choice stays right if nothing
exits, spawns or commits (the core jumps over them). `wants(lat, s, j, tok, conf)` says which nodes
that just read an exit ask for a child with that token; the core drops duplicates and enforces the
live-branch buffer.

Adding a policy is one class here plus one entry in POLICIES.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .lattice import FOREVER, Lattice


def _legal_greedy(lat: Lattice, s: np.ndarray, eligible: np.ndarray, k: int, order: np.ndarray) -> np.ndarray:
    """Choose up to k eligible nodes per sequence in `order` (a permutation of slots per row), each
    only if the dependency rule allows it given the choices before it:
    the parent is deeper, or at the same depth and chosen too. Because a child is never deeper than
    its parent, checking the parent is checking every ancestor."""
    A, M = eligible.shape
    rows = np.arange(A)
    depth, parent = lat.depth[s], lat.parent[s]
    chosen = np.zeros((A, M), bool)
    count = np.zeros(A, np.int64)
    for i in range(int(lat.n[s].max())):
        j = order[:, i]
        d, p = depth[rows, j], parent[rows, j]
        pp = np.maximum(p, 0)
        pd = depth[rows, pp]
        ok = eligible[rows, j] & (count < k) & ((p < 0) | (pd > d) | ((pd == d) & chosen[rows, pp]))
        chosen[rows[ok], j[ok]] = True
        count += ok
    return chosen


def _movable(lat: Lattice, s: np.ndarray) -> np.ndarray:
    """Nodes that may compute their next layer this round if enough explorers are free. A child is
    never deeper than its parent, and one at its parent's depth may move along with it, so that is
    every live node short of L; a cap must then keep each such child with its parent."""
    return lat.live()[s] & (lat.depth[s] < lat.L)


def _first_k(mask: np.ndarray, k: int) -> np.ndarray:
    """The first k set slots of each row. Parents sit before children, so a kept child's parent
    (if it has to move along) is kept too."""
    return mask & (np.cumsum(mask, axis=1) <= k)


def _hold_if_everyone(chosen: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """When every node that could move does, the same choice holds until something happens."""
    return np.where((chosen == candidates).all(1), FOREVER, 1)


def _lowest_layer_first(lat: Lattice, s: np.ndarray, k: int):
    """Advance the nodes at the lowest pending layer together, up to k: laggards catch up alone
    (drafting), then everyone moves layer-aligned (verification), sharing weight loads."""
    cand = _movable(lat, s)
    d = np.where(cand, lat.depth[s], FOREVER)
    dmin = d.min(1, keepdims=True)
    at_min = cand & (d == dmin)
    chosen = _first_k(at_min, k)
    rest = np.where(cand & ~chosen, d, lat.L).min(1)
    hold = np.where((chosen == at_min).all(1), rest - dmin[:, 0], 1)
    return chosen, np.maximum(hold, 1)


@dataclass
class AR:
    """Autoregressive decoding: E = {L}, one explorer, never expands. The baseline."""

    L: int
    name = "ar"

    def __post_init__(self):
        self.exits = np.array([self.L])
        self.explorers, self.buffer = 1, 0

    def select(self, lat, s):
        chosen = np.zeros((len(s), lat.M), bool)
        chosen[:, 0] = True
        return chosen, np.full(len(s), FOREVER)

    def wants(self, lat, s, j, tok, conf):
        return np.zeros(len(s), bool)


@dataclass
class LayerSkip:
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
        if self.draft < 0:
            raise UserError(f"--draft {self.draft}: must be >= 0")
        self.exits = np.unique([self.exit, self.L])
        self.explorers, self.buffer = self.draft + 1, self.draft

    def select(self, lat, s):
        rows = np.arange(len(s))
        tip = lat.n[s] - 1  # the chain's last node; it is the only one that can be below e
        tip_depth = lat.depth[s, tip]
        drafting = tip_depth < self.exit
        chosen = np.where(drafting[:, None], False, _movable(lat, s))
        chosen[rows[drafting], tip[drafting]] = True
        hold = np.where(drafting, self.exit - tip_depth, FOREVER)
        return chosen, hold

    def wants(self, lat, s, j, tok, conf):
        return lat.depth[s, j] == self.exit if self.exit < self.L else np.zeros(len(s), bool)


@dataclass
class Adaptive:
    """Single-depth selection (AdaDecode / CALM / DEL family): each node makes one guess, at the first
    exit depth whose confidence reaches tau (a branch that reaches L guesses its exact final token);
    its remaining layers are deferred and run aligned with its descendants."""

    L: int
    exits: np.ndarray
    threshold: float
    buffer: int
    name = "adaptive"

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"--threshold {self.threshold}: must be in [0, 1]")
        if self.buffer < 0:
            raise UserError(f"--buffer {self.buffer}: must be >= 0")
        self.explorers = self.buffer + 1

    def select(self, lat, s):
        return _lowest_layer_first(lat, s, self.explorers)

    def wants(self, lat, s, j, tok, conf):
        d = lat.depth[s, j]
        return ~lat.guessed[s, j] & (((conf >= self.threshold) & (d < self.L)) | ((d == self.L) & (j > 0)))


PRIORITIES = ("eager", "align", "deep", "confident")


@dataclass
class DEX:
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
        if self.explorers < 1:
            raise UserError(f"--explorers {self.explorers}: must be >= 1")
        if self.buffer < 0:
            raise UserError(f"--buffer {self.buffer}: must be >= 0")
        if self.priority not in PRIORITIES:
            raise UserError(f"--priority {self.priority!r}: must be one of {', '.join(PRIORITIES)}")

    def select(self, lat, s):
        if self.priority == "align":
            return _lowest_layer_first(lat, s, self.explorers)
        cand = _movable(lat, s)
        if self.priority == "eager":
            chosen = _first_k(cand, self.explorers)
        else:
            key = lat.spawn_depth[s] if self.priority == "deep" else lat.spawn_conf[s]
            key = np.where(np.arange(lat.M) == 0, np.inf, key.astype(float))
            key[~lat.live()[s]] = -np.inf  # dead slots hold stale keys: last, never in the first n
            order = np.argsort(-key, axis=1, kind="stable")
            chosen = _legal_greedy(lat, s, cand, self.explorers, order)
        return chosen, _hold_if_everyone(chosen, cand)

    def wants(self, lat, s, j, tok, conf):
        return (lat.depth[s, j] < self.L) | (j > 0)
