"""The DEX lattice core: nodes, anchor, advance, exit, expand, commit and collapse (DESIGN.md section 3).

This is the one implementation of the algorithm. The replay, the reference engine, the animations and
the proofs' conformance tests all run it. It never decides tokens: an `Executor` answers with exit
tokens, a `Policy` (policies.py) chooses which node-layers run each round and what to expand.

Layout. The core runs S independent sequences at once, structure-of-arrays: every node field is an
[S, M] array, M = live-branch buffer + 1 node slots per sequence. Slot 0 is always the anchor and the
live nodes of a sequence fill slots [0, n) in creation order, so a parent always sits before its
children; a collapse compacts the survivors in place. A round is a few numpy operations over all S
sequences, which is what makes replaying 100k-token traces fast; with S = 1 it is the plain algorithm.

Jumps. When a policy says its choice of node-layers holds for several rounds and no chosen node
reaches an exit depth before then, the core takes those rounds in one step and updates the counters
in closed form. Executors that must compute every layer (the torch engine) set `can_jump = False`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

NO_TOKEN = -1

# Event kinds of the event log.
SPAWN, ADVANCE, EXIT, COMMIT, COLLAPSE, DISCARD = range(6)
EVENT_NAMES = ("spawn", "advance", "exit", "commit", "collapse", "discard")
EVENT_DTYPE = np.dtype([
    ("kind", "u1"), ("seq", "i4"), ("round", "i8"), ("node", "i8"), ("parent", "i8"),
    ("pos", "i8"), ("depth", "i2"), ("token", "i8"), ("n", "i8"), ("conf", "f4"),
])
EVENTS_VERSION = 1


class Executor(Protocol):
    """What the core asks of a model (real tensors) or of a trace (replay)."""

    can_jump: bool

    def compute(self, lat: "Lattice", seqs: np.ndarray, slots: np.ndarray, layers: np.ndarray) -> None:
        """Compute `layers` more layers of each node (seq, slot), starting at its current depth.
        All ancestors already hold (or compute in this same call) the layers each node needs."""

    def read_exits(self, lat: "Lattice", seqs: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exit tokens and their confidences of nodes (seq, slot) at their current depth."""

    def spawned(self, lat: "Lattice", seqs: np.ndarray, slots: np.ndarray) -> None:
        """Nodes were just created in these slots (fields set, depth 0); set up their state (`tag`)."""

    # Optional: an executor that keeps per-node state (KV caches) may also define
    #   committed(lat, seqs, node_ids): these anchors' tokens were just committed (all L layers done);
    #   discarded(lat, seqs, node_ids): these nodes are gone (collapse, eviction or stop).


@dataclass
class Counters:
    """Per-sequence counters of one run ([S] arrays), plus histograms the cost model prices."""

    tokens: np.ndarray
    rounds: np.ndarray
    node_layers: np.ndarray
    head_evals: np.ndarray
    weight_loads: np.ndarray
    wasted_node_layers: np.ndarray
    fallbacks: np.ndarray
    load_rows: np.ndarray = field(default=None)  # [M+1]: weight loads shared by r node-layers
    head_rows: np.ndarray = field(default=None)  # [M+1]: rounds that read r exit heads
    context_sum: int = 0  # sum over node-layers of the row's context length (KV positions read)

    @classmethod
    def zeros(cls, n_seqs: int, capacity: int) -> "Counters":
        z = lambda: np.zeros(n_seqs, np.int64)  # noqa: E731
        return cls(z(), z(), z(), z(), z(), z(), z(),
                   np.zeros(capacity + 1, np.int64), np.zeros(capacity + 1, np.int64), 0)

    def totals(self) -> dict:
        names = ("tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks")
        return {k: int(getattr(self, k).sum()) for k in names}


