"""Conformance: the real `dexsim` core, run next to the transition rules of `proofs.fsm`.

What ties the proofs to the code. The real lattice core (`dexsim.core.lattice`) is run with a real policy
(`dexsim.core.policies`) and an executor that computes with the *concrete* model (`model.ConcreteModel`:
free, hash-consed states, pseudo-random heads over a tiny vocabulary, greedy or seeded Gumbel). The
core's event log is cut into the rules' primitive moves (advance / read_exit / expand / evict /
commit_match / commit_fallback / stop) and a `Mirror` replays them with the *same* rule functions the
proofs reason about, read with `PyOps` (Python values). After every move:

- the move's guard holds in the mirror (the core only does what the rules allow: the dependency check,
  the exit read at L before a commit, the duplicate check, leaves-only eviction, ...);
- every invariant clause (all of them, ghost ones included) and every transition property holds;

and after every round the mirror's state equals the core's: the live node ids, each node's parent,
token, position, depth and last exit token, the anchor, the committed output, and every retained state
and KV cache of the executor (equal as terms of the free model, so "equal" means "computed from the
same inputs in the same way").

`z3_agrees` checks recorded moves once more with the Z3 reading of the rules (`BoundedModel`, the
model checker's): the concrete pre-state and the move's arguments satisfy the Z3 guard, the Z3
post-state equals the concrete one, and it satisfies every invariant clause read in Z3. That checks
that the Python reading of the rules means what the Z3 reading means.

Not covered here: executors other than `HerbrandExecutor` (the replay executor has no states; the
torch engine is not run), large lattices and long runs (the tests draw small ones), and the core's
counters.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import z3

from dexsim.core import lattice as core

from . import fsm
from .fsm import CLAUSES, STEP_PROPERTIES, Env, State
from .logic import NO_VALUE, Domain, PyOps
from .model import KV as KV_SORT
from .model import ConcreteModel


class ConformanceError(AssertionError):
    pass


# ------------------------------------------------------------------------------------ the executor

class HerbrandExecutor:
    """A `dexsim` executor that computes with a `ConcreteModel`: per node, the state after each layer
    and the KV cache it attended to; the committed KV cache; exit tokens from the model's heads.
    It raises if asked to compute a layer whose inputs do not exist (a dependency-rule violation)."""

    def __init__(self, models: list[ConcreteModel], can_jump: bool = True, seed: int = 0):
        self.models, self.can_jump = models, can_jump
        self.st: list[dict] = [dict() for _ in models]  # node id -> {layer: state}
        self.cx: list[dict] = [dict() for _ in models]  # node id -> {layer: KV cache}
        self.base: list[dict] = []
        for M in models:
            P = M.P
            self.base.append({l: M.ctx(l, P[:-1]) for l in range(1, M.L + 1)})  # the prompt's prefill
        self.rng = random.Random(seed)

    def compute(self, lat, s, j, layers):
        for i in range(int(layers.max(initial=0))):
            for q in range(len(s)):
                if layers[q] <= i:
                    continue
                a, b = int(s[q]), int(j[q])
                M, x = self.models[a], int(lat.node_id[a, b])
                l = int(lat.depth[a, b]) + i + 1
                p = int(lat.parent[a, b])
                if p < 0:
                    src = self.base[a][l]
                else:
                    pid = int(lat.node_id[a, p])
                    if l not in self.cx[a].get(pid, {}):
                        raise ConformanceError(f"seq {a}: node {x} computes layer {l} before its parent {pid} has it")
                    src = self.cx[a][pid][l]
                h = self.st[a][x][l - 1]
                cache = M.push(src, M.kvp(l, h))
                self.st[a][x][l] = M.blk(l, h, cache)
                self.cx[a].setdefault(x, {})[l] = cache

    def read_exits(self, lat, s, j):
        tok = np.zeros(len(s), np.int64)
        for q in range(len(s)):
            a, b = int(s[q]), int(j[q])
            x, d = int(lat.node_id[a, b]), int(lat.depth[a, b])
            tok[q] = self.models[a].read(d, self.st[a][x][d], int(lat.pos[a, b]) + 1)
        conf = np.array([self.rng.random() for _ in range(len(s))], np.float32)
        return tok, conf

    def spawned(self, lat, s, j):
        for a, b in zip(s.tolist(), j.tolist()):
            x = int(lat.node_id[a, b])
            self.st[a][x] = {0: self.models[a].emb(int(lat.token[a, b]), int(lat.pos[a, b]))}
            self.cx[a][x] = {}

    def committed(self, lat, s, node_ids):
        for a, x in zip(s.tolist(), node_ids.tolist()):
            self.base[a] = {l: self.cx[a][x][l] for l in range(1, self.models[a].L + 1)}

    def discarded(self, lat, s, node_ids):
        for a, x in zip(s.tolist(), node_ids.tolist()):
            self.st[a].pop(x, None)
            self.cx[a].pop(x, None)


# --------------------------------------------------------------------------------- concrete states

@dataclass
class Concrete:
    """A lattice state as Python tables (what `State` accessors read in the concrete reading)."""

    node: dict  # field -> {id: value}
    layer: dict  # "st"/"cx" -> {(id, m): value}
    pair: dict  # "anc"/"ch" -> {(id, id): value}
    base: dict  # l -> value
    scalars: dict
    ids: list = field(default_factory=list)  # the ids the tables cover

    def state(self) -> State:
        def one(t, default):
            return lambda x: t.get(x, default)

        def two(t, default):
            return lambda x, y: t.get((x, y), default)

        n, ly, pr = self.node, self.layer, self.pair
        return State(live=one(n["live"], False), par=one(n["par"], NO_VALUE), tok=one(n["tok"], NO_VALUE),
                     pos=one(n["pos"], NO_VALUE), depth=one(n["depth"], NO_VALUE), xd=one(n["xd"], NO_VALUE),
                     xtok=one(n["xtok"], NO_VALUE), path=one(n["path"], ()),
                     st=two(ly["st"], NO_VALUE), cx=two(ly["cx"], NO_VALUE),
                     anc=two(pr["anc"], False), ch=two(pr["ch"], NO_VALUE),
                     base=lambda l: self.base.get(l, NO_VALUE), **self.scalars)

    @classmethod
    def of(cls, S: State, ids, L: int) -> "Concrete":
        """Materialize a (possibly lazily updated) state on the given ids and layers 0..L."""
        ids = sorted(set(ids))
        node = {f: {x: getattr(S, f)(x) for x in ids} for f in fsm.NODE_FIELDS}
        layer = {f: {(x, m): getattr(S, f)(x, m) for x in ids for m in range(L + 1)} for f in fsm.LAYER_FIELDS}
        pair = {f: {(x, y): getattr(S, f)(x, y) for x in ids for y in ids} for f in fsm.PAIR_FIELDS}
        base = {l: S.base(l) for l in range(L + 1)}
        scalars = {f: getattr(S, f) for f in fsm.SCALARS}
        return cls(node, layer, pair, base, scalars, ids)


class Mirror:
    """The rules of `proofs.fsm`, read concretely, following one sequence of the core."""

    def __init__(self, M: ConcreteModel, anchor_id: int):
        self.M, self.L = M, M.L
        self.moves: list[tuple] = []  # (kind, args, pre Concrete, post Concrete) for z3_agrees
        S0 = Concrete(node={f: {} for f in fsm.NODE_FIELDS}, layer={f: {} for f in fsm.LAYER_FIELDS},
                      pair={f: {} for f in fsm.PAIR_FIELDS}, base={}, scalars={}, ids=[anchor_id])
        P, a = M.P, anchor_id
        S0.node.update(live={a: True}, par={a: -1}, tok={a: P[-1]}, pos={a: len(P) - 1}, depth={a: 0},
                       xd={a: 0}, xtok={a: NO_VALUE}, path={a: P})
        S0.layer["st"][(a, 0)] = M.emb(P[-1], len(P) - 1)
        S0.pair["anc"][(a, a)] = True
        S0.base = {l: M.ctx(l, P[:-1]) for l in range(1, self.L + 1)}
        S0.scalars = dict(active=True, C=P, k=0, a=a, draws=0)
        self.cur = S0
        env = self._env(S0.ids)
        init, _ = fsm.init(env, S0.state())
        if not init:
            raise ConformanceError("the core's initial state is not Init")
        self.check_invariant("init")

    def _env(self, ids):
        return Env(self.M, PyOps, Domain.finite(ids, range(self.L + 1), PyOps))

    def live_ids(self):
        return [x for x in self.cur.ids if self.cur.node["live"].get(x)]

    def move(self, kind: str, *args, record: bool = False):
        """Apply one move: its guard must hold; then every clause and property is checked."""
        pre = self.cur
        S = pre.state()
        ids = sorted(set(self.live_ids()) | {a for a, s in zip(args, fsm.param_sorts(kind)) if s == "node"})
        env = self._env(ids)
        step = fsm.transition(env, S, kind, list(args))
        if not step.guard:
            broken = ", ".join(name for name, ok in (step.parts or {}).items() if not ok)
            raise ConformanceError(f"the core did {kind}{args}, which the rules do not allow here (guard "
                                   f"clause broken: {broken}):\n{self.describe()}")
        post = Concrete.of(step.post, ids, self.L)
        if kind in STEP_PROPERTIES:
            thm, title, prop = STEP_PROPERTIES[kind]
            for x in ids:
                if not prop(env, S, step, list(args), x):
                    raise ConformanceError(f"{thm} ({title}) fails for node {x} at {kind}{args}")
        # forget dead ids (the core never reuses an id)
        live = [x for x in ids if post.node["live"].get(x)]
        self.cur = Concrete.of(post.state(), live, self.L)
        if record:
            self.moves.append((kind, tuple(args), pre, post))
        self.check_invariant(f"{kind}{args}")

    def check_invariant(self, where: str):
        S, ids = self.cur.state(), self.live_ids()
        env = self._env(ids)
        for c in CLAUSES:
            if c.sorts:
                ok = env.D.forall(c.sorts, lambda *v, c=c: c.body(env, S, *v))
            else:
                ok = c.body(env, S)
            if not ok:
                raise ConformanceError(f"after {where}: {c.theorem} {c.name!r} fails\n{self.describe()}")

    def describe(self) -> str:
        S = self.cur.state()
        rows = [f"C={list(S.C)} anchor={S.a} active={S.active}"]
        for x in self.live_ids():
            rows.append(f"  node {x}: par={S.par(x)} tok={S.tok(x)} pos={S.pos(x)} depth={S.depth(x)} "
                        f"xd={S.xd(x)} xtok={S.xtok(x)} path={list(S.path(x))}")
        return "\n".join(rows)


# ----------------------------------------------------------------------------- cutting the log

def moves_of_round(events, sources: list | None = None) -> list[tuple]:
    """The rules' moves of one round of one sequence, from its events in log order. `sources`, if
    given, receives each move's event (and, for an advance, the layer it computes)."""
    out, i, n = [], 0, len(events)
    src = [] if sources is None else sources
    while i < n:
        e = events[i]
        k = int(e["kind"])
        if k == core.ADVANCE:
            group = []  # one step's advances (they share its first round)
            while i < n and int(events[i]["kind"]) == core.ADVANCE and events[i]["round"] == e["round"]:
                group.append(events[i])
                i += 1
            for r in range(max(int(g["n"]) for g in group)):  # a jump: layer by layer, slot order
                out += [("advance", int(g["node"])) for g in group if int(g["n"]) > r]
                src += [(g, int(g["depth"]) + r + 1) for g in group if int(g["n"]) > r]
            continue
        src.append((e, None))
        if k == core.EXIT:
            out.append(("read_exit", int(e["node"]), ("token", int(e["token"]))))
        elif k == core.SPAWN:
            out.append(("expand", int(e["parent"]), int(e["token"]), int(e["node"])))
        elif k == core.DISCARD:
            out.append(("discard", int(e["node"])))  # an eviction, or a stop (resolved by the caller)
        elif k == core.COMMIT:
            y, j, spawned, gone = int(e["token"]), i + 1, None, []
            while j < n and int(events[j]["kind"]) != core.COLLAPSE:
                if int(events[j]["kind"]) == core.SPAWN:
                    spawned = int(events[j]["node"])
                elif int(events[j]["kind"]) == core.DISCARD:
                    gone.append(int(events[j]["node"]))
                j += 1
            if j == n:
                raise ConformanceError(f"a commit without its collapse: {e}")
            new_anchor = int(events[j]["node"])
            if spawned is None:
                out.append(("commit_match", new_anchor, ("token", y), ("gone", gone)))
            else:
                out.append(("commit_fallback", spawned, ("token", y), ("gone", gone)))
            i = j
        else:
            raise ConformanceError(f"an event the rules have no move for here: {e}")
        i += 1
    return out


