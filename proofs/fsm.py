"""The DEX lattice as a transition system: state, initial state, transitions, invariants.

This is `dexsim/core/lattice.py` with the model abstracted (`proofs.model`) and the policy replaced by
nondeterminism. Every transition takes its arguments (which node, which token, which fresh id, which
child) as free parameters, and its guard says only what the core itself enforces, so one proof covers
every policy, explorer count, exit set, priority rule, buffer size and eviction choice: a policy is a
way of choosing among the enabled transitions, and the exit set E is an arbitrary predicate with L in
it. The rules are written once against `ops`/`Domain` (`proofs.logic`): symbolic for the proofs and
the model checker, concrete for the conformance tests that run them next to the real core.

State (one sequence; node ids are integers, as the core's `node_id`):

    active, C (committed sequence: prompt + output), k (commits so far), a (anchor id), base(l)
    (the KV cache of the committed positions before the anchor, at layer l), and per node x:
    live, par, tok, pos, depth, xd (depth of the last exit read, 0 = none), xtok (that exit token),
    st(x, m) (retained state after m blocks), cx(x, l) (the KV cache the node attended to at layer l,
    its own entry included); `draws` counts the exit heads read (only the mutant gumbel_counter
    uses it). Ghost (proof-only) fields: path(x) (the node's prefix), anc(u, x) (u is x or an
    ancestor of x) and ch(u, x) (the child of u on the way down to x).

Transitions (the core's primitive moves; a round is a sequence of them, see below):

    advance(v)        v computes layer l = depth(v)+1: kv = kvp(l, st(v, l-1)); its cache is the
                      parent's cache at layer l (the committed cache for the anchor) plus kv; its new
                      state is blk(l, st(v, l-1), cache). Guard (the core's dependency check): v is the
                      anchor, or its parent already holds layer l.
    read_exit(v)      at an exit depth d in E (d >= 1): xtok = head(d, st(v, d)), xd = d; with Gumbel
                      sampling xtok = gmax(logits(d, st(v, d)), noise(pos(v) + 1)).
    expand(v, t, c)   a child c (a dead id) of v with any token t, depth 0, unless a live child of v
                      already has t (the guess may be anything: "any t" covers every exit head).
    evict(w)          discard a live leaf branch w (the buffer rule: which leaf, and when, is free).
    commit_match(cy)  the anchor is at depth L and has read its exit there: y = xtok(a) is committed;
                      cy, the live child with token y, becomes the anchor with its subtree (the nodes
                      x with anc(cy, x)); everything else is discarded; the anchor's caches become the
                      committed cache.
    commit_fallback(f)  the same with no child holding y: a fresh anchor f = (y, depth 0).
    stop              the sequence ends (limit or EOS): every node is discarded.

A core round (every chosen node advances one layer, batched with a causal tree mask) is the sequence
of `advance` moves in slot order, parents before children: a parent computing layer l in the same
round has done so when its child reads it. Exits, expansions, evictions and commits follow, as in
`dexsim.core.lattice.step`. The conformance tests check exactly this decomposition on the real core.

Invariants (`CLAUSES`, each tagged with the theorem it belongs to; all of them together are the
inductive invariant, every one of them is proved preserved by every transition given all of them):

    thm1  C = ar(k): the committed sequence is AR's, at every step.
    thm2  every retained state is the model's state for its own path and layer: st(x, m) =
          state(m, path(x)) for m <= depth(x), cx(x, l) = ctx(l, path(x)), base(l) = ctx(l, init(C));
          every exit token read is exit(xd, path(x)).
    thm3  the lattice shape: the anchor's path is C; every node's path is its parent's path followed
          by its token (so it extends C); no two live nodes share a path; ancestry is path prefix.
          And, for every commit, collapse keeps exactly the old nodes whose path extends the new C.
    thm4  a child is never deeper than its parent, every ancestor is at least as deep as its
          descendants; and the core's parent-only check implies the whole dependency rule: when v
          computes layer l, every live ancestor holds layer l (the committed positions hold all L).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import z3

from .logic import Domain
from .model import H, Ctx

NODE_FIELDS = ("live", "par", "tok", "pos", "depth", "xd", "xtok", "path")
LAYER_FIELDS = ("st", "cx")
PAIR_FIELDS = ("anc", "ch")
SCALARS = ("active", "C", "k", "a", "draws")
FIELDS = NODE_FIELDS + LAYER_FIELDS + PAIR_FIELDS + ("base",) + SCALARS

MUTANTS = {
    "keep_first_child": "collapse keeps the anchor's first child, not the one whose token was committed",
    "commit_below_L": "commit the anchor's exit token read at any depth, not only at L",
    "skip_dependency": "advance a node whatever its parent's depth (no dependency check)",
    "advance_past_ancestor": "let a node compute layer l while its parent is still at l-1 (advance past an "
                             "ancestor's depth)",
    "promote_child_kv": "on commit, promote the new anchor's KV cache instead of the committed anchor's",
    "forget_promote": "on commit, never append the committed anchor's KV to the committed cache",
    "reuse_discarded": "spawn into a discarded node without resetting its depth and states",
    "reuse_prefix_state": "spawn with the states of a live node of the same token and position (a cache "
                          "keyed by (token, position) instead of by prefix)",
    "keep_nonmatching": "collapse keeps the non-matching children of the old anchor too",
    "evict_nonleaf": "evict a branch that still has children (its subtree is not discarded)",
    "exit_stale_state": "read an exit from the state one layer below the node's depth",
    "fallback_same_pos": "a fallback anchor at the old anchor's position, not the next one",
    "gumbel_counter": "Gumbel noise drawn from a running counter (one draw per head call), not keyed "
                      "by absolute position",
    "gumbel_relative": "Gumbel noise keyed by the position relative to the anchor",
}


class State:
    """A lattice state: every field is a callable (node fields take a node id, layer fields a node and
    a layer, pair fields two nodes, `base` a layer) except the scalars. `but(**f)` is the functional
    update that transitions use."""

    def __init__(self, **f):
        missing = set(FIELDS) - set(f)
        assert not missing, missing
        self.__dict__.update(f)

    def but(self, **f):
        d = dict(self.__dict__)
        d.update(f)
        return State(**d)

    @classmethod
    def symbolic(cls, tag: str, Seq) -> "State":
        """A state of the unbounded proofs: every field an uninterpreted function."""
        I, B = z3.IntSort(), z3.BoolSort()
        sorts = dict(live=(I, B), par=(I, I), tok=(I, I), pos=(I, I), depth=(I, I), xd=(I, I), xtok=(I, I),
                     path=(I, Seq), st=(I, I, H), cx=(I, I, Ctx), anc=(I, I, B), ch=(I, I, I), base=(I, Ctx))
        f = {n: z3.Function(f"{tag}.{n}", *s) for n, s in sorts.items()}
        s = dict(active=z3.Bool(f"{tag}.active"), C=z3.Const(f"{tag}.C", Seq), k=z3.Int(f"{tag}.k"),
                 a=z3.Int(f"{tag}.a"), draws=z3.Int(f"{tag}.draws"))
        return cls(**f, **s)


@dataclass
class Env:
    """What the rules are read in: the model, the connectives, the quantifier domain, the mutations."""

    M: object
    o: object = None  # the model's own ops unless given
    D: Domain = None
    mut: frozenset = frozenset()

    def __post_init__(self):
        if self.o is None:
            self.o = self.M.o

    def forall_nodes(self, body, patterns=None):
        return self.D.forall(("node",), body, patterns)


@dataclass
class Step:
    kind: str
    guard: object
    post: State
    facts: list  # ground instances of the model's definitions at the points this step computes
    parts: dict = None  # the guard's conjuncts by name (guard = their And): what a refused move broke


def _guard(o, **parts):
    """A guard as the And of named conjuncts, and the conjuncts (for naming the one a move breaks)."""
    return o.And(*parts.values()), parts


# ---------------------------------------------------------------------------------------------- init

def init(env: Env, S: State):
    """The initial state: the prompt P is committed, its last token is the anchor at depth 0, and the
    prompt's KV cache (prefill, plain AR) is in place; every other id is dead, at depth 0 (as the
    core's zero-filled arrays). Returns (formula, facts)."""
    M, o = env.M, env.o
    P, a = M.P, S.a
    f = o.And(S.active, S.k == 0, S.draws == 0, S.C == P,
              env.forall_nodes(lambda x: o.And(S.live(x) == (x == a), S.depth(x) == 0, S.xd(x) == 0),
                               lambda x: [S.live(x)]),
              S.tok(a) == o.last(P), S.pos(a) == o.length(P) - 1, S.depth(a) == 0, S.xd(a) == 0,
              S.path(a) == P, S.st(a, 0) == M.emb(o.last(P), o.length(P) - 1), S.anc(a, a),
              env.D.forall(("layer",), lambda l: o.Implies(o.And(1 <= l, l <= M.L), S.base(l) == M.ctx(l, o.init(P))),
                           lambda l: [S.base(l)]))
    return f, M.unfold_state(0, P) + M.unfold_ar(0) + M.axioms()


