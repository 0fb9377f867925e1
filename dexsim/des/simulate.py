"""The discrete-event scheduler (`--scheduler des`): pipelines, tensor parallelism and serving load.

The model (DESIGN.md section 3, "pipeline"; issue 8):

- Tokens never depend on the scheduler. The lattice core runs each sequence exactly as under
  `lockstep` (same policy objects, rounds, tokens and counters); the replay's work is recorded
  (dexsim/des/record.py) and this module decides only *when* each piece of it runs.
- Devices: the L layers are split into `--pp` contiguous, balanced stages (as lockstep pricing splits
  them); a stage is one device made of `--tp` GPUs (the cost model adds the TP all-reduces), holding
  its layers and a copy of the exit head.
- Work items ("steps", dexsim/des/plan.py): what one device does for one request in one round (rounds
  of a jump fused while no node crosses a stage): one weight load per distinct layer, rows at the same
  layer sharing it, then one head load for the exit reads there. Priced by the cost model (the roofline
  or a `--profile`'s tables) with the host's control per round and per exit read, as lockstep prices it.
- Dependencies, the dependency rule of DESIGN.md section 3 in time: a step waits for the device to
  finish the request's earlier steps there (in issue order: this covers a node's previous layer and
  its ancestors' KV, which live on the same device), for the hidden states of nodes crossing from
  the previous stage (their step + a point-to-point transfer), and for the exit read that spawned a
  new node. Explorers thus run asynchronously across stages: a branch drafted at stage 0 runs while
  the anchor is verified at stage 3, which is the pipeline bubble DEX fills. A step never starts
  before its inputs; the tests check this on the recorded events against the core's event log.
- Which node-layers run is still the policy's choice per round, made on the lattice state after the
  previous round as in lockstep; the DES overlaps rounds wherever the dependencies allow. It does not
  cancel work already chosen for a branch that a later commit discards (a real engine might), except
  at the end of a request: when its last token commits, its remaining work is dropped at that instant
  (useless speculation; a real engine would let a running step finish, at most one step per device).
- Serving load: `--requests N` requests (request i decodes trace sequence i mod S) arriving by
  `--arrival closed:C` (C clients, each sending its next request when the last one completes) or
  `poisson:QPS` (open loop, seeded by --seed), at most `--batch` in flight (FIFO queue beyond). While
  at most one request is in flight the timeline is computed in closed form (des_plan.timeline,
  vectorized, no per-step events). Otherwise a SimPy process per device runs the requests' steps:
  when free, a device takes the ready step of every in-flight request (at most `--micro-batch` of
  them, oldest ready first) and runs them as one step (continuous batching: rows of different
  requests at the same layer span share one weight load, KV stays per request, exit heads share one
  head load). Without a cap, AR requests that start together stay aligned and move as one
  micro-batch, one stage busy at a time; `--micro-batch ceil(batch/pp)` splits them GPipe-style so
  every stage has work, which in turn stops DEX from sharing weight loads across more requests.
- Results: simulated seconds from the first arrival to the last token, tokens/s, per-token latency
  percentiles (p50/p99 of the time between a request's consecutive tokens, the first one counted from
  its arrival), per-device utilization (busy / simulated seconds) and busy seconds.

Approximations, stated: transfers are delays, not contended links, and the token sent back to the
first stage is free (as in lockstep pricing); across requests, only identical layer spans share a
weight load; prefill is not modelled.
"""
from __future__ import annotations

import json
import math
import sys
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from dexsim.hardware import cost
from dexsim.des.plan import Durations, Plan, compile_plan, durations, timeline
from dexsim.des.record import WorkLog
from dexsim.config import check_fits, check_writable, option
from dexsim.errors import UserError

ARRIVALS = ("closed", "poisson")


SCHEDULERS = ("lockstep", "des")  # DESIGN.md section 3