# ------------------------------------------------------------------------------------ running

@dataclass
class Run:
    lat: object
    models: list
    mirrors: list
    executor: object
    moves: int


def run(policy, models: list[ConcreteModel], max_tokens, *, eos=None, can_jump=True, seed=0,
        record=False, max_rounds=10_000) -> Run:
    """Drive the core with `policy` on sequences with these models (one per sequence), mirroring every
    move. Raises ConformanceError at the first disagreement."""
    L = models[0].L
    exits = sorted(set(int(e) for e in policy.exits))
    if not all(M.L == L and sorted(M.exits) == exits for M in models):
        raise ValueError("the models' exit sets must be the policy's (with L)")
    lat = core.Lattice(L=L, exits=np.array(exits), capacity=policy.buffer + 1,
                       root_tokens=np.array([M.P[-1] for M in models]),
                       root_pos=np.array([len(M.P) - 1 for M in models]),
                       max_tokens=np.asarray(max_tokens), eos=eos, record_events=True)
    ex = HerbrandExecutor(models, can_jump=can_jump, seed=seed)
    core.start(lat, ex)
    mirrors = [Mirror(M, int(lat.node_id[s, 0])) for s, M in enumerate(models)]
    moves, rounds = 0, 0
    seen = np.bincount(lat.events()["seq"], minlength=lat.S)  # events read so far, per sequence
    for s in range(lat.S):
        if not lat.active[s]:
            mirrors[s].move("stop", record=record)
    while lat.active.any():
        active_before = lat.active.copy()
        core.step(lat, policy, ex)
        rounds += 1
        if rounds > max_rounds:
            raise ConformanceError("no progress")
        ev = lat.events()
        for s in np.nonzero(active_before)[0]:
            mine = ev[ev["seq"] == s]
            moves += _replay_round(mirrors[s], mine[seen[s]:], stopped=not lat.active[s], record=record)
            seen[s] = len(mine)
            compare(lat, ex, s, mirrors[s])
    return Run(lat, models, mirrors, ex, moves)


