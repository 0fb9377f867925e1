"""The lattice of one sequence, round by round, rebuilt from the core's event log alone.

No matplotlib here: this module turns an event log (dexsim/core/lattice.py, EVENT_DTYPE) into one `Frame`
per round, the state at the *end* of that round, so the drawing code and the tests look at exactly the
same thing. Nothing is recomputed from a trace or a policy: what a frame shows is what the core did.

Reading the log. Events come in the order things happened, with non-decreasing rounds. An `advance`
event covers `n` consecutive rounds from `round` (the core jumps over rounds in which nothing can
happen), one layer per round starting at `depth`; every other event of that step carries the last of
those rounds. So the state at the end of round t is: every event with round <= t applied, where an
advance still in progress at t counts only the layers computed up to t.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexsim.errors import UserError
from dexsim.core.lattice import ADVANCE, COLLAPSE, COMMIT, DISCARD, EXIT, SPAWN

# How many frames a discarded node stays on screen (greyed, fading) before it disappears.
FADE_FRAMES = 3

ANCHOR, BRANCH, COMMITTED, DISCARDED = "anchor", "branch", "committed", "discarded"
LIVE = (ANCHOR, BRANCH)


@dataclass
class NodeView:
    """One node as a frame shows it."""

    node: int
    parent: int  # parent node id; -1 for the first root; the old anchor for a fallback root
    pos: int
    lane: int  # horizontal slot among the nodes at the same position (stable over the node's life)
    token: int
    depth: int  # layers computed by the end of the frame's round
    spawn_depth: int  # the parent's depth when it guessed this node's token (the exit point)
    status: str  # anchor | branch | committed | discarded
    advancing: bool = False  # computed a layer in this round (one explorer)
    age: int = 0  # discarded: frames since it was discarded
    fallback: bool = False  # a fresh anchor after a commit no child matched


@dataclass
class Frame:
    """The lattice of one sequence at the end of one round, and the counters up to it."""

    round: int  # 0-based round of the run
    nodes: list  # [NodeView]: live, committed (in the window) and recently discarded nodes
    committed: list  # every token committed so far in the run, in order
    counters: dict  # rounds, tokens, node_layers, weight_loads, head_evals, wasted_node_layers, fallbacks
    explorers: int  # node-layers computed in this round
    commits_now: int  # tokens committed in this round

    def live(self) -> list:
        return [v for v in self.nodes if v.status in LIVE]

    def live_tree(self) -> list[dict]:
        """The live lattice in the shape of the core's `Lattice.tree(s)` (the anchor's parent is -1)."""
        return [dict(node=v.node, parent=-1 if v.status == ANCHOR else v.parent, token=v.token, pos=v.pos,
                     depth=v.depth) for v in self.live()]


@dataclass
class _Node:
    node: int
    parent: int
    pos: int
    token: int
    spawn_depth: int
    lane: int = 0
    depth0: int = 0  # depth before the latest advance
    adv_round: int = -1  # first round of the latest advance
    adv_n: int = 0  # its length in rounds
    status: str = BRANCH
    gone_round: int = -1  # discarded: the round it happened
    fallback: bool = False

    def depth_at(self, t: int) -> int:
        if self.adv_round < 0 or t < self.adv_round:
            return self.depth0
        return self.depth0 + min(self.adv_n, t - self.adv_round + 1)

    def advancing_at(self, t: int) -> bool:
        return 0 <= self.adv_round <= t < self.adv_round + self.adv_n


@dataclass
class TokenRange:
    """Which part of a run to show: generated tokens [start, start + tokens) and its rounds [r0, r1]."""

    start: int
    tokens: int
    r0: int
    r1: int

    @property
    def n_rounds(self) -> int:
        return self.r1 - self.r0 + 1


def sequence_events(events: np.ndarray, seq: int) -> np.ndarray:
    """The events of one sequence, in log order."""
    seqs = np.unique(events["seq"])
    if seq not in seqs:
        have = f"{seqs.min()}..{seqs.max()}" if len(seqs) else "none"
        raise UserError(f"--seq {seq}: not in the event log (sequences {have})")
    return events[events["seq"] == seq]


def token_range(ev: np.ndarray, start: int, tokens: int | None, default_tokens: int = 4,
                total: int | None = None) -> TokenRange:
    """The rounds that commit generated tokens start .. start+tokens-1 of one sequence's events.

    The range begins with the round after the one that committed token start-1 (round 0 for start 0)
    and ends with the round that commits the last token asked for. `total` is how many tokens the
    sequence has (default: the commits in the log). `tokens=None` means `default_tokens`, cut at the end.
    """
    commit_rounds = ev["round"][ev["kind"] == COMMIT]
    total = len(commit_rounds) if total is None else total
    if start < 0:
        raise UserError(f"--start {start}: must be >= 0")
    if start >= total:
        raise UserError(f"--start {start}: past the end (the sequence has {total} tokens, 0..{total - 1})")
    if tokens is None:
        tokens = min(default_tokens, total - start)
    if tokens < 1:
        raise UserError(f"--tokens {tokens}: must be >= 1")
    if start + tokens > total:
        raise UserError(f"--start {start} --tokens {tokens}: past the end (the sequence has {total} tokens)")
    if start + tokens > len(commit_rounds):
        raise UserError(f"--tokens: the event log commits only {len(commit_rounds)} tokens of this sequence")
    r1 = int(commit_rounds[start + tokens - 1])
    # a round can commit several tokens: never start after the round that commits token `start`
    r0 = 0 if start == 0 else min(int(commit_rounds[start - 1]) + 1, int(commit_rounds[start]))
    return TokenRange(start, tokens, r0, r1)


def build_frames(ev: np.ndarray, L: int, r0: int, r1: int, *, context: int = 1) -> list[Frame]:
    """One Frame per round r0..r1 of one sequence's events. Committed nodes are kept from `context`
    positions before the anchor of round r0 onwards (older ones are off screen)."""
    nodes: dict[int, _Node] = {}
    by_pos: dict[int, list] = {}  # position -> nodes on screen there (for lanes)
    anchor = None
    committed: list[int] = []
    c = dict(rounds=0, tokens=0, node_layers=0, weight_loads=0, head_evals=0, wasted_node_layers=0, fallbacks=0)
    layers_in_round: dict[int, set] = {}  # round -> layers computed in it (one weight load each)
    explorers_in_round: dict[int, int] = {}
    commits_in_round: dict[int, int] = {}
    frames = []
    min_pos = None
    fading: list[_Node] = []  # discarded nodes still on screen
    old_committed: list[_Node] = []  # committed nodes, oldest first
    # plain tuples: indexing a structured array element by element is slow
    names = ev.dtype.names
    rows = [dict(zip(names, r)) for r in ev.tolist()]
    i, n_ev = 0, len(rows)

    def place(v: _Node) -> None:
        # the lowest lane free among the nodes on screen at this position: stable for the node's life
        here = by_pos.setdefault(v.pos, [])
        used = {u.lane for u in here}
        v.lane = next(k for k in range(len(here) + 1) if k not in used)
        here.append(v)

    def forget(v: _Node) -> None:
        by_pos[v.pos].remove(v)
        del nodes[v.node]

    for t in range(r1 + 1):
        # apply every event of round t (advances are applied whole and read back per round)
        while i < n_ev and rows[i]["round"] <= t:
            e = rows[i]
            i += 1
            kind, v_id = int(e["kind"]), int(e["node"])
            if kind == SPAWN:
                parent = int(e["parent"])
                v = _Node(v_id, parent, int(e["pos"]), int(e["token"]), int(e["n"]))
                if parent >= 0 and parent in nodes and nodes[parent].status == COMMITTED:
                    v.fallback = True  # a fresh anchor: no child matched the committed token
                    v.spawn_depth = L  # it comes from the old anchor's final token
                    c["fallbacks"] += 1
                    anchor = v
                if parent < 0:
                    anchor = v
                v.status = ANCHOR if v is anchor else BRANCH
                nodes[v_id] = v
                place(v)
            elif kind == ADVANCE:
                v = nodes[v_id]
                d0, n, r = int(e["depth"]), int(e["n"]), int(e["round"])
                v.depth0, v.adv_round, v.adv_n = d0, r, n
                for k in range(n):  # layer d0+1+k is computed in round r+k
                    layers_in_round.setdefault(r + k, set()).add(d0 + 1 + k)
                    explorers_in_round[r + k] = explorers_in_round.get(r + k, 0) + 1
            elif kind == EXIT:
                c["head_evals"] += 1
            elif kind == COMMIT:
                committed.append(int(e["token"]))
                c["tokens"] += 1
                nodes[v_id].status = COMMITTED
                old_committed.append(nodes[v_id])
                commits_in_round[t] = commits_in_round.get(t, 0) + 1
            elif kind == DISCARD:
                v = nodes[v_id]
                v.status, v.gone_round = DISCARDED, int(e["round"])
                fading.append(v)
                c["wasted_node_layers"] += int(e["depth"])
            elif kind == COLLAPSE:
                old = int(e["parent"])
                # the new anchor: the old anchor's child that survived (the fallback root was set above)
                for v in by_pos.get(nodes[old].pos + 1, []):
                    if v.parent == old and v.status in LIVE:
                        anchor, v.status = v, ANCHOR
                        break
        # rounds done so far; weight loads: one per distinct layer computed in a round; node-layers
        c["rounds"] = t + 1
        c["weight_loads"] += len(layers_in_round.pop(t, ()))
        explorers = explorers_in_round.pop(t, 0)
        c["node_layers"] += explorers  # a jump's layers count in the rounds that compute them
        # drop what has faded out, and committed nodes that will never be on screen again
        for v in [v for v in fading if t - v.gone_round >= FADE_FRAMES]:
            fading.remove(v)
            forget(v)
        if t <= r0 and anchor is not None:
            min_pos = anchor.pos - context  # fixed from the first frame on
        while old_committed and min_pos is not None and old_committed[0].pos < min_pos:
            forget(old_committed.pop(0))
        if t < r0:
            continue
        frames.append(Frame(
            round=t,
            nodes=[NodeView(v.node, v.parent, v.pos, v.lane, v.token, v.depth_at(t), v.spawn_depth, v.status,
                            v.advancing_at(t), t - v.gone_round if v.status == DISCARDED else 0, v.fallback)
                   for v in nodes.values()],
            committed=list(committed),
            counters=dict(c),
            explorers=explorers,
            commits_now=commits_in_round.get(t, 0),
        ))
    return frames