class Lattice:
    """The state of S lattices, one per sequence, and the transitions of DESIGN.md section 3."""

    def __init__(self, *, L: int, exits: np.ndarray, capacity: int, root_tokens, root_pos, max_tokens,
                 eos: int | None = None, record_events: bool = False):
        S, M = len(root_tokens), capacity
        self.L, self.S, self.M, self.eos = L, S, M, eos
        self.is_exit = np.zeros(L + 1, bool)
        self.is_exit[np.asarray(exits)] = True
        self.is_exit[L] = True  # E always holds L: the final token is the only one ever committed
        # next_exit[d]: the first exit depth above d, for jumps.
        self.next_exit = np.array([d + 1 + np.argmax(self.is_exit[d + 1:]) for d in range(L)] + [L])
        # prev_exit[d]: the exit depth below d a node read last (0: none), for off-path replay.
        self.prev_exit = np.array([max([e for e in range(1, d) if self.is_exit[e]], default=0) for d in range(L + 1)])

        shape = (S, M)
        self.n = np.ones(S, np.int64)  # live nodes per sequence, in slots [0, n)
        self.token = np.full(shape, NO_TOKEN, np.int64)  # the node's own token
        self.pos = np.zeros(shape, np.int64)  # position of that token in the sequence
        self.depth = np.zeros(shape, np.int64)  # layers computed, 0..L
        self.parent = np.full(shape, -1, np.int64)  # parent slot, -1 for the anchor
        self.node_id = np.zeros(shape, np.int64)  # unique per sequence, never reused
        self.exit_token = np.full(shape, NO_TOKEN, np.int64)  # last exit token read
        self.exit_conf = np.zeros(shape, np.float32)  # its confidence
        self.spawn_depth = np.zeros(shape, np.int64)  # parent's depth when this node was spawned
        self.spawn_conf = np.zeros(shape, np.float32)  # parent's exit confidence then
        self.guessed = np.zeros(shape, bool)  # has expanded at least once (one-guess policies)
        self.tag = np.zeros(shape, np.int64)  # the executor's own per-node state (moves with the node)

        self.token[:, 0] = root_tokens
        self.pos[:, 0] = root_pos
        self.next_id = np.ones(S, np.int64)
        self.round = np.zeros(S, np.int64)  # the current round of each sequence, from 0
        self.max_tokens = np.asarray(max_tokens, np.int64)
        self.active = self.max_tokens > 0
        self.output = np.full((S, int(self.max_tokens.max(initial=0))), NO_TOKEN, np.int64)
        self.counters = Counters.zeros(S, M)
        self.record_events = record_events
        self._events: list[np.ndarray] = []
        self._on_commit = self._on_discard = None  # the executor's optional hooks, set by start()
        self._log(SPAWN, np.arange(S), np.zeros(S, np.int64))

    # ------------------------------------------------------------------ queries

    def live(self) -> np.ndarray:
        """[S, M] mask of live node slots."""
        return np.arange(self.M)[None, :] < self.n[:, None]

    def branches(self) -> np.ndarray:
        """Live branches (nodes below the anchor) per sequence."""
        return self.n - 1

    def events(self) -> np.ndarray:
        """The event log so far, a structured array of EVENT_DTYPE, in the order things happened."""
        return np.concatenate(self._events) if self._events else np.zeros(0, EVENT_DTYPE)

    def tree(self, s: int) -> list[dict]:
        """The live lattice of sequence s as plain records (for tests, viz and debugging)."""
        par = self.parent[s]
        return [dict(node=int(self.node_id[s, j]), parent=int(self.node_id[s, par[j]]) if par[j] >= 0 else -1,
                     token=int(self.token[s, j]), pos=int(self.pos[s, j]), depth=int(self.depth[s, j]))
                for j in range(self.n[s])]

    # ------------------------------------------------------------------ event log

    def _log(self, kind, s, j, *, token=None, n=None, depth=None, conf=None, node=None, parent=None):
        if not self.record_events or len(s) == 0:
            return
        e = np.zeros(len(s), EVENT_DTYPE)
        e["kind"], e["seq"], e["round"] = kind, s, self.round[s]
        e["node"] = self.node_id[s, j] if node is None else node
        if parent is None:
            pj = self.parent[s, j]
            e["parent"] = np.where(pj >= 0, self.node_id[s, np.maximum(pj, 0)], -1)
        else:
            e["parent"] = parent
        e["pos"] = self.pos[s, j]
        e["depth"] = self.depth[s, j] if depth is None else depth
        e["token"] = self.token[s, j] if token is None else token
        e["n"] = 0 if n is None else n
        e["conf"] = 0 if conf is None else conf
        self._events.append(e)

    # ------------------------------------------------------------------ transitions

    def advance(self, executor: Executor, chosen: np.ndarray, rounds: np.ndarray) -> None:
        """Every chosen node computes `rounds[s]` more layers, one per round (they are all legal
        and none reaches an exit depth before the last of them: the caller checked)."""
        s, j = np.nonzero(chosen)
        m = rounds[s]
        executor.compute(self, s, j, m)
        self._log(ADVANCE, s, j, n=m)
        c = self.counters
        act = chosen.any(1)
        c.rounds += np.where(act, rounds, 0)
        c.node_layers += np.bincount(s, weights=m, minlength=self.S).astype(np.int64)
        c.context_sum += int(((self.pos[s, j] + 1) * m).sum())
        # One weight load per distinct (sequence, layer) in a round; its rows share it.
        layer = np.where(chosen, self.depth, -1)
        layer.sort(axis=1)
        starts = (layer >= 0) & np.c_[np.ones(self.S, bool), layer[:, 1:] != layer[:, :-1]]
        loads = starts.sum(1)
        c.weight_loads += loads * rounds
        rows = np.diff(np.r_[np.flatnonzero(starts[layer >= 0]), len(s)])  # run lengths, row-major
        c.load_rows += np.bincount(rows, weights=np.repeat(rounds, loads), minlength=self.M + 1).astype(np.int64)
        self.depth[s, j] += m
        self.round += np.where(act, rounds - 1, 0)  # what follows happens in the last of these rounds

    def read_exits(self, executor: Executor, chosen: np.ndarray):
        """Exit tokens of the chosen nodes that now sit at an exit depth. Returns (s, j, tok, conf)."""
        at_exit = chosen & self.is_exit[self.depth]
        s, j = np.nonzero(at_exit)
        if len(s) == 0:
            return s, j, s, np.zeros(0, np.float32)
        tok, conf = executor.read_exits(self, s, j)
        self.exit_token[s, j], self.exit_conf[s, j] = tok, conf
        self._log(EXIT, s, j, token=tok, conf=conf)
        per_seq = np.bincount(s, minlength=self.S)
        self.counters.head_evals += per_seq
        self.counters.head_rows += np.bincount(per_seq[per_seq > 0], minlength=self.M + 1)
        return s, j, tok, conf

    def expand(self, executor: Executor, s: np.ndarray, j: np.ndarray, tok: np.ndarray, buffer: int,
               evict: bool = False) -> None:
        """Give node (s, j) a child with token `tok`, unless a sibling already has that token or the
        sequence already holds `buffer` live branches. With `evict`, a full buffer makes room by
        discarding the leaf branch spawned at the shallowest depth, if that is shallower than the new
        guess (a deeper exit is likelier right). Requests are served in slot order; `s` must be sorted
        (as np.nonzero gives it). One request per node, so new children never collide."""
        dup = ((self.parent[s] == j[:, None]) & (self.token[s] == tok[:, None])
               & (np.arange(self.M)[None, :] < self.n[s, None])).any(1)
        s, j, tok = s[~dup], j[~dup], tok[~dup]
        if len(s) == 0:
            return
        ok = self.n[s] - 1 + _rank_within(s) < buffer
        if evict and not ok.all():
            j, ok = self._make_room(s, j, ok)
            s, j, tok = s[ok], j[ok], tok[ok]
            ok = np.ones(len(s), bool)
        rank = _rank_within(s)
        s, j, tok, c = s[ok], j[ok], tok[ok], (self.n[s] + rank)[ok]
        self.token[s, c] = tok
        self.pos[s, c] = self.pos[s, j] + 1
        self.depth[s, c] = 0
        self.parent[s, c] = j
        self.node_id[s, c] = self.next_id[s] + rank[ok]
        self.exit_token[s, c] = NO_TOKEN
        self.exit_conf[s, c] = 0
        self.spawn_depth[s, c] = self.depth[s, j]
        self.spawn_conf[s, c] = self.exit_conf[s, j]
        self.guessed[s, c] = False
        self.guessed[s, j] = True
        added = np.bincount(s, minlength=self.S)
        self.n += added
        self.next_id += added
        executor.spawned(self, s, c)
        self._log(SPAWN, s, c, n=self.spawn_depth[s, c])

    def _make_room(self, s, j, fits):
        """Evictions for the requests that do not fit: the r-th such request of a sequence may evict
        the r-th shallowest-spawned leaf branch (a leaf that is not itself asking for a child), if it
        was spawned shallower than the requester's depth now. Compacts once. Returns the requests'
        parent slots (re-indexed by the evictions) and which of them can be served."""
        served = fits.copy()
        idx = np.flatnonzero(~fits)
        ws, wj = s[idx], j[idx]
        seqs = np.unique(ws)
        slots = np.arange(self.M)[None, :]
        rows = np.arange(len(seqs))[:, None]
        live = slots < self.n[seqs, None]
        blocked = np.zeros((len(seqs), self.M + 1), bool)  # parents and requesters are not leaves
        blocked[rows, np.where(live & (slots > 0), self.parent[seqs], self.M)] = True
        r = np.minimum(np.searchsorted(seqs, s), len(seqs) - 1)
        mine = seqs[r] == s
        blocked[r[mine], j[mine]] = True
        key = np.where(live & ~blocked[:, : self.M] & (slots > 0), self.spawn_depth[seqs], FOREVER)
        order = np.argsort(key, axis=1, kind="stable")
        row, nth = np.searchsorted(seqs, ws), _rank_within(ws)
        victim = order[row, nth]
        can = key[row, victim] < self.depth[ws, wj]
        served[idx[can]] = True
        gone = np.zeros((len(seqs), self.M), bool)
        gone[row[can], victim[can]] = True
        hit = gone.any(1)
        if hit.any():
            es, keep = seqs[hit], live[hit] & ~gone[hit]
            newidx = np.zeros((self.S, self.M), np.int64)
            newidx[es] = np.cumsum(keep, axis=1) - 1
            moved = np.zeros(self.S, bool)
            moved[es] = True
            self._discard(es, gone[hit])
            self._compact(es, keep)
            j = np.where(moved[s], newidx[s, j], j)
        return j, served

    def commit(self, executor: Executor) -> None:
        """While an anchor sits at depth L: commit its final token, collapse to the matching child
        (or fall back to a fresh node), stop the sequence at its limit or EOS."""
        while True:
            s = np.nonzero(self.active & (self.depth[:, 0] == self.L))[0]
            if len(s) == 0:
                return
            c = self.counters
            y = self.exit_token[s, 0]
            self._log(COMMIT, s, np.zeros(len(s), np.int64), token=y)
            self.output[s, c.tokens[s]] = y
            if self._on_commit is not None:
                self._on_commit(self, s, self.node_id[s, 0])
            c.tokens[s] += 1
            live = np.arange(self.M)[None, :] < self.n[s, None]
            match = (self.parent[s] == 0) & (self.token[s] == y[:, None]) & live
            has_child = match.any(1)
            child = np.where(has_child, match.argmax(1), 0)
            # keep = the matching child and its subtree; slots are in topological order.
            keep = np.zeros((len(s), self.M), bool)
            keep[has_child, child[has_child]] = True
            for k in range(1, self.M):
                keep[:, k] |= keep[np.arange(len(s)), np.maximum(self.parent[s, k], 0)] & (self.parent[s, k] >= 0)
            keep &= live  # a dead slot keeps a stale parent index: it must not come back
            gone = live & ~keep
            gone[:, 0] = False  # the old anchor is committed work, not waste
            self._discard(s, gone)
            c.fallbacks[s] += ~has_child
            old_anchor_id = self.node_id[s, 0].copy()
            old_anchor_pos = self.pos[s, 0].copy()
            self._compact(s, keep)
            fb = s[~has_child]
            if len(fb):  # fallback: a fresh anchor for the committed token
                self._reset_root(fb, y[~has_child], old_anchor_pos[~has_child] + 1)
                executor.spawned(self, fb, np.zeros(len(fb), np.int64))
                self._log(SPAWN, fb, np.zeros(len(fb), np.int64), parent=old_anchor_id[~has_child])
            self._log(COLLAPSE, s, np.zeros(len(s), np.int64), n=gone.sum(1), parent=old_anchor_id)
            done = c.tokens[s] >= self.max_tokens[s]
            if self.eos is not None:
                done |= y == self.eos
            self.stop(s[done])

    def stop(self, s: np.ndarray) -> None:
        """End these sequences: whatever is still in their lattice is discarded as waste."""
        if len(s) == 0:
            return
        live = np.arange(self.M)[None, :] < self.n[s, None]
        self._discard(s, live)
        self.n[s] = 0
        self.active[s] = False

    def _discard(self, s: np.ndarray, mask: np.ndarray) -> None:
        self.counters.wasted_node_layers[s] += (self.depth[s] * mask).sum(1)
        rs, rj = np.nonzero(mask)
        self._log(DISCARD, s[rs], rj)
        if self._on_discard is not None and len(rs):
            self._on_discard(self, s[rs], self.node_id[s[rs], rj])

    def _compact(self, s: np.ndarray, keep: np.ndarray) -> None:
        """Move the kept slots of sequences s to the front, in order; the first becomes the anchor."""
        perm = np.argsort(~keep, axis=1, kind="stable")  # [len(s), M]
        newidx = np.cumsum(keep, axis=1) - 1  # old slot -> new slot, where kept
        rows = s[:, None]
        for a in ("token", "pos", "depth", "node_id", "exit_token", "exit_conf",
                  "spawn_depth", "spawn_conf", "guessed", "tag", "parent"):
            arr = getattr(self, a)
            arr[rows, np.arange(self.M)] = arr[rows, perm]
        par = self.parent[s]
        self.parent[s] = np.where(par >= 0, np.take_along_axis(newidx, np.maximum(par, 0), 1), -1)
        self.parent[s, 0] = -1
        self.n[s] = keep.sum(1)

    def _reset_root(self, s: np.ndarray, tokens: np.ndarray, pos: np.ndarray) -> None:
        self.pos[s, 0] = pos
        self.token[s, 0] = tokens
        self.depth[s, 0] = 0
        self.parent[s, 0] = -1
        self.node_id[s, 0] = self.next_id[s]
        self.next_id[s] += 1
        self.exit_token[s, 0] = NO_TOKEN
        self.exit_conf[s, 0] = 0
        self.spawn_depth[s, 0] = 0
        self.spawn_conf[s, 0] = 0
        self.guessed[s, 0] = False
        self.n[s] = 1


