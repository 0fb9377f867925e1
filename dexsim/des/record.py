"""Recording a replay's work for the discrete-event simulator (dexsim/des.py).

The scheduler decides timing, never tokens (DESIGN.md section 3), so the DES does not drive the
lattice: the lattice core runs exactly as under `lockstep` (same policy objects, same rounds, same
counters), and a `WorkRecorder` wrapped around the replay executor writes down, per core step, what
each sequence computed. The DES later prices and times that record on any hardware configuration,
which is also why a sweep replays once and simulates every GPU configuration from the same record.

What is recorded (a `WorkLog`, hardware-independent):

- groups: the node-layers of one sequence in one core step that start at the same depth. They share
  one weight load per round (the core's own grouping); a core step of m rounds advances each group m
  layers. Per group: rows, and the KV positions its rows read (sum of pos + 1, as `context_sum`).
- first-layer dependencies that may cross devices: for a node at depth 0, the step whose exit read
  spawned it (or, for a fresh anchor after a fallback, the step that read the committed token); for a
  node whose next layer may start a pipeline stage (depths in `cut_after`), the step that computed its
  previous layer. Every other dependency (a node's previous layer, an ancestor's KV at the same layer)
  lies on the same device and earlier in that device's in-order queue, so it needs no record.
- commits (the step in which each committed node read its final token). Exit reads need no record:
  every node of a group ends the step at the same depth, so all of them read an exit head there or
  none does (the exit set is in the log).

Group arrays are int32 (and a bool marking each (call, sequence)'s first group): the DES makes a few
passes over millions of groups, and on this machine those passes are bound by memory bandwidth.

The recorder keeps its per-node state in arrays indexed by the node id, which the core never reuses
within a sequence, so collapses and evictions (which move nodes between slots) need no bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexsim.hardware.pricing import stage_first_layers, tally_of
from dexsim.replay.executor import ReplayExecutor, replay


@dataclass
class WorkLog:
    """The work of one replay, per core step ("call"), for the DES. Arrays are in recording order:
    by call, then by sequence, then by depth."""

    L: int
    n_seqs: int
    n_calls: int
    cut_after: np.ndarray  # [L+1] bool: depths whose data dependency was recorded
    is_exit: np.ndarray  # [L+1] bool: the policy's exit set
    g_call: np.ndarray  # groups (int32, to keep the passes over millions of them cheap)
    g_seq: np.ndarray
    g_first: np.ndarray  # bool: the first group of its (call, sequence)
    g_d0: np.ndarray  # depth before the step
    g_m: np.ndarray  # layers (rounds) in this step
    g_rows: np.ndarray
    g_ctx: np.ndarray  # KV positions read per layer, summed over the rows (float64, exact)
    g_round: np.ndarray  # the sequence's round at the step's first round (tests map rounds to steps)
    d_group: np.ndarray  # first-layer dependencies: the group,
    d_call: np.ndarray  # the call of the step it waits for (-1: the request's arrival),
    d_depth: np.ndarray  # and the depth whose device that step ran on
    c_seq: np.ndarray  # commits, in commit order: the sequence and the call in which the
    c_call: np.ndarray  # committed node read its final token
    counters: dict  # per-sequence lattice counters ([S] arrays), to add up over requests


def cut_mask(L: int, pps) -> np.ndarray:
    """`cut_after` for pipelines of the given stage counts: the depths after which a stage starts."""
    mask = np.zeros(L + 1, bool)
    for pp in pps:
        mask[stage_first_layers(L, int(pp)) - 1] = True
    return mask


class WorkRecorder:
    """An executor that delegates to `inner` (a ReplayExecutor) and records a WorkLog."""

    def __init__(self, inner, L: int, cut_after: np.ndarray | None = None):
        self.inner, self.L = inner, L
        self.can_jump = inner.can_jump
        self.cut_after = np.ones(L + 1, bool) if cut_after is None else np.asarray(cut_after, bool)
        self.call = -1
        self._cap = 0
        self._parts: dict[str, list] = {k: [] for k in ("g", "d", "c")}
        self._n_groups = 0
        if hasattr(inner, "discarded"):
            self.discarded = inner.discarded

    # per-node state, by node id: the call of its last layer, and its first layer's dependency
    def _grow(self, lat) -> None:
        need = int(lat.next_id.max()) + 1
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 64)
        S = lat.S
        old = (self._last, self._src_call, self._src_depth) if self._cap else None
        self._last = np.full((S, cap), -1, np.int64)
        self._src_call = np.full((S, cap), -1, np.int64)
        self._src_depth = np.zeros((S, cap), np.int64)
        if old is not None:
            for new, o in zip((self._last, self._src_call, self._src_depth), old):
                new[:, : self._cap] = o
        else:
            self._last_commit = np.full(S, -1, np.int64)
        self._cap = cap

    def spawned(self, lat, s, j):
        self.inner.spawned(lat, s, j)
        self._grow(lat)
        ids = lat.node_id[s, j]
        p = lat.parent[s, j]
        child = p >= 0
        fresh = self.call < 0  # the roots of a run: they wait for the request's arrival only
        self._src_call[s, ids] = np.where(child, self.call, -1 if fresh else self._last_commit[s])
        self._src_depth[s, ids] = np.where(child, lat.depth[s, np.maximum(p, 0)], 0 if fresh else self.L)
        self._last[s, ids] = -1

    def committed(self, lat, s, ids):
        hook = getattr(self.inner, "committed", None)
        if hook is not None:
            hook(lat, s, ids)
        src = self._last[s, ids]
        self._last_commit[s] = src
        self._parts["c"].append((s.astype(np.int64), src))

    def compute(self, lat, s, j, layers):
        self.call += 1
        self._grow(lat)
        L = self.L
        d0 = lat.depth[s, j]
        ids = lat.node_id[s, j]
        key = s * (L + 1) + d0
        _, first, inv, rows = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
        ctx = np.bincount(inv, weights=(lat.pos[s, j] + 1).astype(np.float64), minlength=len(first))
        gs = s[first]
        gfirst = np.empty(len(gs), bool)
        gfirst[:1] = True
        np.not_equal(gs[1:], gs[:-1], out=gfirst[1:])
        self._parts["g"].append((np.full(len(first), self.call, np.int32), gs, gfirst, d0[first], layers[first],
                                 rows, ctx, lat.round[gs]))
        new = d0 == 0
        cut = ~new & self.cut_after[d0]
        sel = new | cut
        if sel.any():
            ss, ii = s[sel], ids[sel]
            src = np.where(new[sel], self._src_call[ss, ii], self._last[ss, ii])
            dep = np.where(new[sel], self._src_depth[ss, ii], d0[sel])
            self._parts["d"].append((self._n_groups + inv[sel], src, dep))
        self._n_groups += len(first)
        self._last[s, ids] = self.call
        self.inner.compute(lat, s, j, layers)

    def read_exits(self, lat, s, j):
        return self.inner.read_exits(lat, s, j)

    def worklog(self, lat) -> WorkLog:
        """The record of the finished run on `lat`."""
        def cat(name, n, dtypes):
            parts = self._parts[name]
            if not parts:
                return [np.zeros(0, dt) for dt in dtypes]
            return [np.concatenate([p[i] for p in parts]).astype(dtypes[i]) for i in range(n)]

        i64, i32, f64 = np.int64, np.int32, np.float64
        g = cat("g", 8, (i32, i32, bool, i32, i32, i32, f64, i64))
        d = cat("d", 3, (i64, i64, i64))
        c = cat("c", 2, (i64, i64))
        cnt = lat.counters
        counters = {k: np.array(getattr(cnt, k)) for k in
                    ("tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks")}
        return WorkLog(self.L, lat.S, self.call + 1, self.cut_after, np.array(lat.is_exit), *g, *d, *c, counters)


def record(trace, policy, *, seed: int = 0, pps=(1,), record_events: bool = False):
    """Replay `policy` on `trace` exactly as `replay.replay` does, recording its work for the DES on
    pipelines of `pps` stages. Returns (lattice, Tally for lockstep pricing, WorkLog)."""
    rec = WorkRecorder(ReplayExecutor(trace, seed), trace.L, cut_mask(trace.L, pps))
    lat = replay(trace, policy, seed=seed, record_events=record_events, executor=rec)
    return lat, tally_of(lat), rec.worklog(lat)