@dataclass(frozen=True)
class SchedulerConfig:
    """How a replay is timed (flags of `replay`; None: not given)."""

    scheduler: str = option("lockstep", "lockstep: one device, rounds priced in closed form; des: discrete-event "
                                        "simulation of pipeline stages and serving load (needs --gpu)")
    requests: int | None = option(None, "des: requests to decode (request i decodes trace sequence i mod S; "
                                        "default: each sequence once)", kind=int)
    arrival: str | None = option(None, "des: closed[:CLIENTS] (default closed:BATCH) or poisson:QPS (seeded by "
                                       "--seed); --batch is then the most requests in flight")
    micro_batch: int | None = option(None, "des: most requests in one device step (default: every ready one; "
                                           "ceil(batch/pp) splits a batch across pipeline stages GPipe-style)",
                                     kind=int)
    trace_out: str | None = option(None, "des: write device activity as Chrome/Perfetto trace JSON")

    def check(self, priced: bool) -> None:
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler {self.scheduler!r}: must be one of {', '.join(SCHEDULERS)}")
        if self.scheduler != "des":
            given = [f for f in ("requests", "arrival", "micro_batch", "trace_out") if getattr(self, f) is not None]
            if given:
                raise UserError(f"--{given[0].replace('_', '-')}: needs --scheduler des")
        elif not priced:
            raise UserError("--scheduler des: needs --gpu")
        if self.trace_out is not None:
            check_writable("--trace-out", self.trace_out)

    def load(self, batch: int, seed: int) -> "Load":
        return parse_load(self.arrival, self.requests, batch, seed, micro_batch=self.micro_batch)


@dataclass(frozen=True)
class Load:
    """A serving load: how many requests, how they arrive, how many the engine holds at once."""

    requests: int | None = None  # None: every sequence of the trace once
    arrival: str = "closed"
    rate: float = 1.0  # clients (closed) or requests per second (poisson)
    batch: int = 1  # most requests in flight
    seed: int = 0
    micro_batch: int | None = None  # most requests in one device step (None: no cap)

    def spec(self) -> str:
        return f"closed:{int(self.rate)}" if self.arrival == "closed" else f"poisson:{self.rate:g}"


def parse_load(arrival: str | None, requests: int | None, batch: int, seed: int = 0,
               flag: str = "--arrival", micro_batch: int | None = None) -> Load:
    """`--arrival closed[:C]|poisson:QPS` (default closed:<batch>), `--requests`, `--batch`, `--micro-batch`."""
    if requests is not None and requests < 1:
        raise UserError(f"--requests {requests}: must be >= 1")
    if micro_batch is not None and micro_batch < 1:
        raise UserError(f"--micro-batch {micro_batch}: must be >= 1")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be >= 1")
    spec = arrival or "closed"
    kind, _, value = spec.partition(":")
    if kind not in ARRIVALS:
        raise UserError(f"{flag} {spec!r}: expected closed[:CLIENTS] or poisson:QPS")
    if kind == "closed" and not value:
        return Load(requests, "closed", float(batch), batch, seed, micro_batch)
    try:
        rate = float(value)
    except ValueError:
        raise UserError(f"{flag} {spec!r}: expected closed[:CLIENTS] or poisson:QPS") from None
    if not (rate > 0 and math.isfinite(rate)) or (kind == "closed" and rate != int(rate)):
        raise UserError(f"{flag} {spec!r}: the {'client count' if kind == 'closed' else 'rate'} must be a positive "
                        f"{'integer' if kind == 'closed' else 'number'}")
    return Load(requests, kind, rate, batch, seed, micro_batch)


