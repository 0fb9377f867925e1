"""Trace replay: the lattice core driven by a recorded trace instead of a model.

On the true path (the committed tokens), exit tokens and confidences are the trace's own. A node off
the true path can never turn out right, but it must not *look* different to a policy (DESIGN.md
section 5): its exit token changes between consecutive exit depths at the rate the true path shows
in the same trace at those depths (so duplicate guesses merge as often as in a real engine), and its
confidence is drawn, seeded, from the trace's own confidences at that depth. Its tokens are fresh ids
at or above the vocabulary size, so they never match anything the true path holds.

The lattice core keeps every counter, per-layer ones included; pricing (dexsim/hardware) and the
DES (dexsim/des) read them from the finished lattice.
"""
from __future__ import annotations

import json
import tracemalloc
from functools import lru_cache

import numpy as np
from numba import njit
from numba.experimental import structref

from dexsim.core import lattice as core
from dexsim.core.lattice import NO_TOKEN
from dexsim.core.policies import select_seq, wants_node
from dexsim import config
from dexsim.core import registry
from dexsim.core.registry import policy_params
from dexsim.errors import UserError
from dexsim.replay.compile_ahead import compile_ahead
from dexsim.traces.format import Trace

ON_PATH = 1


@structref.register
class _ReplayDataType(core.StructType):
    pass


class ReplayData(structref.StructRefProxy):
    """What the compiled replay reads, as one reference:
    col [L+1] (exit depth -> trace column), offset, length, prompt_len [S] (each sequence's first
    row, tokens and prompt length), final [N], exit_tokens [N, D], exit_conf [N, D] (float32: exactly
    the trace's float16 values), cum_log_stay [D+1] (log P(the true path's token at column c is none
    of the earlier columns'), cumulated over columns 1..c), vocab, seed (uint64)."""


_REPLAY_FIELDS = ("col", "offset", "length", "prompt_len", "final", "exit_tokens", "exit_conf", "cum_log_stay",
                  "vocab", "seed")
ReplayData = core.define_struct(ReplayData, _ReplayDataType, _REPLAY_FIELDS)


class ReplayExecutor:
    """Answers the core's exit reads from a trace. `tag` of a node is ON_PATH or 0.

    Its rules are compiled (`read_node`, `spawned_node`), so with a built-in policy
    the whole replay runs as one compiled loop (`run_compiled`); the methods below serve the core's
    Python rounds (other policies, subclasses that change what an exit reads)."""

    can_jump = True

    def __init__(self, trace: Trace, seed: int = 0):
        self.trace = trace
        self.seed = seed
        col = np.full(trace.L + 1, -1, np.int64)
        col[trace.depths] = np.arange(len(trace.depths))
        et = np.ascontiguousarray(trace.exit_tokens, np.int64)
        log_stay = np.log1p(-np.minimum(_novelty(et), 1 - 1e-12))
        log_stay[0] = 0.0
        f = dict(
            col=col, offset=trace.seq_offsets[:-1].astype(np.int64), length=np.diff(trace.seq_offsets).astype(np.int64),
            prompt_len=trace.prompt_len.astype(np.int64), final=trace.final.astype(np.int64),
            exit_tokens=et, exit_conf=trace.exit_conf.astype(np.float32),
            cum_log_stay=np.concatenate([[0.0], np.cumsum(log_stay)]), vocab=int(trace.vocab),
            seed=np.uint64(seed))
        self.fields = f  # what `rx` holds, as arrays (an executor of some of the sequences re-slices them)
        self.rx = ReplayData(*(f[k] for k in _REPLAY_FIELDS))

    def run_compiled(self, lat, policy) -> None:
        """Every round of every sequence in compiled code (a subclass may change what an exit reads:
        it runs through the Python rounds instead)."""
        if type(self) is ReplayExecutor:
            if not _replay_rounds.signatures:
                compile_ahead(lat.st, policy.params)
            _replay_rounds(lat.st, policy.params, self.rx)

    def compute(self, lat, s, j, layers):
        pass  # a trace already holds what the computation would give

    def spawned(self, lat, s, j):
        _spawned_all(lat.st, self.rx, np.asarray(s, np.int64), np.asarray(j, np.int64))

    def read_exits(self, lat, s, j):
        return _read_all(lat.st, self.rx, np.asarray(s, np.int64), np.asarray(j, np.int64))


@njit(cache=True)
def _novelty(et):
    """[D]: the share of rows whose exit token at column c appears at no earlier column."""
    N, D = et.shape
    novel = np.zeros(D)
    for g in range(N):
        for c in range(1, D):
            new = True
            for b in range(c):
                if et[g, b] == et[g, c]:
                    new = False
                    break
            novel[c] += new
    return novel / max(N, 1)