def _replay_round(mir: Mirror, events, stopped: bool, record: bool, check=None) -> int:
    """Apply one round's moves to the mirror; `check(mir, move, (event, layer))`, if given, is called
    before each move (to compare what the event recorded with the mirror's state)."""
    sources = []
    moves = moves_of_round(events, sources)
    # discards after the round's last commit are the stop; the others are evictions
    last_commit = max([i for i, m in enumerate(moves) if m[0].startswith("commit")], default=-1)
    count = 0
    stop_done = False
    for i, m in enumerate(moves):
        kind = m[0]
        if check is not None:
            check(mir, m, sources[i])
        if kind == "discard":
            if stopped and i > last_commit:
                if not stop_done:
                    mir.move("stop", record=record)
                    stop_done = True
                    count += 1
                continue
            mir.move("evict", m[1], record=record)
        elif kind == "read_exit":
            mir.move("read_exit", m[1], record=record)
            got = mir.cur.node["xtok"][m[1]]
            if got != m[2][1]:
                raise ConformanceError(f"exit of node {m[1]}: core read {m[2][1]}, the rules give {got}")
        elif kind in ("commit_match", "commit_fallback"):
            y, gone = m[2][1], set(m[3][1])
            before = set(mir.live_ids())
            if mir.cur.node["xtok"][mir.cur.scalars["a"]] != y:
                raise ConformanceError(f"the core committed {y}, the anchor's exit token is "
                                       f"{mir.cur.node['xtok'][mir.cur.scalars['a']]}")
            old_anchor = mir.cur.scalars["a"]
            mir.move(kind, m[1], record=record)
            kept = set(mir.live_ids())
            expected_gone = before - kept - {old_anchor}
            if gone != expected_gone:
                raise ConformanceError(f"collapse: the core discarded {sorted(gone)}, the rules discard "
                                       f"{sorted(expected_gone)}")
        else:
            mir.move(kind, *m[1:], record=record)
        count += 1
    if stopped and not stop_done:
        mir.move("stop", record=record)
        count += 1
    return count


