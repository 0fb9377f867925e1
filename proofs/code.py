"""The code, checked against the proved rules: `python -m proofs`' group `code`.

The theorems are about the transition relation of `fsm`. Here the real `dexsim` core runs (every
policy of the registry that has a policy object, several sequences side by side) and every transition
it records is checked against that same relation (the rule functions of `fsm`, read concretely by a
`conformance.Mirror`): the move's guard holds (a refused move names the guard conjunct it breaks), every
invariant clause holds after it (a broken one is named: theorem and clause), and what the event
recorded (depth, position, token, parent's depth at a spawn, the committed token) is what the rules'
state says. A sample of the moves (the first of each kind in every run, then every `Z3_EVERY`-th) is
checked once more in the Z3 reading of the rules (`conformance.z3_agrees`): the Z3 guard holds, the Z3
post-state is the recorded one and satisfies every clause read in Z3.

Two kinds of run:

- `herbrand`: the core's Python rounds with `conformance.HerbrandExecutor` (free states, pseudo-random
  heads, greedy and Gumbel, jumps on and off); the mirror's state, retained states and KV caches
  included, must equal the core's after every round (`conformance.run`).
- `replay`: the compiled trace replay (`dexsim.replay.executor`, its one compiled loop), on the bundled
  traces (their first sequences, cut to a few tokens) and on random tiny-vocabulary traces, its event
  log cut into moves afterwards. The model is a `TraceModel`: on the true path its heads are the
  trace's (so "C = ar(k)" says the replay commits the trace's final tokens); off it, where the replay
  synthesizes tokens keyed by node (DESIGN.md section 5), a head answers what the replay read there
  (no two live nodes share a path, so this is one head function for every live lattice).

Sizes are chosen so the whole group takes about 30 s of one core (`jobs`): every policy on each
random trace and in the herbrand runs, one policy per bundled trace (in turn, so each is run on one)."""
from __future__ import annotations

import glob
import os
import time

import numpy as np

from dexsim.core import lattice as core
from dexsim.core.params import PRIORITIES
from dexsim.core.registry import make_policy, names
from dexsim.replay.executor import output_matches, replay
from dexsim.traces.format import Trace, load_trace
from dexsim.traces.transforms import first_seqs, first_tokens

from . import conformance as cf
from .kernel import Result
from .model import ConcreteModel

Z3_EVERY = 250  # and every n-th move of a run (a Z3 check costs 0.1-0.5 s: a sample, not every move)
SEQS = 3  # sequences side by side in a herbrand run and on a random trace
BUNDLED_SEQS, BUNDLED_TOKENS = 3, 5  # a bundled trace's first sequences, cut to this many tokens each
# (L = 30 or 32 and prompts of ~100 tokens: about 3 ms a move in the mirror, so one policy per file)
TRACES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "traces")