# ----------------------------------------------------------------------------------------- transitions

def advance(env: Env, S: State, v) -> Step:
    M, o, mut = env.M, env.o, env.mut
    l = S.depth(v) + 1
    if "skip_dependency" in mut:
        dep = True
    elif "advance_past_ancestor" in mut:
        dep = o.Or(v == S.a, S.depth(S.par(v)) >= l - 1)
    else:
        dep = o.Or(v == S.a, S.depth(S.par(v)) >= l)
    guard, parts = _guard(o, active=S.active, live=S.live(v), below_L=S.depth(v) < M.L,
                          dependency=dep)
    h = S.st(v, l - 1)
    cache = M.push(o.If(v == S.a, S.base(l), S.cx(S.par(v), l)), M.kvp(l, h))
    new = M.blk(l, h, cache)
    post = S.but(depth=lambda x: o.If(x == v, l, S.depth(x)),
                 st=lambda x, m: o.If(o.And(x == v, m == l), new, S.st(x, m)),
                 cx=lambda x, m: o.If(o.And(x == v, m == l), cache, S.cx(x, m)))
    return Step("advance", guard, post, M.unfold_state(l, S.path(v)), parts)


def read_exit(env: Env, S: State, v) -> Step:
    M, o, mut = env.M, env.o, env.mut
    d = S.depth(v)
    guard, parts = _guard(o, active=S.active, live=S.live(v), computed=d >= 1, exit_depth=M.E(d))
    h = S.st(v, d - 1) if "exit_stale_state" in mut else S.st(v, d)
    key = S.pos(v) + 1  # the position of the token this exit chooses
    if "gumbel_counter" in mut:
        key = S.draws
    elif "gumbel_relative" in mut:
        key = S.pos(v) + 1 - S.pos(S.a)
    t = M.read(d, h, key)
    post = S.but(xd=lambda x: o.If(x == v, d, S.xd(x)), xtok=lambda x: o.If(x == v, t, S.xtok(x)),
                 draws=S.draws + 1)
    return Step("read_exit", guard, post, [], parts)