@njit(cache=True)
def read_node(st, rx, s, j):
    """Exit token and confidence of node (s, j) at its depth: the trace's on the true path; off it,
    a fresh id >= vocab that changes between exit depths at the true path's rate, or the previous
    exit token, and a confidence drawn from the trace's at that depth."""
    d = st.depth[s, j]
    c = rx.col[d]
    r = st.pos[s, j] - rx.prompt_len[s] + 1  # the row whose token this node's state predicts
    if st.tag[s, j] == ON_PATH and r < rx.length[s]:
        g = rx.offset[s] + max(r, 0)
        return rx.exit_tokens[g, c], rx.exit_conf[g, c]
    prev = st.exit_token[s, j]
    prev_d = st.prev_exit[d]
    prev_c = rx.col[prev_d] if prev_d > 0 else -1
    stay = np.exp(rx.cum_log_stay[c + 1] - rx.cum_log_stay[prev_c + 1])
    # Draws keyed by (seed, node, depth), not by call order or sequence index: a sequence's replay
    # must not depend on how rounds are jumped or scheduled, nor on which sequences run beside it.
    node = st.node_id[s, j]
    h = _hash(rx.seed, node, d)
    tok = prev
    if prev == NO_TOKEN or _uniform(h, np.uint64(1)) >= stay:
        tok = rx.vocab + node * (st.L + 1) + d  # unique per node and depth
    row = np.int64(_uniform(h, np.uint64(2)) * len(rx.exit_conf))  # uint64 streams: one compiled _uniform
    return tok, rx.exit_conf[row, c]


@njit(cache=True)
def spawned_node(st, rx, s, j):
    """A new node is on the true path if it is a root, or its parent is and its token is the
    trace's next final token."""
    p = st.parent[s, j]
    on = p < 0
    if not on:
        prow = st.pos[s, p] - rx.prompt_len[s] + 1
        if st.tag[s, p] == ON_PATH and prow + 1 < rx.length[s]:
            on = st.token[s, j] == rx.final[rx.offset[s] + prow]
    st.tag[s, j] = ON_PATH if on else 0


@njit(cache=True)
def _replay_rounds(st, pol, rx):
    """The core's `step` with this executor, every round, never leaving compiled code: the same
    transitions, the sequences side by side one core step at a time (as the Python rounds take them,
    so the work log comes in the same order)."""
    chosen = np.zeros(st.M, np.bool_)
    req_j = np.empty(st.M, np.int64)
    req_tok = np.empty(st.M, np.int64)
    live = np.flatnonzero(st.active)
    while len(live):
        for s in live:
            m = select_seq(st, s, pol, chosen)
            for j in range(st.M):  # jump to the first exit depth of any chosen node
                if chosen[j]:
                    m = min(m, st.next_exit[st.depth[s, j]] - st.depth[s, j])
            core.advance_seq(st, s, chosen, m)
            heads = wanted = 0
            for j in range(st.M):
                if chosen[j] and st.is_exit[st.depth[s, j]]:
                    tok, conf = read_node(st, rx, s, j)
                    core.store_exit(st, s, j, tok, conf)
                    heads += 1
                    if wants_node(st, s, j, tok, st.exit_conf[s, j], pol):
                        req_j[wanted], req_tok[wanted] = j, tok
                        wanted += 1
            core.count_heads(st, heads)
            if wanted:
                core.expand_seq(st, s, req_j[:wanted], req_tok[:wanted], pol[2], pol[6])
                _tell_spawns(st, rx)
            core.commit_seq(st, s)
            _tell_spawns(st, rx)
            st.round[s] += 1
            st.steps[s] += 1
        if not st.active[live].all():
            live = live[st.active[live]]


@njit(cache=True)
def _tell_spawns(st, rx):
    for i in range(st.n_hooks):
        if st.hooks[i, 0] == core.HOOK_SPAWNED:
            spawned_node(st, rx, st.hooks[i, 1], st.hooks[i, 2])
    st.n_hooks = 0


@njit(cache=True)
def _read_all(st, rx, s, j):
    tok = np.empty(len(s), np.int64)
    conf = np.empty(len(s), np.float32)
    for i in range(len(s)):
        tok[i], conf[i] = read_node(st, rx, s[i], j[i])
    return tok, conf


