"""Trace replay: the lattice core driven by a recorded trace instead of a model.

On the true path (the committed tokens), exit tokens and confidences are the trace's own. A node off
the true path can never turn out right, but it must not *look* different to a policy (DESIGN.md
section 5): its exit token changes between consecutive exit depths at the rate the true path shows
in the same trace at those depths (so duplicate guesses merge as often as in a real engine), and its
confidence is drawn, seeded, from the trace's own confidences at that depth. Its tokens are fresh ids
at or above the vocabulary size, so they never match anything the true path holds.
"""
from __future__ import annotations

import json

import numpy as np

from . import lattice as core
from .errors import UserError
from .policies import AR, DEX, PRIORITIES, Adaptive, LayerSkip
from .trace import Trace, load_trace

POLICY_NAMES = ("ar", "layerskip", "adaptive", "oracle-select", "dex")
DEFAULT_DRAFT = 4
ORACLE_DRAFTS = (1, 2, 3, 4, 6, 8)
ON_PATH = 1


class ReplayExecutor:
    """Answers the core's exit reads from a trace. `tag` of a node is ON_PATH or 0."""

    can_jump = True

    def __init__(self, trace: Trace, seed: int = 0):
        self.trace = trace
        self.rng = np.random.default_rng(seed)
        self.col = np.full(trace.L + 1, -1, np.int64)  # exit depth -> trace column
        self.col[trace.depths] = np.arange(len(trace.depths))
        self.offset = trace.seq_offsets[:-1].astype(np.int64)
        self.length = np.diff(trace.seq_offsets).astype(np.int64)
        self.prompt_len = trace.prompt_len.astype(np.int64)
        self.next_fresh = int(trace.vocab)
        # log P(the true path's token at column c is none of the earlier columns'), cumulated.
        et = trace.exit_tokens
        log_stay = np.zeros(et.shape[1])
        for c in range(1, et.shape[1]):
            novel = (et[:, c, None] != et[:, :c]).all(1).mean()
            log_stay[c] = np.log1p(-min(novel, 1 - 1e-12))
        self.cum_log_stay = np.concatenate([[0.0], np.cumsum(log_stay)])  # [c + 1]: columns 1..c

    def row(self, lat, s, j):
        """Row of node (s, j) within its sequence: the index of the token its state predicts."""
        return lat.pos[s, j] - self.prompt_len[s] + 1

    def compute(self, lat, s, j, layers):
        pass  # a trace already holds what the computation would give

    def spawned(self, lat, s, j):
        p = lat.parent[s, j]
        root = p < 0
        pp = np.maximum(p, 0)
        prow = self.row(lat, s, pp)
        in_seq = prow + 1 < self.length[s]
        final = self.trace.final[self.offset[s] + np.minimum(prow, self.length[s] - 1)]
        on = (lat.tag[s, pp] == ON_PATH) & in_seq & (lat.token[s, j] == final)
        lat.tag[s, j] = np.where(root | on, ON_PATH, 0)

    def read_exits(self, lat, s, j):
        d = lat.depth[s, j]
        c = self.col[d]
        r = self.row(lat, s, j)
        on = (lat.tag[s, j] == ON_PATH) & (r < self.length[s])
        g = self.offset[s] + np.clip(r, 0, self.length[s] - 1)
        tok = self.trace.exit_tokens[g, c].astype(np.int64)
        conf = self.trace.exit_conf[g, c].astype(np.float32)
        off = np.nonzero(~on)[0]
        if len(off):
            tok[off], conf[off] = self._off_path(lat, s[off], j[off], c[off])
        return tok, conf

    def _off_path(self, lat, s, j, c):
        prev = lat.exit_token[s, j]
        prev_d = lat.prev_exit[lat.depth[s, j]]
        prev_c = np.where(prev_d > 0, self.col[prev_d], -1)
        stay = np.exp(self.cum_log_stay[c + 1] - self.cum_log_stay[prev_c + 1])
        new = (prev == core.NO_TOKEN) | (self.rng.random(len(s)) >= stay)
        tok = prev.copy()
        tok[new] = self.next_fresh + np.arange(new.sum())
        self.next_fresh += int(new.sum())
        rows = self.rng.integers(0, len(self.trace.exit_conf), len(s))
        return tok, self.trace.exit_conf[rows, c].astype(np.float32)



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
    bad = np.setdiff1d(policy.exits, trace.depths)
    if len(bad):
        raise UserError(f"{trace.path or 'trace'}: exit depth {int(bad[0])} is not recorded in field 'depths' "
                        f"(recorded: {','.join(map(str, trace.depths))})")
    lengths = np.diff(trace.seq_offsets)
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=lengths, record_events=record_events)
    return core.run(lat, policy, ReplayExecutor(trace, seed))


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