def expand(env: Env, S: State, v, t, c, donor=None) -> Step:
    M, o, mut = env.M, env.o, env.mut
    no_dup = env.forall_nodes(lambda u: o.Implies(o.And(S.live(u), u != S.a, S.par(u) == v), S.tok(u) != t),
                              lambda u: [S.par(u)])
    guard, parts = _guard(o, active=S.active, live=S.live(v), fresh_id=o.Not(S.live(c)), no_dup_sibling=no_dup)
    pos, path = S.pos(v) + 1, o.snoc(S.path(v), t)
    st0 = M.emb(t, pos)
    if "reuse_discarded" in mut:
        depth_c, st_c, cx_c = S.depth(c), (lambda m: S.st(c, m)), (lambda m: S.cx(c, m))
    elif "reuse_prefix_state" in mut:  # a cache hit: `donor` is live with the same token and position
        hit = o.And(S.live(donor), donor != c, S.tok(donor) == t, S.pos(donor) == pos)
        depth_c = o.If(hit, S.depth(donor), 0)
        st_c = lambda m: o.If(hit, S.st(donor, m), o.If(m == 0, st0, S.st(c, m)))  # noqa: E731
        cx_c = lambda m: o.If(hit, S.cx(donor, m), S.cx(c, m))  # noqa: E731
    else:
        depth_c, st_c, cx_c = 0, (lambda m: o.If(m == 0, st0, S.st(c, m))), (lambda m: S.cx(c, m))
    post = S.but(
        live=lambda x: o.Or(x == c, S.live(x)),
        par=lambda x: o.If(x == c, v, S.par(x)),
        tok=lambda x: o.If(x == c, t, S.tok(x)),
        pos=lambda x: o.If(x == c, pos, S.pos(x)),
        depth=lambda x: o.If(x == c, depth_c, S.depth(x)),
        xd=lambda x: o.If(x == c, 0, S.xd(x)),
        path=lambda x: o.If(x == c, path, S.path(x)),
        st=lambda x, m: o.If(x == c, st_c(m), S.st(x, m)),
        cx=lambda x, m: o.If(x == c, cx_c(m), S.cx(x, m)),
        anc=lambda x, y: o.If(y == c, o.Or(x == c, o.And(x != c, S.anc(x, v))), o.And(x != c, S.anc(x, y))),
        ch=lambda x, y: o.If(y == c, o.If(x == v, c, S.ch(x, v)), S.ch(x, y)),
    )
    return Step("expand", guard, post, M.unfold_state(0, path), parts)