def compare(lat, ex: HerbrandExecutor, s: int, mir: Mirror) -> None:
    """The core's state of sequence s (and the executor's retained states) equals the mirror's."""
    S = mir.cur.state()
    L = lat.L

    def fail(msg):
        raise ConformanceError(f"seq {s}, round {int(lat.round[s])}: {msg}\n{mir.describe()}")

    if bool(lat.active[s]) != bool(S.active):
        fail(f"active: core {bool(lat.active[s])}, rules {S.active}")
    P = mir.M.P
    out = tuple(int(t) for t in lat.output[s, : lat.counters.tokens[s]])
    if P + out != tuple(S.C):
        fail(f"committed: core {list(P + out)}, rules {list(S.C)}")
    if not S.active:
        return
    n = int(lat.n[s])
    ids = [int(x) for x in lat.node_id[s, :n]]
    if sorted(ids) != sorted(mir.live_ids()):
        fail(f"live nodes: core {sorted(ids)}, rules {sorted(mir.live_ids())}")
    if ids[0] != S.a:
        fail(f"anchor: core {ids[0]}, rules {S.a}")
    for j, x in enumerate(ids):
        par = int(lat.parent[s, j])
        if j and ids[par] != S.par(x):
            fail(f"node {x}: parent core {ids[par]}, rules {S.par(x)}")
        for name, core_v, rule_v in (("token", lat.token[s, j], S.tok(x)), ("pos", lat.pos[s, j], S.pos(x)),
                                     ("depth", lat.depth[s, j], S.depth(x)),
                                     ("exit token", lat.exit_token[s, j],
                                      S.xtok(x) if S.xd(x) >= 1 else core.NO_TOKEN)):
            if int(core_v) != rule_v:
                fail(f"node {x}: {name} core {int(core_v)}, rules {rule_v}")
        for m in range(int(lat.depth[s, j]) + 1):
            if ex.st[s][x][m] != S.st(x, m):
                fail(f"node {x}: executor state at layer {m} differs from the rules'")
            if m and ex.cx[s][x][m] != S.cx(x, m):
                fail(f"node {x}: executor KV cache at layer {m} differs from the rules'")
    for l in range(1, L + 1):
        if ex.base[s][l] != S.base(l):
            fail(f"committed KV cache at layer {l} differs from the rules'")


