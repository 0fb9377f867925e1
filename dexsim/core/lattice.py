"""The DEX lattice core: nodes, anchor, advance, exit, expand, commit and collapse (DESIGN.md section 3).

This is the one implementation of the algorithm. The replay, the reference engine, the animations and
the proofs' conformance tests all run it. It never decides tokens: an `Executor` answers with exit
tokens, a `Policy` (policies.py) chooses which node-layers run each round and what to expand.

Layout. The core holds S independent sequences, structure-of-arrays: every node field is an [S, M]
array, M = live-branch buffer + 1 node slots per sequence. Slot 0 is always the anchor and the live
nodes of a sequence fill slots [0, n) in creation order, so a parent always sits before its
children; a collapse compacts the survivors in place.

Speed. Each transition is written once, for one sequence, as plain loops over its few slots, and
compiled with numba (`NUMBA_DISABLE_JIT=1` runs the very same code as Python, for debugging and
mutation testing). The `Lattice` methods apply them to many sequences and call the executor between
them; an executor that is itself compiled (the trace replay) runs the same per-sequence transitions
in one compiled loop (`dexsim/replay/executor.py`), never returning to Python between rounds.

Executor hooks. A transition never calls Python: it notes what the executor must hear (a node
spawned, an anchor committed, a node discarded) and `Lattice` tells the executor, in that order, once
the transition is done. Hooks name nodes by id (a spawn by its final slot), so an executor keys its
per-node state by node id; `tag` is its per-node field that moves with the node.

Jumps. When a policy says its choice of node-layers holds for several rounds and no chosen node
reaches an exit depth before then, the core takes those rounds in one step and updates the counters
in closed form. Executors that must compute every layer (the torch engine) set `can_jump = False`.

Event log. Events are kept per sequence in the order they happened; `events()` lists sequence 0's,
then sequence 1's, and so on (sequences never interact, so this is one valid global order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numba import config, njit, types
from numba.experimental import structref

NO_TOKEN = -1
FOREVER = np.iinfo(np.int64).max // 4

# Event kinds of the event log.
SPAWN, ADVANCE, EXIT, COMMIT, COLLAPSE, DISCARD = range(6)
EVENT_NAMES = ("spawn", "advance", "exit", "commit", "collapse", "discard")
EVENT_DTYPE = np.dtype([
    ("kind", "u1"), ("seq", "i4"), ("round", "i8"), ("node", "i8"), ("parent", "i8"),
    ("pos", "i8"), ("depth", "i2"), ("token", "i8"), ("n", "i8"), ("conf", "f4"),
])
EVENTS_VERSION = 1
# The per-sequence counters (`Counters.totals`) and the figures derived from them (`acceptance`).
COUNTER_NAMES = ("tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks",
                 "commit_rounds", "reused_depth")
ACCEPTANCE = ("accepted_per_verification", "branch_reuse_share", "anchor_head_start", "waste_per_token")
# Executor hooks: (kind, seq, slot, node id), kind one of these.
HOOK_SPAWNED, HOOK_COMMITTED, HOOK_DISCARDED = range(3)


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
    # By the time they are called the nodes may have left the lattice: key their state by node id.


class StructType(types.StructRef):
    """A numba StructRef type whose fields take their values' plain (non-literal) types."""

    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(t)) for name, t in fields)


@structref.register
class _StateType(StructType):
    pass


