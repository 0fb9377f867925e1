"""Trace replay: the lattice core driven by a recorded trace instead of a model.

On the true path (the committed tokens), exit tokens and confidences are the trace's own. A node off
the true path can never turn out right, but it must not *look* different to a policy (DESIGN.md
section 5): its exit token changes between consecutive exit depths at the rate the true path shows
in the same trace at those depths (so duplicate guesses merge as often as in a real engine), and its
confidence is drawn, seeded, from the trace's own confidences at that depth. Its tokens are fresh ids
at or above the vocabulary size, so they never match anything the true path holds.

With `--gpu` a replay is also priced (dexsim/pricing.py): simulated seconds, tokens/s and the speedup
over `ar` on the same trace and hardware. With `--model` naming another model than the trace's, the
trace's exit depths are mapped onto that model by relative depth (`rescale_depths`).

With `--scheduler des` the same replay is timed by the discrete-event simulator instead (dexsim/des.py:
pipeline stages running asynchronously, serving load with `--requests`/`--arrival`, per-token latency
percentiles, per-stage utilization, `--trace-out` Chrome trace); tokens and counters are unchanged.
"""
from __future__ import annotations

import json

import numpy as np
from numba import njit
from numba.experimental import structref

from . import lattice as core
from . import pricing
from .catalog import ModelSpec, get_model
from .errors import UserError
from .lattice import NO_TOKEN
from .policies import AR, DEX, PRIORITIES, Adaptive, LayerSkip, select_seq, wants_node
from .trace import Trace, load_trace, trace_checksum

POLICY_NAMES = ("ar", "layerskip", "adaptive", "oracle-select", "dex")
DEFAULT_DRAFT = 4
ORACLE_DRAFTS = (1, 2, 3, 4, 6, 8)
ON_PATH = 1
SCHEDULERS = ("lockstep", "des")


@structref.register
class _ReplayDataType(core.StructType):
    pass


class ReplayData(structref.StructRefProxy):
    """What the compiled replay reads (and, with per_layer, counts into), as one reference:
    col [L+1] (exit depth -> trace column), offset, length, prompt_len [S] (each sequence's first
    row, tokens and prompt length), final [N], exit_tokens [N, D], exit_conf [N, D] (float32: exactly
    the trace's float16 values), cum_log_stay [D+1] (log P(the true path's token at column c is none
    of the earlier columns'), cumulated over columns 1..c), vocab, seed (uint64), per_layer, and
    load_diff, rows_diff [L+2] (difference arrays over layers of weight loads and node-layers)."""


_REPLAY_FIELDS = ("col", "offset", "length", "prompt_len", "final", "exit_tokens", "exit_conf", "cum_log_stay",
                  "vocab", "seed", "per_layer", "load_diff", "rows_diff")
ReplayData = core.define_struct(ReplayData, _ReplayDataType, _REPLAY_FIELDS)