@njit(cache=True)
def _spawned_all(st, rx, s, j):
    for i in range(len(s)):
        spawned_node(st, rx, s[i], j[i])


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def _mix(x):
    """splitmix64's finaliser: a well-spread 64-bit hash (uint64 arithmetic wraps by design)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def _hash(seed, node, depth):
    h = _mix(seed + _GOLDEN)
    h = _mix(h ^ np.uint64(node))
    return _mix(h ^ np.uint64(depth))


@njit(cache=True)
def _uniform(h, stream):
    """A uniform in [0, 1) from a hash, one independent stream per `stream`."""
    return np.float64(_mix(h ^ np.uint64(stream)) >> np.uint64(11)) * 2.0**-53


def replay(trace: Trace, policy, *, seed: int = 0, record_events: bool = False) -> core.Lattice:
    """Run `policy` over every sequence of `trace` at once; returns the finished lattice."""
    return core.run(replay_lattice(trace, policy, record_events), policy, ReplayExecutor(trace, seed))


def unrecorded(trace: Trace, exits) -> list[int]:
    """The depths of `exits` that the trace did not record (a replay can read only those it did)."""
    return np.setdiff1d(exits, trace.depths).tolist()


def replay_lattice(trace: Trace, policy, record_events: bool = False, work_cuts=None) -> core.Lattice:
    """The fresh lattice a replay of `trace` under `policy` runs on: every sequence, rooted at its
    prompt's last position; the policy may only read depths the trace recorded. `work_cuts`: see
    `Lattice`."""
    bad = unrecorded(trace, policy.exits)
    if bad:
        raise UserError(f"{trace.path or 'trace'}: exit depth {bad[0]} is not recorded in field 'depths' "
                        f"(recorded: {','.join(map(str, trace.depths))})")
    _check_size(trace, policy)
    return core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                        root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                        max_tokens=np.diff(trace.seq_offsets), record_events=record_events, work_cuts=work_cuts)


@lru_cache(maxsize=1)
def _slot_bytes() -> float:
    """Bytes a lattice allocates per slot of one sequence, measured (numpy reports its allocations to
    tracemalloc) on two lattices 1024 slots apart."""
    def build(capacity):
        core.Lattice(L=1, exits=np.array([1]), capacity=capacity, root_tokens=np.zeros(1, np.int64),
                     root_pos=np.zeros(1, np.int64), max_tokens=np.ones(1, np.int64))

    def peak(capacity):
        tracemalloc.start()
        try:
            build(capacity)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    build(1)  # compiled (or loaded from numba's cache) outside the measurement
    return (peak(1025) - peak(1)) / 1024


def _check_size(trace: Trace, policy) -> None:
    """The lattice's slots fit in memory, or one line naming the flag that sized them (`--buffer`, or
    LayerSkip's `--draft`), before anything is allocated."""
    spec = registry.REGISTRY.get(policy.name)
    flag = "--draft" if spec is not None and "draft" in spec.params and "buffer" not in spec.params else "--buffer"
    slots = policy.buffer + 1
    config.check_fits(f"{flag} {policy.buffer}", trace.n_seqs * slots * _slot_bytes(),
                      f"a lattice of {slots:,} slots for each of {trace.n_seqs} sequences")


def output_matches(trace: Trace, lat: core.Lattice) -> bool:
    """The replay form of losslessness: every sequence committed exactly the trace's final tokens."""
    for s in range(trace.n_seqs):
        sl = slice(trace.seq_offsets[s], trace.seq_offsets[s + 1])
        n = sl.stop - sl.start
        if not np.array_equal(lat.output[s, :n], trace.final[sl]) or (lat.output[s, n:] != core.NO_TOKEN).any():
            return False
    return True


def result(trace: Trace, lat: core.Lattice, policy) -> dict:
    """One replay's figures: the counters, summed over sequences, the acceptance figures derived from
    them, and the losslessness check."""
    totals = lat.counters.totals()
    out = {"trace": trace.path, "policy": policy.name, **policy_params(policy), **totals, **core.acceptance(totals)}
    out["output_matches_trace"] = output_matches(trace, lat)
    return out


def save_events(path: str, lat: core.Lattice, trace: Trace, policy) -> None:
    """The event log of a replay as a `dex-events` file (what `python -m viz animate --events` reads)."""
    meta = {"format": f"dex-events/{core.EVENTS_VERSION}", "L": trace.L, "trace": trace.path,
            "policy": policy.name, **policy_params(policy), "kinds": list(core.EVENT_NAMES)}
    try:  # a file object: savez would add `.npz` to a path without it
        with open(path, "wb") as f:
            np.savez_compressed(f, events=lat.events(), meta=np.array(json.dumps(meta)))
    except OSError as e:
        raise UserError(f"--events {path}: cannot write ({e.strerror or e})") from None