class State(structref.StructRefProxy):
    """Everything the compiled transitions read and write (the arrays are `Lattice`'s own). One
    reference, not a tuple of arrays: a call then passes one pointer, not dozens of arrays.

    L, M; eos (NO_TOKEN: none); record (keep the event log);
    is_exit [L+1] bool; next_exit [L+1]: the first exit depth above d; prev_exit [L+1]: the exit
    depth below d (0: none);
    per sequence [S]: n (live nodes, in slots [0, n)), next_id, round (the current round, from 0),
    max_tokens, active;
    per node [S, M]: token (the node's own), pos (its position in the sequence), depth (layers
    computed, 0..L), parent (slot, -1 for the anchor), node_id (unique per sequence, never reused),
    exit_token (the last exit token read), exit_conf (float32, its confidence), spawn_depth and
    spawn_conf (the parent's depth and exit confidence when this node was spawned), guessed (has
    expanded at least once: one-guess policies), tag (the executor's, moves with the node);
    output [S, max tokens]: committed tokens;
    counters [S]: tokens, rounds, node_layers, head_evals, weight_loads, wasted_node_layers,
    fallbacks, commit_rounds (rounds that committed at least one token: the verifications of a draft
    policy), reused_depth (over commits, the depth the new anchor already had at its collapse; 0 on a
    fallback); load_rows [M+1] (weight loads shared by r node-layers), head_rows [M+1] (rounds that
    read r exit heads), context [1] (sum over node-layers of the row's context length), load_diff and
    rows_diff [L+2] (weight loads and node-layers per layer, as difference arrays over layers);
    the event log: ev_int [capacity, 9] (EVENT_DTYPE's fields but conf), ev_conf [capacity], its first
    n_events rows used; executor hooks: hooks [capacity, 4] (kind, seq, slot, node id), its first
    n_hooks rows used, drained after each transition;
    the work log (`work`, for the discrete-event simulator; see `work_log`): steps [S] (core steps
    taken: a jump of m rounds is one step), cut_after [L+1] (depths after which a node's next layer
    may run on another device), per node [S, M] last_step (the step of its last layer, -1: none),
    src_step and src_depth (the step, and the depth, whose result its first layer waits for),
    last_commit [S] (the last committed anchor's last step); wk_group [capacity, 8] int32 (seq, step,
    depth, layers, rows, context, round, first of its step: one cache line a group), wk_dep
    [capacity, 3] (group, step, depth), wk_commit [capacity, 2] (seq, step), their first n_wk_group /
    n_wk_dep / n_wk_commit rows used; wk_scratch [M] (a step's group depths).
    Every log grows by doubling."""


_STATE_FIELDS = (
    "L", "M", "eos", "record", "is_exit", "next_exit", "prev_exit",
    "n", "next_id", "round", "max_tokens", "active",
    "token", "pos", "depth", "parent", "node_id", "exit_token", "exit_conf", "spawn_depth", "spawn_conf", "guessed",
    "tag", "output",
    "tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks",
    "commit_rounds", "reused_depth", "load_rows", "head_rows", "context", "load_diff", "rows_diff",
    "ev_int", "ev_conf", "n_events", "hooks", "n_hooks",
    "work", "steps", "cut_after", "last_step", "src_step", "src_depth", "last_commit",
    "wk_group", "n_wk_group", "wk_dep", "n_wk_dep", "wk_commit", "n_wk_commit", "wk_scratch",
)


class PlainStruct:
    """What a StructRef proxy becomes under NUMBA_DISABLE_JIT=1 (the rules then run as plain
    Python): the same fields, as attributes."""

    fields: tuple = ()

    def __init__(self, *values):
        for k, v in zip(self.fields, values):
            setattr(self, k, v)


def define_struct(proxy, typ, fields):
    """The proxy class for a StructRef type with these fields (a PlainStruct without numba)."""
    if config.DISABLE_JIT:
        return type(proxy.__name__, (PlainStruct,), {"fields": tuple(fields), "__doc__": proxy.__doc__})
    structref.define_proxy(proxy, typ, list(fields))
    return proxy


State = define_struct(State, _StateType, _STATE_FIELDS)


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
    commit_rounds: np.ndarray
    reused_depth: np.ndarray
    load_rows: np.ndarray
    head_rows: np.ndarray
    context: np.ndarray
    load_diff: np.ndarray
    rows_diff: np.ndarray

    @property
    def context_sum(self) -> int:
        return int(self.context[0])

    def per_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """([L+1] weight loads, [L+1] node-layers) at each layer l (index 0 unused), over all sequences:
        where pipeline stages meet, these are the transfers."""
        return np.cumsum(self.load_diff)[:-1], np.cumsum(self.rows_diff)[:-1]

    def totals(self) -> dict:
        return {k: int(getattr(self, k).sum()) for k in COUNTER_NAMES}


def acceptance(totals: dict) -> dict:
    """The acceptance figures of speculative-decoding benchmarks, from counter totals (README, "Reading
    the counters"): committed tokens per verification (a round that commits), the share of commits
    whose new anchor was a branch (no fallback), the depth that anchor already had (0 on a fallback),
    and wasted node-layers, each per committed token; None where nothing was committed."""
    n = totals["tokens"]
    if n == 0:
        return dict.fromkeys(ACCEPTANCE)
    return {"accepted_per_verification": n / totals["commit_rounds"],
            "branch_reuse_share": (n - totals["fallbacks"]) / n,
            "anchor_head_start": totals["reused_depth"] / n,
            "waste_per_token": totals["wasted_node_layers"] / n}