# ---------------------------------------------------------------- the Z3 reading, on recorded moves

def z3_agrees(M: ConcreteModel, kind: str, args, pre: Concrete, post: Concrete) -> bool:
    """The Z3 reading of the rules (as the model checker reads them) allows this recorded move: with
    the concrete pre-state and arguments, the Z3 guard is valid, the Z3 post-state equals the concrete
    post-state on every live id and computed layer, and the concrete post-state satisfies the Z3
    reading of every invariant clause, given what the concrete heads answered (the free model's terms
    are rebuilt as Z3 terms over the uninterpreted primitives)."""
    from .logic import BSeq
    from .model import BoundedModel, H, Ctx, emb, kvp, push, nil, blk, head, logits, noise, gmax

    N = max([len(p) for p in list(pre.node["path"].values()) + list(post.node["path"].values())]
            + [len(pre.scalars["C"]), len(post.scalars["C"])]) + 1
    ZM = BoundedModel(M.sampling, M.L, N, post.scalars["k"], (len(M.P), len(M.P)))
    memo: dict = {}

    def term(i, sort):
        if not isinstance(i, int) or i < 0:
            return z3.Const(f"undefined!{sort}", sort)  # a value no clause or comparison relies on
        if i not in memo:
            op, *a = M.terms[i]
            memo[i] = {"nil": lambda: nil, "emb": lambda: emb(a[0], a[1]),
                       "kvp": lambda: kvp(a[0], term(a[1], H)),
                       "push": lambda: push(term(a[0], Ctx), term(a[1], KV_SORT)),
                       "blk": lambda: blk(a[0], term(a[1], H), term(a[2], Ctx))}[op]()
        return memo[i]

    def seq(p):
        return BSeq(z3.IntVal(len(p)), [z3.IntVal(t) for t in p] + [z3.IntVal(0)] * (N - len(p)))

    universe = sorted(set(pre.ids) | set(post.ids) | {a for a, k in zip(args, fsm.param_sorts(kind)) if k == "node"})

    def z3_state(C: Concrete) -> State:
        ids = universe  # ids outside C's tables read as dead (the tables' defaults)

        def node(f):
            if f == "path":
                vals = [seq(C.node[f].get(i, ())) for i in ids]
            elif f == "live":
                vals = [z3.BoolVal(C.node[f].get(i, False)) for i in ids]
            else:
                vals = [z3.IntVal(C.node[f].get(i, NO_VALUE)) for i in ids]
            return lambda x: _pick(vals, ids, x)

        def layer(f, sort):
            rows = {i: [term(C.layer[f].get((i, m), NO_VALUE), sort) for m in range(M.L + 1)] for i in ids}
            return lambda x, m: _pick([_case(rows[i], m) for i in ids], ids, x)

        def pair(f, mk, default):
            return lambda x, y: _pick([_pick([mk(C.pair[f].get((i, j), default)) for j in ids], ids, y) for i in ids],
                                      ids, x)

        base = [term(C.base.get(m, NO_VALUE), Ctx) for m in range(M.L + 1)]
        return State(**{f: node(f) for f in fsm.NODE_FIELDS}, st=layer("st", H), cx=layer("cx", Ctx),
                     anc=pair("anc", z3.BoolVal, False), ch=pair("ch", z3.IntVal, NO_VALUE),
                     base=lambda l: _case(base, l), active=z3.BoolVal(C.scalars["active"]), C=seq(C.scalars["C"]),
                     k=z3.IntVal(C.scalars["k"]), a=z3.IntVal(C.scalars["a"]), draws=z3.IntVal(C.scalars["draws"]))

    facts = [ZM.E(d) == (d in M.exits) for d in range(M.L + 1)] + [ZM.P == seq(M.P)]
    for (d, h, key), tok in M.reads.items():  # what the concrete heads answered
        t = head(d, term(h, H)) if M.sampling == "greedy" else gmax(logits(d, term(h, H)), noise(key))
        facts.append(t == tok)
    env = Env(ZM, ZM.o, Domain.finite(universe, range(M.L + 1), ZM.o))
    S, T = z3_state(pre), z3_state(post)
    step = fsm.transition(env, S, kind, [z3.IntVal(a) for a in args])
    eqs = [step.guard]
    live = [x for x in post.ids if post.node["live"].get(x)]
    for x in live:
        eqs += [getattr(step.post, f)(x) == getattr(T, f)(x) for f in fsm.NODE_FIELDS]
        for m in range(post.node["depth"][x] + 1):
            eqs.append(step.post.st(x, m) == T.st(x, m))
            if m:
                eqs.append(step.post.cx(x, m) == T.cx(x, m))
        eqs += [step.post.anc(x, y) == T.anc(x, y) for y in live]
    eqs += [getattr(step.post, f) == getattr(T, f) for f in ("active", "k", "a", "draws")]
    eqs.append(step.post.C == T.C)
    if post.scalars["active"]:
        eqs += [step.post.base(l) == T.base(l) for l in range(1, M.L + 1)]
    # and the concrete post-state satisfies the Z3 reading of every invariant clause
    env_post = Env(ZM, ZM.o, Domain.finite(live, range(M.L + 1), ZM.o))
    for c in CLAUSES:
        eqs.append(env_post.D.forall(c.sorts, lambda *v, c=c: c.body(env_post, T, *v)) if c.sorts
                   else c.body(env_post, T))
    s = z3.Solver()
    s.set("rlimit", 50_000_000)
    s.add(*facts)
    s.add(z3.Not(z3.And(*eqs)))
    return s.check() == z3.unsat


def _case(values, x):
    """values[x] for an index x that may be a Z3 term (an if-then-else)."""
    if isinstance(x, int) or z3.is_int_value(x):
        i = x if isinstance(x, int) else x.as_long()
        return values[min(max(i, 0), len(values) - 1)]
    out = values[-1]
    for i in range(len(values) - 2, -1, -1):
        out = _ite(x == i, values[i], out)
    return out


def _pick(values, ids, x):
    """values[ids.index(x)] for a node id x that may be a Z3 term."""
    if isinstance(x, int) or z3.is_int_value(x):
        i = x if isinstance(x, int) else x.as_long()
        if i in ids:
            return values[ids.index(i)]
    out = values[-1]
    for k in range(len(ids) - 2, -1, -1):
        out = _ite(x == ids[k], values[k], out)
    return out


def _ite(c, a, b):
    from .logic import BSeq
    if isinstance(a, BSeq):
        return BSeq(z3.If(c, a.n, b.n), [z3.If(c, p, q) for p, q in zip(a.toks, b.toks)])
    return z3.If(c, a, b)