def evict(env: Env, S: State, w) -> Step:
    o, mut = env.o, env.mut
    leaf = True if "evict_nonleaf" in mut else env.forall_nodes(
        lambda u: o.Implies(o.And(S.live(u), u != S.a), S.par(u) != w), lambda u: [S.par(u)])
    guard, parts = _guard(o, active=S.active, live=S.live(w), not_anchor=w != S.a, leaf=leaf)
    return Step("evict", guard, S.but(live=lambda x: o.And(x != w, S.live(x))), [], parts)


def _ready(env: Env, S: State):
    """The anchor may commit: it is at depth L and has read its exit there (its final token)."""
    if "commit_below_L" in env.mut:
        return S.xd(S.a) >= 1
    return env.o.And(S.depth(S.a) == env.M.L, S.xd(S.a) == env.M.L)


def _committed_cache(env: Env, S: State, new_anchor):
    if "forget_promote" in env.mut:
        return S.base
    if "promote_child_kv" in env.mut:
        return lambda l: S.cx(new_anchor, l)
    return lambda l: S.cx(S.a, l)


def commit_match(env: Env, S: State, cy) -> Step:
    M, o, mut = env.M, env.o, env.mut
    a, y = S.a, S.xtok(S.a)
    child = o.And(S.live(cy), cy != a, S.par(cy) == a)
    match = child if "keep_first_child" in mut else o.And(child, S.tok(cy) == y)
    guard, parts = _guard(o, active=S.active, anchor_read_L=_ready(env, S), matching_child=match)
    if "keep_nonmatching" in mut:
        keep = lambda x: o.Or(S.anc(cy, x), o.And(x != a, S.par(x) == a))  # noqa: E731
    else:
        keep = lambda x: S.anc(cy, x)  # noqa: E731  the core: cy and its subtree, by parent closure
    post = S.but(C=o.snoc(S.C, y), k=S.k + 1, a=cy, base=_committed_cache(env, S, cy),
                 live=lambda x: o.And(S.live(x), keep(x)))
    return Step("commit_match", guard, post, M.unfold_ar(S.k + 1), parts)


def commit_fallback(env: Env, S: State, f) -> Step:
    M, o, mut = env.M, env.o, env.mut
    a, y = S.a, S.xtok(S.a)
    no_match = env.forall_nodes(lambda u: o.Implies(o.And(S.live(u), u != a, S.par(u) == a), S.tok(u) != y),
                                lambda u: [S.par(u)])
    guard, parts = _guard(o, active=S.active, anchor_read_L=_ready(env, S), no_matching_child=no_match,
                          fresh_id=o.Not(S.live(f)))
    C2 = o.snoc(S.C, y)
    pos = S.pos(a) if "fallback_same_pos" in mut else S.pos(a) + 1
    st0 = M.emb(y, pos)
    post = S.but(
        C=C2, k=S.k + 1, a=f, base=_committed_cache(env, S, f),
        live=lambda x: x == f,
        tok=lambda x: o.If(x == f, y, S.tok(x)),
        pos=lambda x: o.If(x == f, pos, S.pos(x)),
        depth=lambda x: o.If(x == f, 0, S.depth(x)),
        xd=lambda x: o.If(x == f, 0, S.xd(x)),
        path=lambda x: o.If(x == f, C2, S.path(x)),
        st=lambda x, m: o.If(o.And(x == f, m == 0), st0, S.st(x, m)),
        anc=lambda x, z: o.Or(o.And(x == f, z == f), S.anc(x, z)),
    )
    return Step("commit_fallback", guard, post, M.unfold_ar(S.k + 1) + M.unfold_state(0, C2), parts)