FOREVER = np.iinfo(np.int64).max // 4


def _rank_within(s: np.ndarray) -> np.ndarray:
    """For sorted sequence indices s, each entry's rank among the entries of its sequence."""
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return np.arange(len(s)) - np.repeat(starts, np.diff(np.r_[starts, len(s)]))


def run(lat: Lattice, policy, executor: Executor) -> Lattice:
    """Run rounds until every sequence has stopped."""
    start(lat, executor)
    while lat.active.any():
        step(lat, policy, executor)
    return lat


def start(lat: Lattice, executor: Executor) -> None:
    if lat.round.any():
        raise ValueError("a run starts from a fresh lattice")
    lat._on_commit = getattr(executor, "committed", None)
    lat._on_discard = getattr(executor, "discarded", None)
    executor.spawned(lat, np.arange(lat.S), np.zeros(lat.S, np.int64))  # the roots


def step(lat: Lattice, policy, executor: Executor) -> None:
    """One round for every live sequence (or several, where nothing can happen in between): the
    policy chooses node-layers, the executor computes them, exits are read, the policy expands,
    anchors at depth L commit."""
    s = np.nonzero(lat.active)[0]
    chosen_s, hold = policy.select(lat, s)
    if not chosen_s.any(1).all():
        raise RuntimeError(f"policy {policy.name} chose no node-layer for a live sequence")
    if executor.can_jump:
        d = lat.depth[s]
        to_exit = np.where(chosen_s, lat.next_exit[d] - d, FOREVER).min(1)
        m = np.minimum(hold, to_exit)
    else:
        m = np.ones(len(s), np.int64)
    chosen = np.zeros((lat.S, lat.M), bool)
    chosen[s] = chosen_s
    rounds = np.zeros(lat.S, np.int64)
    rounds[s] = m
    lat.advance(executor, chosen, rounds)
    es, ej, tok, conf = lat.read_exits(executor, chosen)
    want = policy.wants(lat, es, ej, tok, conf)
    lat.expand(executor, es[want], ej[want], tok[want], policy.buffer, getattr(policy, "evict", False))
    lat.commit(executor)
    lat.round[s] += 1