class ReplayExecutor:
    """Answers the core's exit reads from a trace. `tag` of a node is ON_PATH or 0.

    Its rules are compiled (`read_node`, `spawned_node`, `count_layers`), so with a built-in policy
    the whole replay runs as one compiled loop (`run_compiled`); the methods below serve the core's
    Python rounds (other policies, subclasses that change what an exit reads)."""

    can_jump = True

    def __init__(self, trace: Trace, seed: int = 0, per_layer: bool = False):
        self.trace = trace
        # Per-layer weight loads and rows (difference arrays over layers 0..L+1), which the core's
        # counters keep only summed over layers: pipeline pricing needs them at stage boundaries.
        # Off by default: it costs a little on every round.
        self.per_layer = per_layer
        self.seed = seed
        col = np.full(trace.L + 1, -1, np.int64)
        col[trace.depths] = np.arange(len(trace.depths))
        et = np.ascontiguousarray(trace.exit_tokens, np.int64)
        log_stay = np.log1p(-np.minimum(_novelty(et), 1 - 1e-12))
        log_stay[0] = 0.0
        self._fields = f = dict(
            col=col, offset=trace.seq_offsets[:-1].astype(np.int64), length=np.diff(trace.seq_offsets).astype(np.int64),
            prompt_len=trace.prompt_len.astype(np.int64), final=trace.final.astype(np.int64),
            exit_tokens=et, exit_conf=trace.exit_conf.astype(np.float32),
            cum_log_stay=np.concatenate([[0.0], np.cumsum(log_stay)]), vocab=int(trace.vocab),
            seed=np.uint64(seed), per_layer=bool(per_layer),
            load_diff=np.zeros(trace.L + 2, np.int64), rows_diff=np.zeros(trace.L + 2, np.int64))
        self.rx = ReplayData(*(f[k] for k in _REPLAY_FIELDS))

    def run_compiled(self, lat, policy) -> None:
        """Every round of every sequence in compiled code (a subclass may change what an exit reads:
        it runs through the Python rounds instead)."""
        if type(self) is ReplayExecutor:
            _replay_rounds(lat.st, policy.params, self.rx)

    def compute(self, lat, s, j, layers):
        # a trace already holds what the computation would give; only count, if asked
        if self.per_layer and len(s):
            chosen = np.zeros((lat.S, lat.M), bool)
            chosen[s, j] = True
            rounds = np.zeros(lat.S, np.int64)
            rounds[s] = layers
            _count_layers_all(lat.st, self.rx, chosen, rounds)

    def layer_counts(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """([L+1] weight loads, [L+1] node-layers) at each layer l (index 0 unused), if counted."""
        if not self.per_layer:
            return None, None
        return np.cumsum(self._fields["load_diff"])[:-1], np.cumsum(self._fields["rows_diff"])[:-1]

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
    if prev == NO_TOKEN or _uniform(h, 1) >= stay:
        tok = rx.vocab + node * (st.L + 1) + d  # unique per node and depth
    row = np.int64(_uniform(h, 2) * len(rx.exit_conf))
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
def count_layers(st, rx, s, chosen, m):
    """Per-layer counts: chosen nodes of s at one depth share a weight load at each of their next m
    layers (the core's own grouping)."""
    for j in range(st.M):
        if chosen[j]:
            d = st.depth[s, j]
            rx.rows_diff[d + 1] += 1
            rx.rows_diff[d + m + 1] -= 1
            if core._first_at_depth(st, s, chosen, j):
                rx.load_diff[d + 1] += 1
                rx.load_diff[d + m + 1] -= 1


@njit(cache=True)
def _replay_rounds(st, pol, rx):
    """The core's `step` for one sequence at a time, every round, with this executor: the same
    transitions, never leaving compiled code."""
    chosen = np.zeros(st.M, np.bool_)
    req_j = np.empty(st.M, np.int64)
    req_tok = np.empty(st.M, np.int64)
    for s in range(len(st.n)):
        while st.active[s]:
            m = select_seq(st, s, pol, chosen)
            for j in range(st.M):  # jump to the first exit depth of any chosen node
                if chosen[j]:
                    m = min(m, st.next_exit[st.depth[s, j]] - st.depth[s, j])
            if rx.per_layer:
                count_layers(st, rx, s, chosen, m)
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


@njit(cache=True)
def _count_layers_all(st, rx, chosen, rounds):
    for s in range(len(st.n)):
        count_layers(st, rx, s, chosen[s], rounds[s])


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


def make_policy(name: str, L: int, *, exits=None, explorers: int = 4, buffer: int = 8, priority: str = "eager",
                exit: int | None = None, draft: int | None = None, threshold: float = 0.9):
    """A policy object from its name and flags. `exits` defaults to every layer."""
    exits = np.arange(1, L + 1) if exits is None else np.asarray(exits)
    if name == "ar":
        return AR(L)
    if name == "layerskip":
        return LayerSkip(L, exit if exit is not None else L // 2, DEFAULT_DRAFT if draft is None else draft)
    if name == "adaptive":
        return Adaptive(L, exits, threshold, buffer)
    if name == "dex":
        return DEX(L, exits, explorers, buffer, priority)
    raise UserError(f"--policy {name!r}: unknown (known: {', '.join(POLICY_NAMES)})")


def replay(trace: Trace, policy, *, seed: int = 0, record_events: bool = False) -> core.Lattice:
    """Run `policy` over every sequence of `trace` at once; returns the finished lattice."""
    return _run(trace, policy, ReplayExecutor(trace, seed), record_events)


def replay_tally(trace: Trace, policy, *, seed: int = 0, per_layer: bool = False,
                 record_events: bool = False) -> tuple[core.Lattice, pricing.Tally]:
    """`replay`, plus the Tally that prices it (with per-layer counts for pipeline pricing if asked)."""
    executor = ReplayExecutor(trace, seed, per_layer=per_layer)
    lat = _run(trace, policy, executor, record_events)
    return lat, pricing.tally_of(lat, *executor.layer_counts())


def _run(trace: Trace, policy, executor: ReplayExecutor, record_events: bool) -> core.Lattice:
    bad = np.setdiff1d(policy.exits, trace.depths)
    if len(bad):
        raise UserError(f"{trace.path or 'trace'}: exit depth {int(bad[0])} is not recorded in field 'depths' "
                        f"(recorded: {','.join(map(str, trace.depths))})")
    lengths = np.diff(trace.seq_offsets)
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=lengths, record_events=record_events)
    return core.run(lat, policy, executor)


def output_matches(trace: Trace, lat: core.Lattice) -> bool:
    """The replay form of losslessness: every sequence committed exactly the trace's final tokens."""
    for s in range(trace.n_seqs):
        sl = slice(trace.seq_offsets[s], trace.seq_offsets[s + 1])
        n = sl.stop - sl.start
        if not np.array_equal(lat.output[s, :n], trace.final[sl]) or (lat.output[s, n:] != core.NO_TOKEN).any():
            return False
    return True


def result(trace: Trace, lat: core.Lattice, policy) -> dict:
    """One replay's figures: the counters, summed over sequences, and the losslessness check."""
    out = {"trace": trace.path, "policy": policy.name, **policy_params(policy), **lat.counters.totals()}
    out["output_matches_trace"] = output_matches(trace, lat)
    return out


def policy_params(policy) -> dict:
    p = {"explorers": int(policy.explorers), "buffer": int(policy.buffer), "exits": _exits_str(policy.exits)}
    for k in ("priority", "exit", "draft", "threshold"):
        if hasattr(policy, k):
            p[k] = getattr(policy, k)
    return p


def _exits_str(exits) -> str:
    return ",".join(map(str, np.asarray(exits).tolist()))


def oracle_candidates(trace: Trace, *, exits=None, drafts=ORACLE_DRAFTS, seed: int = 0,
                      per_layer: bool = False) -> list[tuple[dict, pricing.Tally]]:
    """Every fixed-depth policy oracle-select chooses among: AR (the fixed depth L) and LayerSkip at
    each exit depth of E below L with each draft length, each replayed once (result and Tally)."""
    out = []
    for policy in oracle_policies(trace, exits, drafts):
        lat, tally = replay_tally(trace, policy, seed=seed, per_layer=per_layer)
        out.append((result(trace, lat, policy), tally))
    return out


def oracle_policies(trace: Trace, exits=None, drafts=ORACLE_DRAFTS) -> list:
    """AR (the fixed depth L) and LayerSkip at each exit depth of E below L with each draft length."""
    exits = trace.depths if exits is None else np.asarray(exits)
    return [AR(trace.L)] + [LayerSkip(trace.L, int(e), int(g)) for e in exits[exits < trace.L] for g in drafts]


def oracle_pick(candidates, objective) -> tuple[dict, pricing.Tally]:
    """The candidate minimising `objective(result, tally)` (the first such on ties), as oracle-select."""
    best, tally = min(candidates, key=lambda c: objective(*c))
    return {**best, "policy": "oracle-select", "oracle_policy": best["policy"]}, tally


def oracle_select(trace: Trace, *, exits=None, drafts=ORACLE_DRAFTS, seed: int = 0, objective=None) -> dict:
    """The best fixed depth in hindsight: AR or LayerSkip at one exit depth of E (and one draft length),
    whichever minimises `objective(result)` (default: weight loads, one device's cost)."""
    objective = objective or (lambda r: r["weight_loads"])
    cands = oracle_candidates(trace, exits=exits, drafts=drafts, seed=seed)
    return oracle_pick(cands, lambda r, t: objective(r))[0]


# ---------------------------------------------------------------------------- depth rescaling

def rescale_depths(trace: Trace, model: ModelSpec) -> Trace:
    """The trace mapped onto `model` by relative depth: L' = model.layers, depth d -> round(d L'/L)
    (halves up, at least 1). Depths that land together keep the deepest original column, the best
    information about that relative depth; L maps to L'. Final tokens are unchanged, so a replay of
    the result is lossless exactly when one of the original is. Token ids stay the original model's,
    so `arch.vocab` keeps the original vocabulary (the replay's off-path ids start above it); the
    cost model prices `model` from the catalog."""
    L, L2 = trace.L, model.layers
    d = trace.depths.astype(np.int64)
    mapped = np.maximum((2 * d * L2 + L) // (2 * L), 1)  # integer round-half-up of d * L2 / L
    cols = np.nonzero(np.r_[mapped[1:] != mapped[:-1], True])[0]  # last (deepest) of each run
    meta = {**trace.meta, "model": model.name, "arch": {**model.arch(), "vocab": trace.vocab},
            "depth_rescaled_from": {"model": trace.meta.get("model"), "depths": d.tolist()}}
    out = Trace(depths=mapped[cols].astype(np.int16), final=trace.final,
                exit_tokens=np.ascontiguousarray(trace.exit_tokens[:, cols]),
                exit_conf=np.ascontiguousarray(trace.exit_conf[:, cols]),
                seq_offsets=trace.seq_offsets, prompt_len=trace.prompt_len, meta=meta, path=trace.path)
    out.meta["sha256"] = trace_checksum(out)
    return out


def for_model(trace: Trace, model_name: str | None, flag: str = "--model") -> tuple[Trace, bool]:
    """The trace to replay for `model_name` (None: the trace's own model) and whether it was rescaled."""
    if model_name is None or model_name == trace.meta.get("model"):
        return trace, False
    try:
        model = get_model(model_name)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None
    return rescale_depths(trace, model), True


# ---------------------------------------------------------------------------- CLI

def add_policy_flags(p) -> None:
    p.add_argument("--policy", default="dex", help=f"one of {', '.join(POLICY_NAMES)}")
    p.add_argument("--explorers", "-k", type=int, default=4, help="dex: explorers per round")
    p.add_argument("--exits", default="all", help="exit set E: all | every:N | d1,d2,... (L always included); "
                   "with --model rescaling, all = every mapped depth")
    p.add_argument("--exit", type=int, default=None, help="layerskip: the fixed exit depth e (default L/2)")
    p.add_argument("--draft", type=int, default=None,
                   help=f"layerskip: draft length gamma (default {DEFAULT_DRAFT}; oracle-select: searched)")
    p.add_argument("--threshold", type=float, default=0.9, help="adaptive: exit confidence threshold tau")
    p.add_argument("--buffer", type=int, default=8, help="dex, adaptive: most live branches B")
    p.add_argument("--priority", default="eager", help=f"dex: {', '.join(PRIORITIES)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the off-path exit tokens and confidences")


def add_hardware_flags(p) -> None:
    p.add_argument("--model", default=None,
                   help="catalog model to price (default: the trace's own); another model's depths are "
                        "mapped by relative depth")
    p.add_argument("--gpu", default=None, help="price the replay on this catalog GPU (`python -m dexsim gpus`)")
    p.add_argument("--tp", type=int, default=None, help="with --gpu: tensor-parallel GPUs per stage (default 1)")
    p.add_argument("--pp", type=int, default=None, help="with --gpu: pipeline stages (default 1)")
    p.add_argument("--batch", type=int, default=None,
                   help="with --gpu: sequences decoded together in lockstep (default 1); under --scheduler des, "
                        "the most requests in flight")


def add_scheduler_flags(p) -> None:
    p.add_argument("--scheduler", default="lockstep", choices=SCHEDULERS,
                   help="lockstep: one device, rounds priced in closed form; des: discrete-event simulation of "
                        "pipeline stages and serving load (dexsim/des.py; needs --gpu)")
    p.add_argument("--requests", type=int, default=None,
                   help="des: requests to decode (request i decodes trace sequence i mod S; default: each sequence once)")
    p.add_argument("--arrival", default=None,
                   help="des: closed[:CLIENTS] (default closed:BATCH) or poisson:QPS (seeded by --seed); "
                        "--batch is then the most requests in flight")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="des: most requests in one device step (default: every ready one; ceil(batch/pp) "
                        "splits a batch across pipeline stages GPipe-style)")
    p.add_argument("--trace-out", default=None, help="des: write device activity as Chrome/Perfetto trace JSON")


def _check_scheduler_flags(args, priced_on) -> None:
    if args.scheduler != "des":
        given = [f for f in ("requests", "arrival", "micro_batch", "trace_out") if getattr(args, f) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')}: needs --scheduler des")
    elif priced_on is None:
        raise UserError("--scheduler des: needs --gpu")


def policy_from_args(args, trace: Trace, rescaled: bool = False):
    from .synth import parse_depths

    if rescaled and args.exits == "all":  # every depth the trace maps onto the model, not every layer
        exits = trace.depths
    else:
        exits = parse_depths(args.exits, trace.L, flag="--exits")
    if args.policy == "oracle-select":
        return None, exits
    return make_policy(args.policy, trace.L, exits=exits, explorers=args.explorers, buffer=args.buffer,
                       priority=args.priority, exit=args.exit, draft=args.draft, threshold=args.threshold), exits


def hardware_from_args(args, trace: Trace):
    """(model, Hardware) to price on, or None without --gpu; bad names or configurations are UserErrors."""
    if args.gpu is None:
        given = [f for f in ("tp", "pp", "batch") if getattr(args, f) is not None]
        if given:
            raise UserError(f"--{given[0]}: needs --gpu")
        return None
    name = args.model or trace.meta.get("model")
    flag = "--model" if args.model else f"{trace.path}: meta.model"
    tp, pp, batch = (1 if v is None else v for v in (args.tp, args.pp, args.batch))
    return pricing.hardware(name, args.gpu, tp, pp, batch, model_flag=flag, heads=trace.meta.get("heads", "lens"))


def cmd_replay(args) -> int:
    trace = load_trace(args.trace)
    trace, rescaled = for_model(trace, args.model)
    priced_on = hardware_from_args(args, trace)
    policy, exits = policy_from_args(args, trace, rescaled)
    _check_scheduler_flags(args, priced_on)
    if args.scheduler == "des":
        return _print(args, replay_des(args, trace, rescaled, priced_on, policy, exits))
    per_layer = priced_on is not None and priced_on[1].pp > 1
    if policy is None:
        drafts = ORACLE_DRAFTS if args.draft is None else (args.draft,)
        cands = oracle_candidates(trace, exits=exits, drafts=drafts, seed=args.seed, per_layer=per_layer)
        if priced_on is None:
            out, tally = oracle_pick(cands, lambda r, t: r["weight_loads"])
        else:  # the best fixed depth on this hardware: the fewest simulated seconds
            out, tally = oracle_pick(cands, lambda r, t: pricing.price(t, *priced_on)["sim_seconds"])
    else:
        lat, tally = replay_tally(trace, policy, seed=args.seed, per_layer=per_layer,
                                  record_events=bool(args.events))
        out = result(trace, lat, policy)
        if args.events:
            save_events(args.events, lat, trace, policy)
    out["model"], out["depth_rescaled"] = trace.meta.get("model"), rescaled
    if priced_on is not None:
        model, hw = priced_on
        _, ar_tally = replay_tally(trace, AR(trace.L), seed=args.seed, per_layer=per_layer)
        out.update(gpu=hw.gpu.name, tp=hw.tp, pp=hw.pp, batch=hw.batch,
                   **pricing.priced_fields(tally, ar_tally, model, hw))
    return _print(args, out)


def _print(args, out: dict) -> int:
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")
    return 0


def replay_des(args, trace: Trace, rescaled: bool, priced_on, policy, exits) -> dict:
    """`replay --scheduler des`: the same replay, its work timed by the discrete-event simulator. The
    lattice counters are those of the simulated requests (each counts its sequence's)."""
    from . import des
    from .des_record import record

    model, hw = priced_on
    load = des.parse_load(args.arrival, args.requests, hw.batch, args.seed, micro_batch=args.micro_batch)
    pps = (hw.pp,)
    want = bool(args.trace_out)
    if policy is None:  # oracle-select: the candidate with the fewest simulated seconds
        drafts = ORACLE_DRAFTS if args.draft is None else (args.draft,)
        best = None
        for cand in oracle_policies(trace, exits, drafts):
            lat, _, log = record(trace, cand, seed=args.seed, pps=pps)
            res = des.simulate(log, model, hw, load, want_events=want)
            if best is None or res.sim_seconds < best[2].sim_seconds:
                best = (result(trace, lat, cand), log, res)
        out, log, res = best
        out = {**out, "policy": "oracle-select", "oracle_policy": out["policy"]}
    else:
        lat, _, log = record(trace, policy, seed=args.seed, pps=pps, record_events=bool(args.events))
        out = result(trace, lat, policy)
        if args.events:
            save_events(args.events, lat, trace, policy)
        res = des.simulate(log, model, hw, load, want_events=want)
    _, _, ar_log = record(trace, AR(trace.L), seed=args.seed, pps=pps)
    ar = des.simulate(ar_log, model, hw, load)
    out.update(des.request_counters(log, load))
    out["model"], out["depth_rescaled"] = trace.meta.get("model"), rescaled
    out.update(gpu=hw.gpu.name, tp=hw.tp, pp=hw.pp, batch=hw.batch, scheduler="des",
               requests=len(res.request_seqs), arrival=load.spec(), **res.fields())
    if load.micro_batch is not None:
        out["micro_batch"] = load.micro_batch
    out["speedup_vs_ar"] = res.tokens_per_s / ar.tokens_per_s
    if want:
        des.chrome_trace(res, hw, args.trace_out)
    return out


def save_events(path: str, lat: core.Lattice, trace: Trace, policy) -> None:
    meta = {"format": f"dex-events/{core.EVENTS_VERSION}", "L": trace.L, "trace": trace.path,
            "policy": policy.name, **policy_params(policy), "kinds": list(core.EVENT_NAMES)}
    try:
        np.savez_compressed(path, events=lat.events(), meta=np.array(json.dumps(meta)))
    except OSError as e:
        raise UserError(f"--events {path}: cannot write ({e.strerror})")


def register(sub) -> None:
    p = sub.add_parser("replay", help="replay a trace under a policy and print its counters (priced with --gpu)")
    p.add_argument("--trace", required=True, help="trace file (.npz, DESIGN.md section 5)")
    add_policy_flags(p)
    add_hardware_flags(p)
    add_scheduler_flags(p)
    p.add_argument("--events", default=None, help="write the event log to this .npz")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_replay)
