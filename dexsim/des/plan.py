"""Device steps of a recorded replay on a pipeline, and their timeline when a request runs alone.

A `Plan` turns a WorkLog (dexsim/des/record.py) into the work items of the DES for G pipeline stages:

- A **step** is what one device does for one request in one round: the node-layers of that round at
  the device's layers (one weight load per distinct layer, rows at the same layer share it), then the
  exit heads read there in that round (one head load). Consecutive rounds of one core step (a jump)
  are fused into one step per device as long as no node crosses a stage boundary in between: such a
  fused step needs no input after its first round, so running it as one unit gives the same times
  as running its rounds one by one. A core step is cut into **segments** where some node crosses.
- A step starts when (1) its device has finished the request's earlier steps there (each device runs
  a request's steps in issue order, as a CUDA stream runs its kernels; this also covers every KV
  dependency, since an ancestor's layer l lives on the same device), (2) every input from another
  device has arrived: a node crossing a stage boundary waits for the step that computed its previous
  layer plus a point-to-point transfer of its group's hidden states (`cost.transfer_time(rows)`, one
  message per group, as lockstep pricing counts them), and a node at depth 0 waits for the step
  whose exit read spawned it (or that read the committed token, for a fresh anchor). The token going
  back to the first stage is not charged, as in lockstep pricing and `cost.ar_breakdown`.
- A step takes the sum over its groups of layers x `cost.layer_time(rows, ctx)` (the rows of one
  sequence: one KV prefix) plus
  `cost.head_time(exit reads)` (each stage holds a copy of the head, as `cost.check_hardware` assumes),
  plus the host's control, charged as lockstep pricing charges it: `hw.exit_s` per exit read, on the
  step that reads it, and `hw.round_s` per round (a jump of m rounds: m of them), once per core step
  of a sequence, on its first step in issue order (the lowest stage with work in that core step: the
  host decides a round before the devices run it, so the device that starts the round waits for it).
  A step that reads a head group also pays `hw.refill` of its own mean layer call: the refill of
  the calls after the head, charged to the step that caused it (lockstep pricing, without the
  steps, charges the run's mean call: the two agree where the calls cost the same).

`timeline` computes, for every sequence decoded alone on an idle pipeline, when each step starts and
ends: a max-plus recurrence in issue order, vectorized over sequences (numpy, one pass per segment of
core steps) or a plain loop for few sequences. No per-node-layer events: that is what makes the DES
fast when nothing competes for the devices. dexsim/des/simulate.py runs the competing case.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexsim.hardware import cost
from dexsim.hardware import pricing
from dexsim.des.record import WorkLog


@dataclass
class Plan:
    """The steps of a WorkLog on `pp` stages, in issue order: by core step, segment, sequence, device."""

    log: WorkLog
    pp: int
    K: int  # most segments in one core step
    stage: np.ndarray  # [L+2] device of each layer (depth 0 -> 0)
    step_key: np.ndarray  # ((call*K + seg)*S + seq)*pp + dev, sorted
    step_seq: np.ndarray
    step_dev: np.ndarray
    block_ptr: np.ndarray  # the steps of one (call, segment) are contiguous: [n_blocks + 1]
    piece_step: np.ndarray  # pieces (a group's layers within one segment), sorted by step
    piece_first: np.ndarray  # first layer
    piece_n: np.ndarray  # layers
    piece_rows: np.ndarray
    piece_ctx: np.ndarray
    cut_seq_call: np.ndarray  # sorted call*S + seq of the core steps cut into segments
    cut_nseg: np.ndarray
    cut_bounds: np.ndarray  # flat round boundaries of each cut core step
    cut_bptr: np.ndarray
    head_rows: np.ndarray = None  # [steps] exit reads
    step_rounds: np.ndarray = None  # [steps] rounds whose host control the step carries (its core step's, or 0)
    dep_dst: np.ndarray = None  # cross-device dependencies, sorted by the waiting step
    dep_src: np.ndarray = None
    dep_rows: np.ndarray = None  # rows transferred (0: no transfer: a spawn or a token)
    dep_ptr: np.ndarray = None  # [n_blocks + 1] into the dependencies
    commit_step: np.ndarray = None  # per committed token, by sequence then token order
    commit_ptr: np.ndarray = None  # [S + 1]

    @property
    def n_steps(self) -> int:
        return len(self.step_key)

    def last_seg(self, seq, call) -> np.ndarray:
        """Index of the last segment of core step `call` of sequence `seq` (arrays)."""
        sc = np.asarray(call, np.int64) * self.log.n_seqs + np.asarray(seq, np.int64)
        if len(self.cut_seq_call) == 0:
            return np.zeros_like(sc)
        i = np.minimum(np.searchsorted(self.cut_seq_call, sc), len(self.cut_seq_call) - 1)
        return np.where(self.cut_seq_call[i] == sc, self.cut_nseg[i] - 1, 0)

    def segment_of(self, seq: int, call: int, offset: int) -> int:
        """The segment of core step `call` of `seq` that holds its round `offset` (0-based)."""
        sc = call * self.log.n_seqs + seq
        i = np.searchsorted(self.cut_seq_call, sc)
        if i == len(self.cut_seq_call) or self.cut_seq_call[i] != sc:
            return 0
        b = self.cut_bounds[self.cut_bptr[i]: self.cut_bptr[i + 1]]
        return int(np.searchsorted(b, offset, side="right") - 1)

    def find(self, call, seg, seq, dev) -> np.ndarray:
        """Step indices of (call, segment, sequence, device); every one must exist."""
        S = self.log.n_seqs
        key = ((np.asarray(call, np.int64) * self.K + seg) * S + seq) * self.pp + dev
        idx = np.searchsorted(self.step_key, key)
        if len(key) and (idx.max(initial=0) >= len(self.step_key) or (self.step_key[idx] != key).any()):
            raise AssertionError("DES plan: a dependency points at a step that does not exist")
        return idx


def stages(L: int, pp: int) -> np.ndarray:
    """[L+2]: the device of each layer 1..L (contiguous balanced stages, as lockstep pricing splits
    them); depth 0 and L+1 map to the first and last device."""
    st = np.zeros(L + 2, np.int64)
    st[1: L + 1] = np.repeat(np.arange(pp), pricing.stage_sizes(L, pp))
    st[L + 1] = pp - 1
    return st


def _cuts(log: WorkLog, firsts, ncut):
    """Round boundaries of every core step in which some group crosses a stage boundary mid-step."""
    S = log.n_seqs
    cg = np.flatnonzero(ncut > 0)
    if len(cg) == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(1, np.int64)
    d0, m = log.g_d0[cg].astype(np.int64), log.g_m[cg].astype(np.int64)
    r = firsts[None, :] - d0[:, None] - 1
    ok = (r >= 1) & (r <= m[:, None] - 1)
    sc = log.g_call[cg].astype(np.int64) * S + log.g_seq[cg]
    pair = np.unique(np.repeat(sc, ok.sum(1)) * (log.L + 1) + r[ok])
    psc, pr = pair // (log.L + 1), pair % (log.L + 1)
    usc, first, count = np.unique(psc, return_index=True, return_counts=True)
    m_sc = np.zeros(len(usc), np.int64)
    m_sc[np.searchsorted(usc, sc)] = m
    nb = count + 2
    bptr = np.r_[0, np.cumsum(nb)]
    bounds = np.zeros(bptr[-1], np.int64)
    bounds[bptr[1:] - 1] = m_sc
    within = np.arange(len(pr)) - np.repeat(first, count)
    bounds[np.repeat(bptr[:-1], count) + 1 + within] = pr
    return usc, count + 1, bounds, bptr


def _pieces(log: WorkLog, usc, nseg, bounds, bptr):
    """(group, segment, first round, end round) of every piece, in group order."""
    S, n_groups = log.n_seqs, len(log.g_d0)
    if len(usc) == 0:  # no core step is cut (the common case: every group is one piece)
        z = np.zeros(n_groups, np.int64)
        return np.arange(n_groups), z, z, log.g_m
    gsc = log.g_call.astype(np.int64) * S + log.g_seq
    ci = np.minimum(np.searchsorted(usc, gsc), len(usc) - 1)
    in_cut = usc[ci] == gsc
    reps = np.ones(n_groups, np.int64)
    reps[in_cut] = nseg[ci[in_cut]]
    pg = np.repeat(np.arange(n_groups), reps)
    pk = np.arange(len(pg)) - np.repeat(np.cumsum(reps) - reps, reps)
    ia, ib = np.zeros(len(pg), np.int64), log.g_m[pg]
    sel = in_cut[pg]
    base = bptr[:-1][ci[pg[sel]]] + pk[sel]
    ia[sel], ib[sel] = bounds[base], bounds[base + 1]
    return pg, pk, ia, ib


def compile_plan(log: WorkLog, pp: int) -> Plan:
    """The steps, dependencies and commits of `log` on `pp` pipeline stages."""
    L, S = log.L, log.n_seqs
    stage = stages(L, pp)
    firsts = pricing.stage_first_layers(L, pp)
    if not log.cut_after[firsts - 1].all():
        raise ValueError(f"the work log was recorded without the stage boundaries of pp={pp}")
    is_first = np.zeros(L + 2, np.int64)
    is_first[firsts] = 1
    F = np.cumsum(is_first)
    d0, m = log.g_d0, log.g_m
    ncut = np.zeros(len(d0), np.int64)
    long = np.flatnonzero(m > 1)  # only a group of several layers can cross a boundary inside a step
    ncut[long] = F[d0[long] + m[long]] - F[d0[long] + 1]
    usc, nseg, bounds, bptr = _cuts(log, firsts, ncut)
    K = int(nseg.max(initial=1))
    if len(usc):  # some core steps are cut: one piece per group and segment, re-sorted
        pg, pk, ia, ib = _pieces(log, usc, nseg, bounds, bptr)
        first_layer = d0[pg] + 1 + ia
        dev = stage[first_layer]
        key = ((log.g_call[pg].astype(np.int64) * K + pk) * S + log.g_seq[pg]) * pp + dev
        order = np.argsort(key, kind="stable")
        pg, pk, ia, ib, first_layer, dev, key = (a[order] for a in (pg, pk, ia, ib, first_layer, dev, key))
        rows, ctx, n = log.g_rows[pg], log.g_ctx[pg], ib - ia
        reads = np.where((ib == m[pg]) & log.is_exit[d0[pg] + m[pg]], rows, 0)  # in the group's last piece
        new = np.empty(len(key), bool)
        new[:1] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        step_call, step_seq, step_dev = log.g_call[pg][new], log.g_seq[pg][new], dev[new]
        step_seg = pk[new]
    else:  # every group is one piece, already in step order (by call, sequence, depth)
        pg = pk = None
        first_layer = d0 + 1
        dev = stage[first_layer].astype(np.int32)
        new = log.g_first.copy()  # a new (call, sequence), or the next device of the same one
        new[1:] |= dev[1:] != dev[:-1]
        rows, ctx, n = log.g_rows, log.g_ctx, m
        reads = rows if log.is_exit[1:].all() else np.where(log.is_exit[d0 + m], rows, 0)
        step_call, step_seq, step_dev = log.g_call[new], log.g_seq[new], dev[new]
        step_seg = 0
    piece_step = np.cumsum(new, dtype=np.int64) - 1
    step_key = ((step_call.astype(np.int64) * K + step_seg) * S + step_seq) * pp + step_dev
    step_seq, step_dev = step_seq.astype(np.int64), step_dev.astype(np.int64)
    block = step_key // (S * pp)
    bstart = np.flatnonzero(np.r_[True, block[1:] != block[:-1]]) if len(block) else np.zeros(0, np.int64)
    block_ptr = np.r_[bstart, len(step_key)].astype(np.int64)
    plan = Plan(log=log, pp=pp, K=K, stage=stage, step_key=step_key, step_seq=step_seq, step_dev=step_dev,
                block_ptr=block_ptr, piece_step=piece_step, piece_first=first_layer, piece_n=n,
                piece_rows=rows, piece_ctx=ctx, cut_seq_call=usc, cut_nseg=nseg, cut_bounds=bounds, cut_bptr=bptr)
    # exit heads: a group's last piece reads one per row if the group ends at an exit depth
    plan.head_rows = np.bincount(piece_step, weights=reads, minlength=plan.n_steps).astype(np.int32)
    # the host's rounds: a core step's m rounds on the first step of that (call, sequence) in issue order
    call_seq = (step_key // (K * S * pp)) * S + step_seq
    _, first_step = np.unique(call_seq, return_index=True)  # keys sort by call, segment, sequence, device
    plan.step_rounds = np.zeros(plan.n_steps, np.int64)
    plan.step_rounds[first_step] = log.g_m[log.g_first]  # the groups' (call, sequence) pairs, in the same order

    # cross-device dependencies: (a) a group crossing at a segment boundary of its core step
    if pg is not None:
        cross = (pk > 0) & (stage[first_layer] != stage[first_layer - 1])
        a_dst = piece_step[cross]
        a_src = plan.find(log.g_call[pg[cross]], pk[cross] - 1, log.g_seq[pg[cross]], dev[cross] - 1)
        a_rows = log.g_rows[pg[cross]]
    else:
        a_dst = a_src = a_rows = np.zeros(0, np.int64)
    # (b) a node's first layer in a core step: its previous layer's step, or the step that spawned it
    gi = log.d_group
    src_dev = stage[log.d_depth]
    keep = (log.d_call >= 0) & (src_dev != stage[d0[gi] + 1])
    gi, sc, sd = gi[keep], log.d_call[keep], src_dev[keep]
    step0 = piece_step  # the step of each group's first piece
    if pg is not None:
        step0 = np.empty(len(d0), np.int64)
        step0[pg[pk == 0]] = piece_step[pk == 0]
    seq = log.g_seq[gi]
    b_src = plan.find(sc, plan.last_seg(seq, sc), seq, sd)
    b_rows = np.where(d0[gi] >= 1, log.g_rows[gi], 0)
    dst = np.r_[a_dst, step0[gi]]
    o = np.argsort(dst, kind="stable")
    plan.dep_dst, plan.dep_src, plan.dep_rows = dst[o], np.r_[a_src, b_src][o], np.r_[a_rows, b_rows][o]
    plan.dep_ptr = np.searchsorted(plan.dep_dst, block_ptr)

    # token commits: the step in which the committed node read its final token (last device)
    cstep = plan.find(log.c_call, plan.last_seg(log.c_seq, log.c_call), log.c_seq, np.full(len(log.c_seq), pp - 1))
    o = np.argsort(log.c_seq, kind="stable")
    plan.commit_step = cstep[o]
    plan.commit_ptr = np.r_[0, np.cumsum(np.bincount(log.c_seq, minlength=S))]
    return plan


@dataclass
class Durations:
    """Seconds of every step and transfer of a plan on one hardware configuration."""

    step: np.ndarray  # [steps]
    delay: np.ndarray  # [dependencies]: transfer time (0 for spawns)


def _layer_times(model, hw, rows: np.ndarray, ctx: np.ndarray, n) -> np.ndarray:
    """n x cost.layer_time(rows, ctx) for many pieces. For a given row count the roofline's memory and
    compute sides are affine in the context; where memory wins at every context (small row counts) the
    time is a + b x ctx, evaluated from the cost model once per distinct row count. Checked at a third
    context; anything else is priced by the cost model as is."""
    direct = lambda: n * np.asarray(cost.layer_time(model, hw, rows, ctx, seqs=1), float)  # noqa: E731
    if len(rows) < 4096 or rows.max(initial=0) > 4096 or not hw.gpu.memory_compute_overlap:
        return direct()
    r = np.flatnonzero(np.bincount(rows))
    c0, c1, c2 = 0.0, 1.0e6, 12345.0
    p0, p1, p2 = (cost.layer_parts(model, hw, r, np.full(len(r), c), seqs=1) for c in (c0, c1, c2))
    slope = {k: (p1[k] - p0[k]) / (c1 - c0) for k in ("memory", "compute")}
    affine = all(np.allclose(p0[k] + slope[k] * c2, p2[k], rtol=1e-12, atol=0) for k in slope)
    memory_bound = (p0["memory"] >= p0["compute"]) & (slope["memory"] >= slope["compute"])
    b = slope["memory"]
    if not (affine and memory_bound.all() and np.allclose(b, b[0], rtol=1e-12, atol=0)):
        return direct()
    a = np.zeros(int(r[-1]) + 1)
    a[r] = p0["memory"] + p0["overhead"] + p0["collectives"]
    t = a[rows] + b[0] * ctx
    return t if n.min(initial=1) == 1 and n.max(initial=1) == 1 else n * t


def durations(plan: Plan, model, hw) -> Durations:
    piece = _layer_times(model, hw, plan.piece_rows, plan.piece_ctx, plan.piece_n)
    step = np.bincount(plan.piece_step, weights=piece, minlength=plan.n_steps)
    hr = plan.head_rows
    if hw.refill and len(hr):
        calls = np.bincount(plan.piece_step, weights=plan.piece_n, minlength=plan.n_steps)
        step += hw.refill * np.divide(step, calls, out=np.zeros_like(step), where=(hr > 0) & (calls > 0))
    if len(hr) and hr.max() <= 4096:  # a head group's time depends on its rows only: one table lookup
        table = np.r_[0.0, np.asarray(cost.head_time(model, hw, np.arange(1, hr.max() + 1, dtype=float)), float)]
        step += table[hr]
    elif len(hr):
        h = hr > 0
        step[h] += cost.head_time(model, hw, hr[h].astype(float))
    if hw.round_s or hw.exit_s:  # zero host terms leave every step's float as it was
        step += plan.step_rounds * hw.round_s + hr * hw.exit_s
    delay = np.zeros(len(plan.dep_rows))
    t = plan.dep_rows > 0
    if t.any():
        delay[t] = cost.transfer_time(model, hw, plan.dep_rows[t].astype(float))
    return Durations(step, delay)


@dataclass
class Timeline:
    """Every sequence decoded alone on an idle pipeline from time 0."""

    start: np.ndarray  # [steps]
    end: np.ndarray
    token_time: np.ndarray  # per committed token, as plan.commit_step
    finish: np.ndarray  # [S] the last token's time
    busy: np.ndarray  # [S, pp] device seconds until `finish` (later work is dropped then)


def timeline(plan: Plan, dur: Durations, vectorize: bool | None = None) -> Timeline:
    """Start and end of every step: start = max(the device's previous step of this sequence ends,
    every cross-device input arrives). Both code paths give the same floats."""
    n_blocks = len(plan.block_ptr) - 1
    if vectorize is None:  # numpy pays off when a block holds many sequences' steps
        vectorize = plan.n_steps > 8 * max(n_blocks, 1)
    start, end = (_timeline_numpy if vectorize else _timeline_loop)(plan, dur)
    S, pp = plan.log.n_seqs, plan.pp
    token_time = end[plan.commit_step]
    finish = np.zeros(S)
    has = np.diff(plan.commit_ptr) > 0
    finish[has] = np.maximum.reduceat(token_time, plan.commit_ptr[:-1][has]) if has.any() else finish[has]
    cut = np.minimum(end, finish[plan.step_seq])
    busy = np.bincount(plan.step_seq * pp + plan.step_dev, weights=np.maximum(cut - start, 0.0),
                       minlength=S * pp).reshape(S, pp)
    return Timeline(start, end, token_time, finish, busy)


def _timeline_numpy(plan: Plan, dur: Durations):
    pp = plan.pp
    n = plan.n_steps
    start, end = np.empty(n), np.empty(n)
    free = np.zeros(plan.log.n_seqs * pp)
    sg = plan.step_seq * pp + plan.step_dev
    bp, dp = plan.block_ptr, plan.dep_ptr
    dst, src, delay, d = plan.dep_dst, plan.dep_src, dur.delay, dur.step
    for b in range(len(bp) - 1):
        a, z = bp[b], bp[b + 1]
        idx = sg[a:z]
        st = free[idx]
        e0, e1 = dp[b], dp[b + 1]
        if e1 > e0:
            ready = np.zeros(z - a)
            np.maximum.at(ready, dst[e0:e1] - a, end[src[e0:e1]] + delay[e0:e1])
            st = np.maximum(st, ready)
        start[a:z] = st
        e = st + d[a:z]
        end[a:z] = e
        free[idx] = e
    return start, end


def _timeline_loop(plan: Plan, dur: Durations):
    pp = plan.pp
    n = plan.n_steps
    start, end = [0.0] * n, [0.0] * n
    free = [0.0] * (plan.log.n_seqs * pp)
    sg = (plan.step_seq * pp + plan.step_dev).tolist()
    d = dur.step.tolist()
    dst, src, delay = plan.dep_dst.tolist(), plan.dep_src.tolist(), dur.delay.tolist()
    k, nd = 0, len(dst)
    for i in range(n):
        st = free[sg[i]]
        while k < nd and dst[k] == i:
            t = end[src[k]] + delay[k]
            if t > st:
                st = t
            k += 1
        start[i] = st
        e = st + d[i]
        end[i] = e
        free[sg[i]] = e
    return np.array(start), np.array(end)