def configs(L: int, depths) -> list[tuple[str, dict]]:
    """Every policy with a policy object, dex under each priority, with small counts (buffers fill,
    explorers run short, evictions happen)."""
    out = []
    for name in names(hindsight=False):
        if name == "dex":
            out += [("dex", dict(explorers=k, buffer=b, priority=p)) for p, k, b in
                    zip(PRIORITIES, (2, 3, 2, 2), (3, 2, 2, 3))]
        elif name == "layerskip":
            out.append((name, dict(exit=int(depths[len(depths) // 2 - 1]) if len(depths) > 1 else L, draft=2)))
        elif name == "adaptive":
            out.append((name, dict(threshold=0.4, buffer=2)))
        else:
            out.append((name, {}))
    return out


def _policy(name: str, params: dict, L: int, exits, depths):
    return make_policy(name, L, exits=exits, depths=depths, **params)


def _label(name: str, params: dict) -> str:
    return " ".join([name] + [f"{k}={v}" for k, v in params.items()])


# ------------------------------------------------------------------------------- herbrand runs

def herbrand_job(seed: int) -> list[Result]:
    """Every policy on L = 4 with three sequences side by side (prompts, heads and limits differ;
    one stops at EOS), greedy and Gumbel, with and without jumps."""
    rng = np.random.default_rng(seed)
    L, exits = 4, [1, 2, 3, 4]
    out = []
    for i, (name, params) in enumerate(configs(L, exits)):
        t = time.perf_counter()
        sampling = ("greedy", "gumbel")[(i + seed) % 2]
        policy = _policy(name, params, L, exits if name != "ar" else None, exits)
        models = [ConcreteModel(L, policy.exits, tuple(rng.integers(0, 3, 1 + s)), 3, sampling, seed * 10 + s)
                  for s in range(SEQS)]
        label = f"herbrand {sampling} {_label(name, params)}"
        try:
            r = cf.run(policy, models, [10, 7, 9], eos=int(rng.integers(0, 3)), can_jump=bool(i % 2), record=True)
            for s, M in enumerate(models):
                k = int(r.lat.counters.tokens[s])
                if tuple(int(x) for x in r.lat.output[s, :k]) != M.ar(k)[len(M.P):]:
                    raise cf.ConformanceError(f"seq {s}: the output is not AR's")
            n_z3 = _z3_sample(models, [m.moves for m in r.mirrors])
            out.append(_ok(label, t, r.moves, n_z3))
        except cf.ConformanceError as e:
            out.append(_fail(label, t, e))
    return out


# --------------------------------------------------------------------------------- replay runs

class TraceModel(ConcreteModel):
    """The model a replay of sequence s of a trace stands for: free states (as `ConcreteModel`),
    heads that answer the trace's exit tokens on the true path and, off it, what the replay read
    (`off`, set before each read)."""

    def __init__(self, trace: Trace, s: int, exits):
        n = int(trace.prompt_len[s])
        super().__init__(trace.L, exits, tuple(range(-n, 0)))  # its last token is the replay's root (-1)
        self.off: dict = {}  # (depth, state term) -> what the replay read there, off the true path
        self.truth: dict = {}  # (depth, state term) -> the trace's exit token
        col = {int(d): c for c, d in enumerate(trace.depths)}
        sl = trace.seq_slice(s)
        for r in range(sl.stop - sl.start):
            p = self.P + tuple(int(x) for x in trace.final[sl.start:sl.start + r])
            for d in self.exits:
                self.truth[(d, self.state(d, p))] = int(trace.exit_tokens[sl.start + r, col[d]])

    def read(self, d, h, key):
        tok = self.truth.get((d, h), self.off.get((d, h), core.NO_TOKEN))
        self.reads[(d, h, 0)] = tok
        return tok


def _recorded_fields(mir: cf.Mirror, move, source) -> None:
    """What the event recorded about the node is what the rules' state holds (a `_replay_round`
    check, called before the move)."""
    e, layer = source
    S = mir.cur.state()
    kind, x = move[0], int(e["node"])

    def need(what, recorded, rules):
        if int(recorded) != int(rules):
            raise cf.ConformanceError(f"{kind} of node {x}: the event records {what} {int(recorded)}, the rules' "
                                      f"state has {int(rules)}\n{mir.describe()}")

    if kind == "discard" and not S.live(x):
        return  # discarded by the stop already applied for an earlier discard of the same round
    if kind == "advance":
        need("layer", layer, S.depth(x) + 1)
    if kind in ("read_exit", "discard"):
        need("depth", e["depth"], S.depth(x))
    if kind in ("advance", "read_exit", "discard"):
        need("position", e["pos"], S.pos(x))
    if kind in ("advance", "discard"):
        need("token", e["token"], S.tok(x))
    if kind == "read_exit" and S.live(x):  # off the true path, the head is what the replay read
        mir.M.off[(S.depth(x), S.st(x, S.depth(x)))] = int(e["token"])
    if kind == "expand":
        p = int(e["parent"])
        need("position", e["pos"], S.pos(p) + 1)
        need("parent's depth at spawn", e["n"], S.depth(p))
    if kind.startswith("commit"):
        need("committed depth", e["depth"], mir.L)


def check_replay(trace: Trace, policy, seed: int = 0, z3: bool = True) -> tuple[int, int]:
    """Replay `trace` under `policy` in the compiled loop and check every recorded move (a sample in
    Z3 too, if `z3`: not on long prompts, whose states are terms too large for a quick Z3 check);
    returns (moves, moves also checked in Z3). Raises ConformanceError at the first disagreement."""
    lat = replay(trace, policy, seed=seed, record_events=True)
    ev = lat.events()
    models, logs, moves = [], [], 0
    for s in range(trace.n_seqs):
        mine = ev[ev["seq"] == s]
        M = TraceModel(trace, s, policy.exits)
        if len(mine) == 0 or int(mine[0]["kind"]) != core.SPAWN:
            raise cf.ConformanceError(f"seq {s}: the log does not start with the root's spawn")
        mir = cf.Mirror(M, int(mine[0]["node"]))
        steps = _steps(mine[1:])
        for i, events in enumerate(steps):
            moves += cf._replay_round(mir, events, stopped=i == len(steps) - 1, record=True,
                                      check=_recorded_fields)
        k = int(lat.counters.tokens[s])
        if tuple(int(x) for x in lat.output[s, :k]) != M.ar(k)[len(M.P):] or tuple(mir.cur.scalars["C"]) != M.ar(k):
            raise cf.ConformanceError(f"seq {s}: the output is not the trace's (AR's) final tokens")
        models.append(M)
        logs.append(mir.moves)
    if not output_matches(trace, lat):
        raise cf.ConformanceError("the replay's output is not the trace's")
    return moves, _z3_sample(models, logs) if z3 else 0


def _steps(events) -> list:
    """A sequence's events cut into core steps: each step starts with its advances, logged with the
    step's first round (a step without exits follows the previous step's advances directly)."""
    kind, rnd = events["kind"], events["round"]
    starts = [i for i in range(len(events)) if kind[i] == core.ADVANCE
              and (i == 0 or kind[i - 1] != core.ADVANCE or rnd[i] != rnd[i - 1])]
    if events.size and (not starts or starts[0] != 0):
        raise cf.ConformanceError(f"events before the first advance: {events[0]}")
    return [events[a:b] for a, b in zip(starts, starts[1:] + [len(events)])]


def _z3_sample(models, logs) -> int:
    """Check the first move of each kind, then every Z3_EVERY-th, in the Z3 reading of the rules."""
    n, seen = 0, set()
    for M, moves in zip(models, logs):
        for i, (kind, args, pre, post) in enumerate(moves):
            if kind in seen and i % Z3_EVERY:
                continue
            seen.add(kind)
            n += 1
            if not cf.z3_agrees(M, kind, args, pre, post):
                raise cf.ConformanceError(f"the Z3 reading of the rules does not allow the recorded {kind}{args}")
    return n


def random_trace(seed: int, L: int = 6, seqs: int = SEQS, tokens: int = 10, vocab: int = 3) -> Trace:
    """A tiny-vocabulary trace (guesses collide with the truth and with each other often), recorded at
    a random subset of depths, with random confidences."""
    rng = np.random.default_rng(seed)
    depths = np.array(sorted(set(rng.choice(np.arange(1, L), size=L // 2, replace=False).tolist()) | {L}))
    lengths = rng.integers(1, tokens + 1, seqs)
    n = int(lengths.sum())
    et = rng.integers(0, vocab, (n, len(depths)))
    return Trace(depths=depths.astype(np.int16), final=et[:, -1].astype(np.int32), exit_tokens=et.astype(np.int32),
                 exit_conf=rng.random((n, len(depths))).astype(np.float16),
                 seq_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                 prompt_len=rng.integers(1, 4, seqs).astype(np.int32),
                 meta={"arch": {"layers": L, "vocab": vocab}}, path=f"random trace (seed {seed})")


def replay_job(source: str, which: list[int] | None = None, seed: int = 0) -> list[Result]:
    """`source` a bundled trace's file name, or "random:SEED"; `which`: indices into `configs` (all if
    None). The exit set: every depth the trace recorded, or every other one for odd configs."""
    rand = source.startswith("random:")
    if rand:
        trace = random_trace(int(source.split(":")[1]))
    else:
        trace = first_tokens(first_seqs(load_trace(os.path.join(TRACES, source)), BUNDLED_SEQS), BUNDLED_TOKENS)
    depths = trace.depths.astype(np.int64)
    cfgs = configs(trace.L, depths)
    out = []
    for i in (range(len(cfgs)) if which is None else which):
        name, params = cfgs[i]
        exits = depths if i % 2 == 0 else np.union1d(depths[1::2], [trace.L])
        label = f"replay {source} {_label(name, params)} E={'all' if i % 2 == 0 else 'every other'}"
        t = time.perf_counter()
        try:
            policy = _policy(name, params, trace.L, exits, depths)
            moves, n_z3 = check_replay(trace, policy, seed, z3=rand)
            out.append(_ok(label, t, moves, n_z3))
        except cf.ConformanceError as e:
            out.append(_fail(label, t, e))
    return out


def bundled() -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(TRACES, "*.npz")))


def jobs() -> list[tuple]:
    """(function, args) of every run of the group, the longest first."""
    n = len(configs(4, [1, 2, 3, 4]))
    return ([(replay_job, (f, [i % n])) for i, f in enumerate(bundled())]
            + [(replay_job, (f"random:{seed}",)) for seed in (1, 2)] + [(herbrand_job, (1,))])


def _ok(label, t, moves, n_z3) -> Result:
    return Result("code", f"{label}: {moves} moves, {n_z3} also in Z3", "conforms", "conforms",
                  time.perf_counter() - t)


def _fail(label, t, e) -> Result:
    lines = [ln if len(ln) < 200 else ln[:200] + " ..." for ln in str(e).splitlines()]
    return Result("code", f"{label}: {lines[0]}", "conforms", "nonconforming", time.perf_counter() - t,
                  "\n".join(lines[:30]))