@dataclass
class DesResult:
    sim_seconds: float
    tokens: int
    tokens_per_s: float
    p50_token_latency_s: float
    p99_token_latency_s: float
    utilization: list  # per device (stage)
    busy_s: list  # per device
    request_seqs: np.ndarray  # the trace sequence of each request
    arrival: np.ndarray  # per request
    finish: np.ndarray  # per request: its last token
    token_latency: np.ndarray  # every token's latency, request by request
    engine: str  # "alone" (closed form) or "simpy"
    plan: Plan = field(default=None, repr=False)
    events: list = field(default=None)  # device steps (device, start, end, request ids, step ids), if asked
    commits: list = field(default=None)  # (time, request) of every token, if asked
    extrapolated: list = field(default_factory=list)  # what a profile priced beyond its measured grid

    def fields(self) -> dict:
        """The result-row fields of a DES run."""
        return {"sim_seconds": self.sim_seconds, "tokens_per_s": self.tokens_per_s,
                "p50_token_latency_s": self.p50_token_latency_s, "p99_token_latency_s": self.p99_token_latency_s,
                "utilization": [round(u, 6) for u in self.utilization]}


def request_seqs(n_seqs: int, load: Load) -> np.ndarray:
    n = n_seqs if load.requests is None else load.requests
    return np.arange(n) % n_seqs


def request_counters(log: WorkLog, load: Load) -> dict:
    """The lattice counters of the simulated requests (each request counts its sequence's)."""
    q = request_seqs(log.n_seqs, load)
    return {k: int(v[q].sum()) for k, v in log.counters.items()}


def simulate(log: WorkLog, model, hw, load: Load, *, plan: Plan | None = None, engine: str = "auto",
             want_events: bool = False) -> DesResult:
    """Time the recorded work of `log` on `hw` under `load`. engine: auto (closed form while at most
    one request is in flight, i.e. batch 1, else SimPy), alone, or simpy."""
    if log.L != model.layers:
        raise ValueError(f"work log has {log.L} layers, model {model.name} has {model.layers}")
    _check_size(log, load)
    plan = plan if plan is not None and plan.pp == hw.pp else compile_plan(log, hw.pp)
    dur = durations(plan, model, hw)
    seqs = request_seqs(log.n_seqs, load)
    if engine == "auto":
        engine = "alone" if load.batch == 1 else "simpy"
    merged = None
    if engine == "alone":
        if load.batch != 1:
            raise ValueError("the closed form needs at most one request in flight (batch 1)")
        res = _alone(plan, dur, load, seqs, want_events)
    else:
        serve = _Serve(plan, dur, load, seqs, model, hw, want_events)
        res, merged = serve.run(), serve.merged
    res.plan = plan
    res.extrapolated = beyond_profile(plan, hw, seqs, merged)
    return res


def beyond_profile(plan: Plan, hw, seqs: np.ndarray, merged: dict | None = None) -> list[str]:
    """What of the steps of the requests' sequences (and of the micro-batches `merged` made of them) a
    profile prices beyond its measured grid; empty without a profile."""
    if hw.profile is None:
        return []
    ran = np.zeros(plan.log.n_seqs, bool)
    ran[seqs] = True
    piece = ran[plan.step_seq[plan.piece_step]]
    rows, ctx = plan.piece_rows[piece], plan.piece_ctx[piece]
    heads = plan.head_rows[ran[plan.step_seq]]
    moved = plan.dep_rows[(plan.dep_rows > 0) & ran[plan.step_seq[plan.dep_dst]]]
    extent = merged or {"rows": [], "ctx_per_row": [], "heads": []}
    return hw.profile.extrapolated(np.r_[rows, extent["rows"]], np.r_[ctx / rows, extent["ctx_per_row"]],
                                   np.r_[heads, extent["heads"]], moved if hw.profile.transfer_s is not None else [])


# Memory per simulated token: its commit time, the times it is computed from and its index (four 8-byte
# array entries), and its commit record (a Python tuple of a time and a request id); per request: its
# arrival, start and finish times and its sequence (8 bytes each).
TOKEN_BYTES = 4 * 8 + sys.getsizeof((0.0, 0)) + sys.getsizeof(0.0) + sys.getsizeof(0)
REQUEST_BYTES = 4 * 8