def stop(env: Env, S: State) -> Step:
    return Step("stop", S.active, S.but(active=False, live=lambda x: False), [], {"active": S.active})


# name -> (function, parameter sorts); "node" and "token" parameters
TRANSITIONS = {
    "advance": (advance, ("node",)),
    "read_exit": (read_exit, ("node",)),
    "expand": (expand, ("node", "token", "node")),
    "evict": (evict, ("node",)),
    "commit_match": (commit_match, ("node",)),
    "commit_fallback": (commit_fallback, ("node",)),
    "stop": (stop, ()),
}
PARAM_NAMES = {"advance": ("v",), "read_exit": ("v",), "expand": ("parent", "token", "new", "donor"),
               "evict": ("w",), "commit_match": ("child",), "commit_fallback": ("new",), "stop": ()}


def transition(env: Env, S: State, kind: str, params) -> Step:
    """The step of transition `kind` with these arguments (see `param_sorts`) from state S."""
    return TRANSITIONS[kind][0](env, S, *params)


def param_sorts(kind: str, mut=frozenset()):
    """The sorts of a transition's arguments (the mutant reuse_prefix_state's expand takes a donor)."""
    sorts = TRANSITIONS[kind][1]
    if kind == "expand" and "reuse_prefix_state" in mut:
        sorts = sorts + ("node",)
    return sorts


# ------------------------------------------------------------------------------------------ invariants

@dataclass(frozen=True)
class Clause:
    """One conjunct of the invariant: for all `sorts` (node / layer variables), body holds."""

    theorem: str
    name: str
    sorts: tuple
    body: Callable  # (env, S, *vars) -> formula
    patterns: Callable | None = None  # (S, *vars) -> E-matching patterns for the hypothesis reading
    ghost: bool = False  # only about ghost fields: a proof device, not part of a theorem's statement


def _c_ar(env, S):
    return env.o.And(S.C == env.M.ar(S.k), S.k >= 0)


def _c_anchor(env, S):
    o = env.o
    return o.And(o.length(S.C) >= 1, o.Implies(S.active, o.And(
        S.live(S.a), S.path(S.a) == S.C, S.tok(S.a) == o.last(S.C), S.pos(S.a) == o.length(S.C) - 1)))


def _c_paths(env, S, w):
    o = env.o
    return o.Implies(o.And(S.active, S.live(w)), o.And(
        o.prefixof(S.C, S.path(w)), o.length(S.path(w)) == S.pos(w) + 1, o.last(S.path(w)) == S.tok(w),
        o.Implies(w != S.a, o.And(S.live(S.par(w)), S.par(w) != w,
                                  S.path(w) == o.snoc(S.path(S.par(w)), S.tok(w))))))


def _c_unique(env, S, u, w):
    o = env.o
    return o.Implies(o.And(S.active, S.live(u), S.live(w), S.path(u) == S.path(w)), u == w)


def _c_anc(env, S, u, w):
    o = env.o
    return o.Implies(o.And(S.active, S.live(u), S.live(w)), S.anc(u, w) == o.prefixof(S.path(u), S.path(w)))


def _c_child(env, S, u, w):
    o = env.o
    c = S.ch(u, w)
    return o.Implies(o.And(S.active, S.live(u), S.live(w), S.anc(u, w), u != w),
                     o.And(S.live(c), c != S.a, S.par(c) == u, S.anc(c, w)))