def oracle_select(trace: Trace, *, exits=None, drafts=ORACLE_DRAFTS, seed: int = 0, objective=None) -> dict:
    """The best fixed depth in hindsight: LayerSkip at each exit depth of E (and each draft length),
    keeping the one that minimises `objective(result)` (default: weight loads, one device's cost)."""
    objective = objective or (lambda r: r["weight_loads"])
    exits = trace.depths if exits is None else np.asarray(exits)
    best = None
    for e in exits[exits < trace.L]:
        for g in drafts:
            policy = LayerSkip(trace.L, int(e), int(g))
            r = result(trace, replay(trace, policy, seed=seed), policy)
            if best is None or objective(r) < objective(best):
                best = r
    if best is None:  # E = {L}: nothing to select but full depth
        policy = AR(trace.L)
        best = result(trace, replay(trace, policy, seed=seed), policy)
    best = {**best, "policy": "oracle-select", "oracle_policy": best["policy"]}
    return best


# ---------------------------------------------------------------------------- CLI

def add_policy_flags(p) -> None:
    p.add_argument("--policy", default="dex", help=f"one of {', '.join(POLICY_NAMES)}")
    p.add_argument("--explorers", "-k", type=int, default=4, help="dex: explorers per round")
    p.add_argument("--exits", default="all", help="exit set E: all | every:N | d1,d2,... (L always included)")
    p.add_argument("--exit", type=int, default=None, help="layerskip: the fixed exit depth e (default L/2)")
    p.add_argument("--draft", type=int, default=None,
                   help=f"layerskip: draft length gamma (default {DEFAULT_DRAFT}; oracle-select: searched)")
    p.add_argument("--threshold", type=float, default=0.9, help="adaptive: exit confidence threshold tau")
    p.add_argument("--buffer", type=int, default=8, help="dex, adaptive: most live branches B")
    p.add_argument("--priority", default="eager", help=f"dex: {', '.join(PRIORITIES)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the off-path exit tokens and confidences")


def policy_from_args(args, trace: Trace):
    from .synth import parse_depths

    exits = parse_depths(args.exits, trace.L, flag="--exits")
    if args.policy == "oracle-select":
        return None, exits
    return make_policy(args.policy, trace.L, exits=exits, explorers=args.explorers, buffer=args.buffer,
                       priority=args.priority, exit=args.exit, draft=args.draft, threshold=args.threshold), exits


def cmd_replay(args) -> int:
    trace = load_trace(args.trace)
    policy, exits = policy_from_args(args, trace)
    if policy is None:
        drafts = ORACLE_DRAFTS if args.draft is None else (args.draft,)
        out = oracle_select(trace, exits=exits, drafts=drafts, seed=args.seed)
    else:
        lat = replay(trace, policy, seed=args.seed, record_events=bool(args.events))
        out = result(trace, lat, policy)
        if args.events:
            save_events(args.events, lat, trace, policy)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")
    return 0


def save_events(path: str, lat: core.Lattice, trace: Trace, policy) -> None:
    meta = {"format": f"dex-events/{core.EVENTS_VERSION}", "L": trace.L, "trace": trace.path,
            "policy": policy.name, **policy_params(policy), "kinds": list(core.EVENT_NAMES)}
    try:
        np.savez_compressed(path, events=lat.events(), meta=np.array(json.dumps(meta)))
    except OSError as e:
        raise UserError(f"--events {path}: cannot write ({e.strerror})")


def register(sub) -> None:
    p = sub.add_parser("replay", help="replay a trace under a policy and print its counters")
    p.add_argument("--trace", required=True, help="trace file (.npz, DESIGN.md section 5)")
    add_policy_flags(p)
    p.add_argument("--events", default=None, help="write the event log to this .npz")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_replay)