def _check_size(log: WorkLog, load: Load) -> None:
    """The requests' tokens fit in memory, or one line naming --requests, before anything is allocated."""
    n = log.n_seqs if load.requests is None else load.requests
    per_seq = np.asarray(log.counters["tokens"], np.int64)
    tokens = (n // log.n_seqs) * int(per_seq.sum()) + int(per_seq[: n % log.n_seqs].sum())
    check_fits(f"--requests {n}", tokens * TOKEN_BYTES + n * REQUEST_BYTES,
               f"simulating {n:,} requests ({tokens:,} tokens)")


# ---------------------------------------------------------------------------- arrivals

def _poisson_arrivals(load: Load, n: int) -> np.ndarray:
    rng = np.random.default_rng(load.seed)
    return np.cumsum(rng.exponential(1.0 / load.rate, n))


def _alone(plan: Plan, dur: Durations, load: Load, seqs: np.ndarray, want_events: bool) -> DesResult:
    """One request at a time: each request's timeline is its sequence's alone-timeline, shifted."""
    tl = timeline(plan, dur)
    n = len(seqs)
    length = tl.finish[seqs]
    arrival, start, finish = np.zeros(n), np.zeros(n), np.zeros(n)
    poisson = _poisson_arrivals(load, n) if load.arrival == "poisson" else None
    clients = int(load.rate) if load.arrival == "closed" else 0
    prev = 0.0
    for i in range(n):  # FIFO, one in flight
        if poisson is not None:
            arrival[i] = poisson[i]
        elif i >= clients:
            arrival[i] = finish[i - clients]  # that client's previous request
        start[i] = max(arrival[i], prev)
        finish[i] = prev = start[i] + length[i]
    ptr = plan.commit_ptr
    counts = np.diff(ptr)[seqs]
    tok_idx = np.concatenate([np.arange(ptr[q], ptr[q + 1]) for q in seqs]) if n else np.zeros(0, np.int64)
    times = np.repeat(start, counts) + tl.token_time[tok_idx]
    busy = tl.busy[seqs].sum(0)
    res = _result(times, counts, arrival, finish, busy, seqs, "alone")
    if want_events:
        res.events, res.commits = _alone_events(plan, tl, seqs, start), list(zip(times.tolist(), np.repeat(np.arange(n), counts).tolist()))
    return res


def _alone_events(plan: Plan, tl, seqs, start) -> list:
    order = np.argsort(plan.step_seq, kind="stable")
    sptr = np.r_[0, np.cumsum(np.bincount(plan.step_seq, minlength=plan.log.n_seqs))]
    out = []
    for i, q in enumerate(seqs):
        idx = order[sptr[q]: sptr[q + 1]]
        fin = tl.finish[q]
        for j in idx[tl.start[idx] < fin]:
            out.append((int(plan.step_dev[j]), start[i] + tl.start[j], start[i] + min(tl.end[j], fin), (i,), (int(j),)))
    return out


def _result(times, counts, arrival, finish, busy, seqs, engine) -> DesResult:
    """Latencies and utilization from per-token completion times (request by request)."""
    n = len(seqs)
    first = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    prev = np.empty_like(times)
    if len(times):
        prev[1:] = times[:-1]
        prev[first[counts > 0]] = arrival[counts > 0]
    latency = times - prev
    t0 = float(arrival.min()) if n else 0.0
    seconds = float(finish.max()) - t0 if n else 0.0
    tokens = int(counts.sum())
    p50, p99 = (float(x) for x in np.percentile(latency, [50, 99])) if len(latency) else (0.0, 0.0)
    util = [float(b) / seconds if seconds > 0 else 0.0 for b in busy]
    return DesResult(seconds, tokens, tokens / seconds if seconds > 0 else float("inf"), p50, p99, util,
                     [float(b) for b in busy], seqs, arrival, finish, latency, engine)


# ---------------------------------------------------------------------------- the SimPy engine

class _SeqSteps:
    """One sequence's steps in issue order, with local indices, for the event-driven engine."""

    def __init__(self, plan: Plan, dur: Durations, q: int, order, sptr, dorder, dptr):
        glob = order[sptr[q]: sptr[q + 1]]
        self.glob = glob.tolist()
        local = {g: i for i, g in enumerate(self.glob)}
        self.dev = plan.step_dev[glob].tolist()
        self.dur = dur.step[glob].tolist()
        self.deps = [[] for _ in glob]
        for e in dorder[dptr[q]: dptr[q + 1]].tolist():
            self.deps[local[int(plan.dep_dst[e])]].append((local[int(plan.dep_src[e])], float(dur.delay[e])))
        self.queue = [[] for _ in range(plan.pp)]
        for i, g in enumerate(self.dev):
            self.queue[g].append(i)
        self.commits = [local[int(g)] for g in plan.commit_step[plan.commit_ptr[q]: plan.commit_ptr[q + 1]]]
        self.final = self.commits[-1]


class _Request:
    __slots__ = ("rid", "steps", "arrival", "end", "pos", "done", "finish")

    def __init__(self, rid, steps: _SeqSteps, arrival: float, pp: int):
        self.rid, self.steps, self.arrival = rid, steps, arrival
        self.end = [None] * len(steps.glob)
        self.pos = [0] * pp
        self.done, self.finish = False, None

    def head(self, g):
        q = self.steps.queue[g]
        p = self.pos[g]
        return q[p] if p < len(q) else None

    def ready(self, j):
        """When step j's cross-device inputs are all there, or None while one is still running."""
        t = 0.0
        end = self.end
        for src, delay in self.steps.deps[j]:
            e = end[src]
            if e is None:
                return None
            if e + delay > t:
                t = e + delay
        return t


class _Serve:
    """Requests sharing the devices: one SimPy process per device, one for the arrivals."""

    def __init__(self, plan, dur, load: Load, seqs, model, hw, want_events):
        import simpy

        self.simpy = simpy
        self.plan, self.dur, self.load, self.seqs = plan, dur, load, seqs
        self.model, self.hw, self.want_events = model, hw, want_events
        self.env = simpy.Environment()
        self.changed = self.env.event()
        self.inflight: list[_Request] = []
        self.pending: deque = deque()
        self.running = [None] * plan.pp
        self.procs = []
        self.busy = [0.0] * plan.pp
        self.events = [] if want_events else None
        self.requests: list[_Request] = []
        self.next_rid = self.n_done = 0
        order = np.argsort(plan.step_seq, kind="stable")
        S = plan.log.n_seqs
        self._steps_args = (order, np.r_[0, np.cumsum(np.bincount(plan.step_seq, minlength=S))])
        dseq = plan.step_seq[plan.dep_dst]
        self._dep_args = (np.argsort(dseq, kind="stable"), np.r_[0, np.cumsum(np.bincount(dseq, minlength=S))])
        self._cache: dict[int, _SeqSteps] = {}
        self.piece_ptr = np.searchsorted(plan.piece_step, np.arange(plan.n_steps + 1))
        self.micro = load.micro_batch or load.batch
        # the extremes a profile priced in micro-batches (a step alone is priced as planned)
        self.merged = None if hw.profile is None else {"rows": [], "ctx_per_row": [], "heads": []}

    def steps_of(self, q: int) -> _SeqSteps:
        if q not in self._cache:
            self._cache[q] = _SeqSteps(self.plan, self.dur, q, *self._steps_args, *self._dep_args)
        return self._cache[q]

    def signal(self):
        old, self.changed = self.changed, self.env.event()
        old.succeed()

    def arrive(self):
        rid = self.next_rid
        self.next_rid += 1
        r = _Request(rid, self.steps_of(int(self.seqs[rid])), self.env.now, self.plan.pp)
        self.requests.append(r)
        self.pending.append(r)
        self.admit()

    def admit(self):
        while self.pending and len(self.inflight) < self.load.batch:
            self.inflight.append(self.pending.popleft())
        self.signal()

    def complete(self, r: _Request):
        r.done = True
        self.n_done += 1
        self.inflight.remove(r)
        for g, run in enumerate(self.running):  # drop its remaining work: a step running for it alone stops
            if run is not None and all(x is r for x, _ in run[0]):
                self.procs[g].interrupt()
        if self.load.arrival == "closed" and self.next_rid < len(self.seqs):
            self.arrive()
        self.admit()

    def arrivals(self):
        n = len(self.seqs)
        if self.load.arrival == "closed":
            for _ in range(min(int(self.load.rate), n)):
                self.arrive()
            return
        for t in _poisson_arrivals(self.load, n):
            yield self.env.timeout(max(t - self.env.now, 0.0))
            self.arrive()

    def merged_time(self, picks) -> float:
        """One device step for several requests: equal layer spans share a weight load, and the host's
        control of a round drives all of them (as a lockstep batch shares its rounds); exit reads are
        each their own."""
        if len(picks) == 1:
            r, j = picks[0]
            return r.steps.dur[j]
        p = self.plan
        spans: dict[tuple, list] = {}
        heads = rounds = 0
        for r, j in picks:
            g = r.steps.glob[j]
            rounds = max(rounds, int(p.step_rounds[g]))
            for k in range(self.piece_ptr[g], self.piece_ptr[g + 1]):
                acc = spans.setdefault((int(p.piece_first[k]), int(p.piece_n[k])), [0, 0.0, 0])
                acc[0] += int(p.piece_rows[k])
                acc[1] += float(p.piece_ctx[k])
                acc[2] += 1  # one request's sequence: its own KV prefix
            heads += int(p.head_rows[g])
        n = np.array([k[1] for k in spans], float)
        rows = np.array([v[0] for v in spans.values()], float)
        ctx = np.array([v[1] for v in spans.values()], float)
        seqs = np.array([v[2] for v in spans.values()], float)
        if self.merged is not None:
            self._extremes(rows, ctx / rows, heads)
        t = float((n * cost.layer_time(self.model, self.hw, rows, ctx, seqs)).sum())
        if heads and self.hw.refill and n.sum():
            t += self.hw.refill * t / n.sum()  # see plan.py
        t += float(cost.head_time(self.model, self.hw, heads)) if heads else 0.0
        return t + rounds * self.hw.round_s + heads * self.hw.exit_s if self.hw.round_s or self.hw.exit_s else t

    def _extremes(self, rows, ctx_per_row, heads):
        m = self.merged
        m["rows"] = [min([*m["rows"], *rows]), max([*m["rows"], *rows])]
        m["ctx_per_row"] = [min([*m["ctx_per_row"], *ctx_per_row]), max([*m["ctx_per_row"], *ctx_per_row])]
        if heads:
            m["heads"] = [min([*m["heads"], heads]), max([*m["heads"], heads])]

    def device(self, g):
        env = self.env
        while True:
            picks, wake, ready = [], math.inf, 0.0
            eps = 1e-12 * (1.0 + env.now)  # a wake-up timeout may land an ulp early
            for r in self.inflight:
                j = r.head(g)
                if j is None:
                    continue
                t = r.ready(j)
                if t is None:
                    continue
                if t <= env.now + eps:
                    picks.append((r, j))
                    ready = max(ready, t)
                elif t < wake:
                    wake = t
            if len(picks) > self.micro:  # the oldest-ready requests form this step's micro-batch
                picks = sorted(picks, key=lambda p: (p[0].ready(p[1]), p[0].rid))[: self.micro]
                ready = max(p[0].ready(p[1]) for p in picks)
            if not picks:
                evs = [self.changed]
                if wake < math.inf:
                    evs.append(env.timeout(wake - env.now))
                yield env.any_of(evs)
                continue
            start = max(env.now, ready)  # never before an input (times are kept exact, not env.now)
            end = start + self.merged_time(picks)
            self.running[g] = (picks, start)
            try:
                yield env.timeout(end - env.now)
            except self.simpy.Interrupt:  # its only request completed: the rest is dropped
                self._ran(g, start, env.now, picks)
                continue
            self._ran(g, start, end, picks)
            for r, j in picks:
                if not r.done:
                    r.end[j] = end
                    r.pos[g] += 1
            for r, j in picks:
                if not r.done and j == r.steps.final:
                    r.finish = end
                    self.complete(r)
            self.signal()

    def _ran(self, g, start, end, picks):
        self.running[g] = None
        self.busy[g] += end - start
        if self.events is not None:
            self.events.append((g, start, end, tuple(r.rid for r, _ in picks),
                                tuple(r.steps.glob[j] for r, j in picks)))

    def run(self) -> DesResult:
        env = self.env
        self.procs = [env.process(self.device(g)) for g in range(self.plan.pp)]
        env.process(self.arrivals())
        n = len(self.seqs)
        while self.n_done < n:
            if env.peek() == math.inf:  # nothing left to happen: a bug, not a hang
                raise RuntimeError("DES: requests left but no event pending")
            env.step()
        for g, run in enumerate(self.running):  # steps the last completion stopped (their interrupts are not run)
            if run is not None:
                self._ran(g, run[1], max(env.now, run[1]), run[0])
        reqs = sorted(self.requests, key=lambda r: r.rid)
        times = np.array([r.end[c] for r in reqs for c in r.steps.commits], float)
        counts = np.array([len(r.steps.commits) for r in reqs], np.int64)
        arrival = np.array([r.arrival for r in reqs])
        finish = np.array([r.finish for r in reqs])
        res = _result(times, counts, arrival, finish, self.busy, self.seqs, "simpy")
        if self.want_events:
            res.events = self.events
            res.commits = list(zip(times.tolist(), np.repeat(np.arange(n), counts).tolist()))
        return res


# ---------------------------------------------------------------------------- Chrome trace

def chrome_trace(res: DesResult, hw, path: str) -> None:
    """Write the device activity of a run (simulate(..., want_events=True)) as Chrome/Perfetto JSON."""
    plan, us = res.plan, 1e6
    ev = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"DES {hw.gpu.name} pp={hw.pp} tp={hw.tp}"}}]
    for g in range(plan.pp):
        gpus = f"GPU {g * hw.tp}" if hw.tp == 1 else f"GPUs {g * hw.tp}-{(g + 1) * hw.tp - 1}"
        ev.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": g, "args": {"name": f"stage {g} ({gpus})"}})
    ev.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": plan.pp, "args": {"name": "tokens"}})
    pptr = np.searchsorted(plan.piece_step, np.arange(plan.n_steps + 1))
    for g, start, end, rids, steps in res.events:
        lo = min(int(plan.piece_first[pptr[s]: pptr[s + 1]].min()) for s in steps)
        hi = max(int((plan.piece_first[pptr[s]: pptr[s + 1]] + plan.piece_n[pptr[s]: pptr[s + 1]] - 1).max())
                 for s in steps)
        rows = int(sum(plan.piece_rows[pptr[s]: pptr[s + 1]].sum() for s in steps))
        heads = int(sum(plan.head_rows[s] for s in steps))
        name = (f"L{lo}" if lo == hi else f"L{lo}-{hi}") + (" +head" if heads else "")
        ev.append({"name": name, "cat": "step", "ph": "X", "pid": 1, "tid": int(g), "ts": start * us,
                   "dur": (end - start) * us, "args": {"requests": list(rids), "rows": rows, "exit_reads": heads}})
    for t, rid in res.commits:
        ev.append({"name": f"token r{rid}", "cat": "commit", "ph": "i", "s": "t", "pid": 1, "tid": plan.pp,
                   "ts": t * us})
    try:
        with open(path, "w") as f:
            json.dump({"traceEvents": ev, "displayTimeUnit": "ms"}, f)
    except OSError as e:
        raise UserError(f"--trace-out {path}: cannot write ({e.strerror})") from None