def _c_depth(env, S, w):
    o = env.o
    return o.Implies(o.And(S.active, S.live(w)), o.And(
        0 <= S.depth(w), S.depth(w) <= env.M.L, o.Implies(w != S.a, S.depth(w) <= S.depth(S.par(w)))))


def _c_deeper(env, S, u, w):
    o = env.o
    return o.Implies(o.And(S.active, S.live(u), S.live(w), o.prefixof(S.path(u), S.path(w))),
                     S.depth(u) >= S.depth(w))


def _c_states(env, S, w, m):
    o, M = env.o, env.M
    return o.Implies(o.And(S.active, S.live(w), 0 <= m, m <= S.depth(w)), o.And(
        S.st(w, m) == M.state(m, S.path(w)), o.Implies(m >= 1, S.cx(w, m) == M.ctx(m, S.path(w)))))


def _c_base(env, S, l):
    o, M = env.o, env.M
    return o.Implies(o.And(S.active, 1 <= l, l <= M.L), S.base(l) == M.ctx(l, o.init(S.C)))


def _c_exits(env, S, w):
    o, M = env.o, env.M
    return o.Implies(o.And(S.active, S.live(w)), o.And(
        0 <= S.xd(w), S.xd(w) <= S.depth(w), o.Implies(S.xd(w) >= 1, S.xtok(w) == M.exit(S.xd(w), S.path(w)))))


CLAUSES = (
    Clause("thm1", "C = ar(k)", (), _c_ar),
    Clause("thm2", "st, cx = state, ctx of own path", ("node", "layer"), _c_states,
           lambda S, w, m: [S.st(w, m), S.cx(w, m)]),
    Clause("thm2", "committed cache = ctx(l, init C)", ("layer",), _c_base, lambda S, l: [S.base(l)]),
    Clause("thm2", "exit tokens = exit(xd, path)", ("node",), _c_exits, lambda S, w: [S.live(w)]),
    Clause("thm3", "anchor path = C", (), _c_anchor),
    Clause("thm3", "path = parent path + token", ("node",), _c_paths, lambda S, w: [S.live(w)]),
    Clause("thm3", "no two nodes share a path", ("node", "node"), _c_unique,
           lambda S, u, w: [(S.live(u), S.live(w))]),
    Clause("thm3", "ancestry = path prefix", ("node", "node"), _c_anc,
           lambda S, u, w: [S.anc(u, w)], ghost=True),
    Clause("thm3", "child toward a descendant", ("node", "node"), _c_child,
           lambda S, u, w: [S.anc(u, w)], ghost=True),
    Clause("thm4", "child no deeper than parent", ("node",), _c_depth, lambda S, w: [S.live(w)]),
    Clause("thm4", "ancestors at least as deep", ("node", "node"), _c_deeper,
           lambda S, u, w: [(S.live(u), S.live(w))]),
)


# ------------------------------------------------------------------------- properties of one transition

def collapse_exact(env: Env, S: State, step: Step, params, x):
    """thm3 for a commit: the live nodes after it are exactly the old live nodes whose path extends the
    new C (plus the fresh anchor of a fallback, whose path is the new C)."""
    o, post = env.o, step.post
    kept = o.And(S.live(x), o.prefixof(post.C, S.path(x)))
    fresh = o.And(x == params[0], post.path(x) == post.C) if step.kind == "commit_fallback" else False
    return post.live(x) == o.Or(kept, fresh)


def dependency_rule(env: Env, S: State, step: Step, params, u):
    """thm4 for an advance: when v computes layer l = depth(v)+1, every live ancestor of v (a live node
    whose path is a proper prefix of v's) holds layer l; committed positions hold all L layers."""
    o, v = env.o, params[0]
    return o.Implies(o.And(S.live(u), u != v, o.prefixof(S.path(u), S.path(v))), S.depth(u) >= S.depth(v) + 1)


STEP_PROPERTIES = {
    "commit_match": ("thm3", "collapse keeps exactly the nodes extending the new C", collapse_exact),
    "commit_fallback": ("thm3", "collapse keeps exactly the nodes extending the new C", collapse_exact),
    "advance": ("thm4", "the dependency rule holds for the computed node-layer", dependency_rule),
}