class Lattice:
    """The state of S lattices, one per sequence, and the transitions of DESIGN.md section 3."""

    def __init__(self, *, L: int, exits: np.ndarray, capacity: int, root_tokens, root_pos, max_tokens,
                 eos: int | None = None, record_events: bool = False, work_cuts=None):
        """`work_cuts`: record the work log (`work_log`), with a node's dependency on its previous
        layer noted after these depths (where pipeline stages may meet); None: no work log."""
        S, M = len(root_tokens), capacity
        is_exit = np.zeros(L + 1, bool)
        is_exit[np.asarray(exits)] = True
        is_exit[L] = True  # E always holds L: the final token is the only one ever committed
        next_exit = np.array([d + 1 + np.argmax(is_exit[d + 1:]) for d in range(L)] + [L])
        prev_exit = np.array([max([e for e in range(1, d) if is_exit[e]], default=0) for d in range(L + 1)])
        max_tokens = np.asarray(max_tokens, np.int64)
        full = lambda v, dt=np.int64: np.full((S, M), v, dt)  # noqa: E731
        zeros = lambda: np.zeros(S, np.int64)  # noqa: E731
        f = dict(
            L=L, M=M, eos=NO_TOKEN if eos is None else int(eos), record=bool(record_events),
            is_exit=is_exit, next_exit=next_exit, prev_exit=prev_exit,
            n=np.ones(S, np.int64), next_id=np.ones(S, np.int64), round=zeros(),
            max_tokens=max_tokens, active=max_tokens > 0,
            token=full(NO_TOKEN), pos=full(0), depth=full(0), parent=full(-1), node_id=full(0),
            exit_token=full(NO_TOKEN), exit_conf=full(0, np.float32), spawn_depth=full(0),
            spawn_conf=full(0, np.float32), guessed=full(False, bool), tag=full(0),
            output=np.full((S, int(max_tokens.max(initial=0))), NO_TOKEN, np.int64),
            tokens=zeros(), rounds=zeros(), node_layers=zeros(), head_evals=zeros(), weight_loads=zeros(),
            wasted_node_layers=zeros(), fallbacks=zeros(), commit_rounds=zeros(), reused_depth=zeros(),
            load_rows=np.zeros(M + 1, np.int64), head_rows=np.zeros(M + 1, np.int64),
            context=np.zeros(1, np.int64), load_diff=np.zeros(L + 2, np.int64), rows_diff=np.zeros(L + 2, np.int64),
            ev_int=np.zeros((64 if record_events else 0, 9), np.int64),
            ev_conf=np.zeros(64 if record_events else 0), n_events=0, hooks=np.zeros((64, 4), np.int64), n_hooks=0,
            work=work_cuts is not None, steps=zeros(),
            cut_after=np.zeros(L + 1, bool) if work_cuts is None else np.asarray(work_cuts, bool),
            last_step=full(-1), src_step=full(-1), src_depth=full(0), last_commit=np.full(S, -1, np.int64),
            wk_group=np.zeros((0 if work_cuts is None else 64, 8), np.int32), n_wk_group=0,
            wk_dep=np.zeros((0 if work_cuts is None else 64, 3), np.int64), n_wk_dep=0,
            wk_commit=np.zeros((0 if work_cuts is None else 64, 2), np.int64), n_wk_commit=0,
            wk_scratch=np.zeros(M, np.int64))
        f["token"][:, 0] = root_tokens
        f["pos"][:, 0] = root_pos
        self.st = State(*(f[k] for k in _STATE_FIELDS))
        self.L, self.S, self.M, self.eos = L, S, M, eos
        for name in ("is_exit", "next_exit", "prev_exit", "cut_after", "n", "next_id", "round", "steps",
                     "max_tokens", "active",
                     "token", "pos", "depth", "parent", "node_id", "exit_token", "exit_conf", "spawn_depth",
                     "spawn_conf", "guessed", "tag", "output"):
            setattr(self, name, f[name])  # the same arrays the compiled rules write
        self.counters = Counters(*(f[k] for k in COUNTER_NAMES + ("load_rows", "head_rows", "context", "load_diff",
                                                                  "rows_diff")))
        self.record_events = record_events
        self._executor = None  # whom the hooks go to, set by start()
        _log_roots(self.st)

    # ------------------------------------------------------------------ queries

    def live(self) -> np.ndarray:
        """[S, M] mask of live node slots."""
        return np.arange(self.M)[None, :] < self.n[:, None]

    def branches(self) -> np.ndarray:
        """Live branches (nodes below the anchor) per sequence."""
        return self.n - 1

    def events(self) -> np.ndarray:
        """The event log so far, a structured array of EVENT_DTYPE: each sequence's events in the
        order they happened, sequence by sequence."""
        ints, conf = _event_log(self.st)
        out = np.zeros(len(conf), EVENT_DTYPE)
        if len(conf):
            for i, name in enumerate(EVENT_DTYPE.names[:-1]):
                out[name] = ints[:, i]
            out["conf"] = conf
            out = out[np.argsort(out["seq"], kind="stable")]
        return out

    def work_log(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The work log so far, by step, then sequence, as the core did the work: groups [n, 8] (seq,
        step, depth before the step, layers, rows, context, round, first of its step), first-layer
        dependencies [n, 3] (group, step waited for (-1: the request's arrival), depth of that step's
        device) and commits [n, 2] (seq, step in which the committed node read its final token). A
        group is the chosen nodes of one sequence at one depth in one step: they share a weight load
        at each of its layers."""
        g, ng, d, nd, c, nc = _work_log(self.st)
        return g[:ng], d[:nd], c[:nc]

    def tree(self, s: int) -> list[dict]:
        """The live lattice of sequence s as plain records (for tests, viz and debugging)."""
        par = self.parent[s]
        return [dict(node=int(self.node_id[s, j]), parent=int(self.node_id[s, par[j]]) if par[j] >= 0 else -1,
                     token=int(self.token[s, j]), pos=int(self.pos[s, j]), depth=int(self.depth[s, j]))
                for j in range(self.n[s])]

    # ------------------------------------------------------------------ transitions, many sequences

    def advance(self, executor: Executor, chosen: np.ndarray, rounds: np.ndarray) -> None:
        """Every chosen node computes `rounds[s]` more layers, one per round (they are all legal
        and none reaches an exit depth before the last of them: the caller checked)."""
        s, j = np.nonzero(chosen)
        executor.compute(self, s, j, rounds[s])
        _advance_all(self.st, chosen, rounds)

    def read_exits(self, executor: Executor, chosen: np.ndarray):
        """Exit tokens of the chosen nodes that now sit at an exit depth. Returns (s, j, tok, conf)."""
        s, j = np.nonzero(chosen & self.is_exit[self.depth])
        if len(s) == 0:
            return s, j, s, np.zeros(0, np.float32)
        tok, conf = executor.read_exits(self, s, j)
        tok, conf = np.asarray(tok, np.int64), np.asarray(conf, np.float32)
        _store_exits(self.st, s, j, tok, conf)
        return s, j, tok, conf

    def expand(self, executor: Executor, s: np.ndarray, j: np.ndarray, tok: np.ndarray, buffer: int,
               evict: bool = False) -> None:
        """Give node (s, j) a child with token `tok` (see `expand_seq`). `s` must be sorted (as
        np.nonzero gives it); one request per node."""
        if len(s):
            _expand_all(self.st, np.asarray(s, np.int64), np.asarray(j, np.int64), np.asarray(tok, np.int64),
                        buffer, evict)
            self._tell(executor)

    def commit(self, executor: Executor) -> None:
        """Commit every anchor at depth L (see `commit_seq`)."""
        _commit_all(self.st)
        self._tell(executor)

    def stop(self, s: np.ndarray) -> None:
        """End these sequences: whatever is still in their lattice is discarded as waste."""
        for q in np.asarray(s).tolist():
            stop_seq(self.st, q)
        self._tell(self._executor)

    def _tell(self, executor) -> None:
        """Pass the hooks noted by the last transition to the executor. Each sequence's hooks keep
        their order; sequences are independent, so the r-th run of one kind of every sequence goes
        in one call (a handful of calls however many sequences)."""
        h = _take_hooks(self.st)  # [n, 4]: kind, seq, slot, node id
        if not len(h) or executor is None:
            return
        h = h[np.argsort(h[:, 1], kind="stable")]
        kind, seq = h[:, 0], h[:, 1]
        first = np.r_[True, seq[1:] != seq[:-1]]
        runs = np.cumsum(first | np.r_[True, kind[1:] != kind[:-1]])
        run = runs - np.maximum.accumulate(np.where(first, runs, 0))  # the run's rank in its sequence
        order = np.lexsort((kind, run))
        h, run = h[order], run[order]
        cut = np.flatnonzero((np.diff(h[:, 0]) != 0) | (np.diff(run) != 0)) + 1
        for part in np.split(h, cut):
            s = part[:, 1]
            if part[0, 0] == HOOK_SPAWNED:
                executor.spawned(self, s, part[:, 2])
            else:
                fn = getattr(executor, "committed" if part[0, 0] == HOOK_COMMITTED else "discarded", None)
                if fn is not None:
                    fn(self, s, part[:, 3])


# --------------------------------------------------------------------------- the transitions, compiled

# The event and hook helpers take every argument as int64 (and a float32 confidence): a literal constant
# at a call site (SPAWN, 0, -1, 0.0) would otherwise compile one more copy of the helper per literal.
_i = np.int64
_F0 = np.float32(0.0)


@njit(cache=True)
def _log(st, kind, s, j, token, depth, n, conf, node, parent):
    if st.record:
        i = st.n_events
        if i == len(st.ev_conf):
            st.ev_int = _grown(st.ev_int)
            st.ev_conf = _grown(st.ev_conf)
        e = st.ev_int[i]
        e[0], e[1], e[2], e[3], e[4] = kind, s, st.round[s], node, parent
        e[5], e[6], e[7], e[8] = st.pos[s, j], depth, token, n
        st.ev_conf[i] = conf
        st.n_events = i + 1


@njit(cache=True)
def _hook(st, kind, s, j):
    """Note that the executor must hear of node (s, j): spawned, committed or discarded."""
    i = st.n_hooks
    if i == len(st.hooks):
        st.hooks = _grown(st.hooks)
    h = st.hooks[i]
    h[0], h[1], h[2], h[3] = kind, s, j, st.node_id[s, j]
    st.n_hooks = i + 1


@njit(cache=True)
def _take_hooks(st):
    """The hooks noted so far, in order; the list is then empty."""
    out = st.hooks[: st.n_hooks].copy()
    st.n_hooks = 0
    return out


@njit(cache=True)
def _event_log(st):
    return st.ev_int[: st.n_events], st.ev_conf[: st.n_events]


@njit(cache=True)
def _work_log(st):
    return st.wk_group, st.n_wk_group, st.wk_dep, st.n_wk_dep, st.wk_commit, st.n_wk_commit


@njit(cache=True)
def _grown(a):
    """`a` with twice the rows (at least 64), the old ones copied."""
    out = np.zeros((max(2 * len(a), 64),) + a.shape[1:], a.dtype)
    flat, old = out.reshape(-1), a.reshape(-1)
    for i in range(old.size):  # a loop, not `out[:len(a)] = a`: numba's shape-mismatch message
        flat[i] = old[i]  # for a slice assignment costs seconds of compiling (string formatting)
    return out


@njit(cache=True)
def _log_node(st, kind, s, j, n):
    """An event about node (s, j) as it stands."""
    p = st.parent[s, j]
    _log(st, kind, s, j, st.token[s, j], st.depth[s, j], n, _F0, st.node_id[s, j],
         st.node_id[s, p] if p >= 0 else -1)


@njit(cache=True)
def _log_roots(st):
    for s in range(len(st.n)):
        _log_node(st, _i(SPAWN), s, _i(0), _i(0))


@njit(cache=True)
def advance_seq(st, s, chosen, m):
    """The chosen nodes of sequence s (a [M] mask) each compute m more layers, one per round."""
    k = 0
    for j in range(st.M):
        if chosen[j]:
            _log_node(st, _i(ADVANCE), s, j, m)
            st.context[0] += (st.pos[s, j] + 1) * m
            d = st.depth[s, j]
            st.rows_diff[d + 1] += 1  # one row at each of layers d+1..d+m
            st.rows_diff[d + m + 1] -= 1
            k += 1
    if k == 0:
        return
    if st.work:
        _log_work(st, s, chosen, m)
    st.rounds[s] += m
    st.node_layers[s] += k * m
    for j in range(st.M):  # one weight load per distinct layer in a round; its rows share it
        if chosen[j] and _first_at_depth(st, s, chosen, j):
            rows = 0
            for i in range(j, st.M):
                rows += chosen[i] and st.depth[s, i] == st.depth[s, j]
            st.weight_loads[s] += m
            st.load_rows[rows] += m
            d = st.depth[s, j]
            st.load_diff[d + 1] += 1
            st.load_diff[d + m + 1] -= 1
    for j in range(st.M):
        if chosen[j]:
            st.depth[s, j] += m
    st.round[s] += m - 1  # what follows happens in the last of these rounds


@njit(cache=True)
def _log_work(st, s, chosen, m):
    """The work of this step of sequence s: its groups in depth order, then (in slot order) the
    first-layer dependencies that may cross devices: a node at depth 0 waits for the step that spawned
    it (or read the token it stands for); a node whose next layer may start a stage waits for its
    previous layer. Every other dependency lies on the same device, earlier in its queue."""
    depths = st.wk_scratch  # the distinct depths of the chosen nodes, ascending (insertion sort)
    k = 0
    for j in range(st.M):
        if chosen[j] and _first_at_depth(st, s, chosen, j):
            i = k
            while i > 0 and depths[i - 1] > st.depth[s, j]:
                depths[i] = depths[i - 1]
                i -= 1
            depths[i] = st.depth[s, j]
            k += 1
    while st.n_wk_group + k > len(st.wk_group):
        st.wk_group = _grown(st.wk_group)
    g0 = st.n_wk_group
    for i in range(k):
        rows = ctx = 0
        for j in range(st.M):
            if chosen[j] and st.depth[s, j] == depths[i]:
                rows += 1
                ctx += st.pos[s, j] + 1
        g = st.wk_group[g0 + i]
        g[0], g[1], g[2], g[3] = s, st.steps[s], depths[i], m
        g[4], g[5], g[6], g[7] = rows, ctx, st.round[s], i == 0
    st.n_wk_group += k
    for j in range(st.M):
        if chosen[j]:
            d = st.depth[s, j]
            if d == 0 or st.cut_after[d]:
                if st.n_wk_dep == len(st.wk_dep):
                    st.wk_dep = _grown(st.wk_dep)
                i = 0
                while depths[i] != d:
                    i += 1
                e = st.wk_dep[st.n_wk_dep]
                e[0] = g0 + i
                e[1] = st.src_step[s, j] if d == 0 else st.last_step[s, j]
                e[2] = st.src_depth[s, j] if d == 0 else d
                st.n_wk_dep += 1
            st.last_step[s, j] = st.steps[s]


@njit(cache=True)
def _first_at_depth(st, s, chosen, j):
    """Is j the first chosen slot of sequence s at its depth?"""
    for i in range(j):
        if chosen[i] and st.depth[s, i] == st.depth[s, j]:
            return False
    return True


@njit(cache=True)
def store_exit(st, s, j, tok, conf):
    st.exit_token[s, j] = tok
    st.exit_conf[s, j] = conf
    _log(st, _i(EXIT), s, j, tok, st.depth[s, j], _i(0), st.exit_conf[s, j], st.node_id[s, j],
         st.node_id[s, st.parent[s, j]] if st.parent[s, j] >= 0 else -1)
    st.head_evals[s] += 1


@njit(cache=True)
def count_heads(st, k):
    """A round of one sequence read k exit heads."""
    if k > 0:
        st.head_rows[k] += 1


@njit(cache=True)
def expand_seq(st, s, js, toks, buffer, evict):
    """Give node (s, js[r]) a child with token toks[r], in request order, unless a sibling already
    has that token or the sequence already holds `buffer` live branches. With `evict`, a full buffer
    makes room by discarding the leaf branch spawned at the shallowest depth, if that is shallower
    than the new guess (a deeper exit is likelier right): the r-th waiting request may evict the
    r-th shallowest-spawned leaf (a leaf that is not itself asking for a child), ties oldest first.
    One request per node, so new children never collide."""
    n = st.n[s]
    R = 0
    js = js.copy()
    toks = toks.copy()
    for r in range(len(js)):  # drop duplicates of a live sibling
        dup = False
        for c in range(1, n):
            if st.parent[s, c] == js[r] and st.token[s, c] == toks[r]:
                dup = True
        if not dup:
            js[R], toks[R] = js[r], toks[r]
            R += 1
    if R == 0:
        return
    js, toks = js[:R], toks[:R]
    served = np.empty(R, np.bool_)
    for r in range(R):
        served[r] = n - 1 + r < buffer
    if evict and not served.all():
        _make_room(st, s, js, served)
    c = st.n[s]
    for r in range(R):
        if served[r]:
            if c > buffer or c >= st.M:  # numba does not bounds-check: an overrun must raise, not corrupt
                raise AssertionError("expand: live branches would exceed the buffer B")
            j = js[r]
            st.token[s, c] = toks[r]
            st.pos[s, c] = st.pos[s, j] + 1
            st.depth[s, c] = 0
            st.parent[s, c] = j
            st.node_id[s, c] = st.next_id[s]
            st.next_id[s] += 1
            st.exit_token[s, c] = NO_TOKEN
            st.exit_conf[s, c] = 0
            st.spawn_depth[s, c] = st.depth[s, j]
            st.spawn_conf[s, c] = st.exit_conf[s, j]
            st.guessed[s, c] = False
            st.guessed[s, j] = True
            st.last_step[s, c] = -1
            st.src_step[s, c] = st.steps[s]  # its first layer waits for this step's exit read
            st.src_depth[s, c] = st.depth[s, j]
            c += 1
    for i in range(st.n[s], c):
        _hook(st, _i(HOOK_SPAWNED), s, i)
        _log_node(st, _i(SPAWN), s, i, st.spawn_depth[s, i])
    st.n[s] = c


@njit(cache=True)
def _make_room(st, s, js, served):
    """Evict for the requests not served (see expand_seq); re-index js past the evictions."""
    n = st.n[s]
    blocked = np.zeros(st.M, np.bool_)  # parents and requesters are not leaves
    for c in range(1, n):
        blocked[st.parent[s, c]] = True
    for r in range(len(js)):
        blocked[js[r]] = True
    leaves = np.empty(st.M, np.int64)  # by spawn depth, ties in slot order (insertion sort: stable)
    k = 0
    for c in range(1, n):
        if not blocked[c]:
            i = k
            while i > 0 and st.spawn_depth[s, leaves[i - 1]] > st.spawn_depth[s, c]:
                leaves[i] = leaves[i - 1]
                i -= 1
            leaves[i] = c
            k += 1
    gone = np.zeros(st.M, np.bool_)
    nth = 0
    for r in range(len(js)):
        if not served[r]:
            if nth < k and st.spawn_depth[s, leaves[nth]] < st.depth[s, js[r]]:
                served[r] = True
                gone[leaves[nth]] = True
            nth += 1
    if gone.any():
        keep = np.zeros(st.M, np.bool_)
        keep[:n] = True
        keep &= ~gone
        _discard(st, s, gone)
        newidx = _compact(st, s, keep)
        for r in range(len(js)):
            js[r] = newidx[js[r]]


@njit(cache=True)
def commit_seq(st, s):
    """While the anchor sits at depth L: commit its final token, collapse to the matching child (or
    fall back to a fresh node), stop the sequence at its token limit or EOS."""
    if st.active[s] and st.depth[s, 0] == st.L:  # a round that commits (and verifies the nodes at L)
        st.commit_rounds[s] += 1
    while st.active[s] and st.depth[s, 0] == st.L:
        y = st.exit_token[s, 0]
        _log(st, _i(COMMIT), s, _i(0), y, st.depth[s, 0], _i(0), _F0, st.node_id[s, 0], _i(-1))
        st.output[s, st.tokens[s]] = y
        _hook(st, _i(HOOK_COMMITTED), s, _i(0))
        st.last_commit[s] = st.last_step[s, 0]
        if st.work:
            if st.n_wk_commit == len(st.wk_commit):
                st.wk_commit = _grown(st.wk_commit)
            st.wk_commit[st.n_wk_commit, 0] = s
            st.wk_commit[st.n_wk_commit, 1] = st.last_step[s, 0]
            st.n_wk_commit += 1
        st.tokens[s] += 1
        n = st.n[s]
        keep = np.zeros(st.M, np.bool_)  # the matching child and its subtree (slots are topological)
        child = -1
        for c in range(1, n):
            if st.parent[s, c] == 0 and st.token[s, c] == y:
                child = c
                break
        if child > 0:
            keep[child] = True
            for c in range(child + 1, n):
                keep[c] = keep[st.parent[s, c]]
        gone = np.zeros(st.M, np.bool_)
        for c in range(1, n):  # the old anchor is committed work, not waste
            gone[c] = not keep[c]
        _discard(st, s, gone)
        old_id, old_pos = st.node_id[s, 0], st.pos[s, 0]
        _compact(st, s, keep)
        st.reused_depth[s] += st.depth[s, 0] if child > 0 else 0
        if child < 0:  # fallback: a fresh anchor for the committed token
            st.fallbacks[s] += 1
            _reset_root(st, s, y, old_pos + 1)
            _hook(st, _i(HOOK_SPAWNED), s, _i(0))
            _log(st, _i(SPAWN), s, _i(0), y, _i(0), _i(0), _F0, st.node_id[s, 0], old_id)
        _log(st, _i(COLLAPSE), s, _i(0), st.token[s, 0], st.depth[s, 0], _i(gone.sum()), _F0, st.node_id[s, 0], old_id)
        if st.tokens[s] >= st.max_tokens[s] or (st.eos != NO_TOKEN and y == st.eos):
            stop_seq(st, s)


@njit(cache=True)
def stop_seq(st, s):
    """End sequence s: whatever is still in its lattice is discarded as waste."""
    gone = np.zeros(st.M, np.bool_)
    gone[: st.n[s]] = True
    _discard(st, s, gone)
    st.n[s] = 0
    st.active[s] = False


@njit(cache=True)
def _discard(st, s, gone):
    for j in range(st.M):
        if gone[j]:
            st.wasted_node_layers[s] += st.depth[s, j]
            _log_node(st, _i(DISCARD), s, j, _i(0))
            _hook(st, _i(HOOK_DISCARDED), s, j)


@njit(cache=True)
def _compact(st, s, keep):
    """Move the kept slots of sequence s to the front, in order; the first becomes the anchor.
    Returns old slot -> new slot (-1: gone)."""
    newidx = np.full(st.M, -1, np.int64)
    w = 0
    for j in range(st.M):
        if keep[j]:
            newidx[j] = w
            if w != j:
                st.token[s, w] = st.token[s, j]
                st.pos[s, w] = st.pos[s, j]
                st.depth[s, w] = st.depth[s, j]
                st.node_id[s, w] = st.node_id[s, j]
                st.exit_token[s, w] = st.exit_token[s, j]
                st.exit_conf[s, w] = st.exit_conf[s, j]
                st.spawn_depth[s, w] = st.spawn_depth[s, j]
                st.spawn_conf[s, w] = st.spawn_conf[s, j]
                st.guessed[s, w] = st.guessed[s, j]
                st.tag[s, w] = st.tag[s, j]
                st.last_step[s, w] = st.last_step[s, j]
                st.src_step[s, w] = st.src_step[s, j]
                st.src_depth[s, w] = st.src_depth[s, j]
                st.parent[s, w] = st.parent[s, j]
            w += 1
    for i in range(w):
        p = st.parent[s, i]
        st.parent[s, i] = newidx[p] if p >= 0 else -1
    st.parent[s, 0] = -1
    st.n[s] = w
    return newidx


@njit(cache=True)
def _reset_root(st, s, token, pos):
    st.pos[s, 0] = pos
    st.token[s, 0] = token
    st.depth[s, 0] = 0
    st.parent[s, 0] = -1
    st.node_id[s, 0] = st.next_id[s]
    st.next_id[s] += 1
    st.exit_token[s, 0] = NO_TOKEN
    st.exit_conf[s, 0] = 0
    st.spawn_depth[s, 0] = 0
    st.spawn_conf[s, 0] = 0
    st.guessed[s, 0] = False
    st.last_step[s, 0] = -1
    st.src_step[s, 0] = st.last_commit[s]  # its first layer waits for the committed token
    st.src_depth[s, 0] = st.L
    st.n[s] = 1


# ---------------------------------------------------------------- the transitions over many sequences

@njit(cache=True)
def _advance_all(st, chosen, rounds):
    for s in range(len(st.n)):
        advance_seq(st, s, chosen[s], rounds[s])


@njit(cache=True)
def _store_exits(st, s, j, tok, conf):
    k = 0
    for i in range(len(s)):
        store_exit(st, s[i], j[i], tok[i], conf[i])
        k += 1
        if i + 1 == len(s) or s[i + 1] != s[i]:
            count_heads(st, k)
            k = 0


@njit(cache=True)
def _expand_all(st, s, j, tok, buffer, evict):
    a = 0
    for b in range(1, len(s) + 1):
        if b == len(s) or s[b] != s[a]:
            expand_seq(st, s[a], j[a:b], tok[a:b], buffer, evict)
            a = b


@njit(cache=True)
def _commit_all(st):
    for s in range(len(st.n)):
        commit_seq(st, s)


# --------------------------------------------------------------------------------------- driving

def run(lat: Lattice, policy, executor: Executor) -> Lattice:
    """Run rounds until every sequence has stopped. An executor with `run_compiled` runs a built-in
    policy's rounds in one compiled loop; any other runs them here, one `step` at a time."""
    start(lat, executor)
    fast = getattr(executor, "run_compiled", None)
    if fast is not None and getattr(policy, "params", None) is not None:
        fast(lat, policy)
    while lat.active.any():
        step(lat, policy, executor)
    return lat


def start(lat: Lattice, executor: Executor) -> None:
    if lat.round.any():
        raise ValueError("a run starts from a fresh lattice")
    lat._executor = executor
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
    everyone = len(s) == lat.S  # (the usual case: the per-round bookkeeping is what a torch executor waits on)
    if everyone:
        chosen, rounds = chosen_s, m
    else:
        chosen = np.zeros((lat.S, lat.M), bool)
        chosen[s] = chosen_s
        rounds = np.zeros(lat.S, np.int64)
        rounds[s] = m
    lat.advance(executor, chosen, rounds)
    es, ej, tok, conf = lat.read_exits(executor, chosen)
    if len(es):
        want = policy.wants(lat, es, ej, tok, conf)
        lat.expand(executor, es[want], ej[want], tok[want], policy.buffer, getattr(policy, "evict", False))
    lat.commit(executor)
    if everyone:
        lat.round += 1
        lat.steps += 1
    else:
        lat.round[s] += 1
        lat.steps[s] += 1
