"""Bounded model checking: the same transition system unrolled from Init for a few steps.

A bug finder, not a proof: node ids range over 0..K-1, layers over 0..L for a small fixed L, the
prompt has one or two tokens, an execution has at most N transitions. Within those bounds the search
is exhaustive over every transition and every argument (which node, which token, which fresh id),
over every exit set E, and over every interpretation of the model's primitives. Sequences are `BSeq`
(a length and N token slots, exact for every sequence an execution can build) and state, ctx, ar are
computed by unrolling their definitions (`model.BoundedModel`), so an execution found respects the
model's definitions exactly: a counterexample is a real run of the rules.

One query per check: N transitions, where a `skip` may pad the start, so shorter runs count too.
Search aids, all restrictions of the search and so harmless to a counterexample: node ids are
interchangeable, so the initial anchor is id 0 and a new node takes the lowest dead id (as the core
fills slots in order); exit tokens are read from a 3-token vocabulary (so guesses collide); and one
mutant (`reuse_prefix_state`, which needs five nodes and seven moves) is searched among executions
of advances and expansions only, for the states clause.

It is used for:
- `bounded_check`: the correct rules violate no theorem within the bound;
- `enabled`: the initial state exists, and every transition is taken from a reachable state that
  satisfies the whole invariant: a model of the hypotheses of every inductive obligation about that
  transition, so no proof is vacuous;
- `refute`: a mutant (a deliberately wrong rule, `fsm.MUTANTS`) violates a theorem; the trace that
  shows it is printed;
- `diagnose`: a short real violation of a clause whose inductive obligation was not proved.
"""
from __future__ import annotations

import z3

from . import fsm
from .fsm import CLAUSES, STEP_PROPERTIES, TRANSITIONS, Env, State
from .kernel import Result, search
from .logic import BSeq, Domain
from .model import H, Ctx, BoundedModel

KINDS = tuple(TRANSITIONS) + ("skip",)  # skip: a stutter step, so that one query of n steps covers shorter runs
VOCAB = 3  # transition tokens and prompt tokens are 0..VOCAB-1 (the heads' answers are any ints)


def _lookup(table, x):
    """table[x] for a concrete or symbolic index x (an if-then-else chain; indices are kept in range
    by the unrolling's constraints)."""
    if isinstance(x, int):
        return table[min(max(x, 0), len(table) - 1)]
    if z3.is_int_value(x):
        return table[min(max(x.as_long(), 0), len(table) - 1)]
    out = table[-1]
    for i in range(len(table) - 2, -1, -1):
        if isinstance(out, BSeq):
            out = BSeq(z3.If(x == i, table[i].n, out.n), [z3.If(x == i, a, b) for a, b in zip(table[i].toks, out.toks)])
        else:
            out = z3.If(x == i, table[i], out)
    return out


class Unrolling:
    """States s_0..s_n of one bounded execution, each a table of fresh constants, and the constraints
    linking them: Init(s_0) and, for each step i, "some transition with some arguments is enabled in
    s_i and s_{i+1} is its result"."""

    def __init__(self, *, L=2, K=3, steps=8, sampling="greedy", mut=frozenset(), prompt_len=(1, 2), kinds=None):
        self.L, self.K, self.mut, self.sampling = L, K, frozenset(mut), sampling
        self.allowed = [KINDS.index(k) for k in (kinds or KINDS)]
        self.N = prompt_len[1] + steps  # no sequence of an execution of `steps` transitions is longer
        self.M = BoundedModel(sampling, L, self.N, steps, prompt_len)
        self.D = Domain.finite(range(K), range(L + 1))
        self.env = Env(self.M, self.M.o, self.D, self.mut)
        self.states, self.kinds, self.steps = [], [], []
        s0, ranges = self._fresh_state(0)
        self.states.append(s0)
        f, facts = fsm.init(self.env, s0)
        P = self.M.P
        self.start = [f, *facts, *ranges, s0.a == 0, *[z3.And(0 <= t, t < VOCAB) for t in P.toks]]

    def _fresh_state(self, i):
        K, L, tag = self.K, self.L, f"s{i}"
        I, B = z3.IntSort(), z3.BoolSort()
        node = {f: [z3.Const(f"{tag}.{f}[{x}]", srt) for x in range(K)]
                for f, srt in dict(live=B, par=I, tok=I, pos=I, depth=I, xd=I, xtok=I).items()}
        node["path"] = [BSeq.fresh(f"{tag}.path[{x}]", self.N) for x in range(K)]
        layer = {f: [[z3.Const(f"{tag}.{f}[{x}][{m}]", srt) for m in range(L + 1)] for x in range(K)]
                 for f, srt in dict(st=H, cx=Ctx).items()}
        pair = {f: [[z3.Const(f"{tag}.{f}[{x}][{y}]", srt) for y in range(K)] for x in range(K)]
                for f, srt in dict(anc=B, ch=I).items()}
        base = [z3.Const(f"{tag}.base[{m}]", Ctx) for m in range(L + 1)]
        two = lambda t: lambda x, y: _lookup([_lookup(row, y) for row in t], x)  # noqa: E731
        state = State(
            **{f: (lambda t: lambda x: _lookup(t, x))(t) for f, t in node.items()},
            **{f: two(t) for f, t in layer.items()}, **{f: two(t) for f, t in pair.items()},
            base=lambda m: _lookup(base, m),
            active=z3.Bool(f"{tag}.active"), C=BSeq.fresh(f"{tag}.C", self.N), k=z3.Int(f"{tag}.k"),
            a=z3.Int(f"{tag}.a"), draws=z3.Int(f"{tag}.draws"))
        inrange = lambda v: z3.And(0 <= v, v < K)  # noqa: E731
        ranges = [inrange(state.a)] + [inrange(v) for v in node["par"]] + [inrange(v) for r in pair["ch"] for v in r]
        ranges += [z3.And(0 <= v, v < VOCAB) for v in node["xtok"]]  # small vocabulary: guesses collide
        return state, ranges

    def extend(self):
        """Constraints of one more transition s_n -> s_{n+1} (any kind, any arguments)."""
        i = len(self.kinds)
        S = self.states[i]
        nxt, ranges = self._fresh_state(i + 1)
        kind = z3.Int(f"step{i + 1}.kind")
        nodes = [z3.Int(f"step{i + 1}.n{j}") for j in range(3)]
        tok = z3.Int(f"step{i + 1}.t")
        steps = {}
        for name in KINDS:
            if name == "skip":
                steps[name] = ([], fsm.Step("skip", z3.BoolVal(True), S, []))
                continue
            it = iter(nodes)
            args = [next(it) if s == "node" else tok for s in fsm.param_sorts(name, self.mut)]
            steps[name] = (args, fsm.transition(self.env, S, name, args))
        cons = [z3.Or(*[kind == j for j in self.allowed]), *[z3.And(0 <= n, n < self.K) for n in nodes], 0 <= tok, tok < VOCAB,
                *ranges, z3.Or(*[z3.And(kind == j, steps[name][1].guard) for j, name in enumerate(KINDS)])]
        # Symmetry breaking (node ids are interchangeable, skips only pad): a new node takes the lowest
        # dead id, as the core fills slots in order; skips come before every real step.
        for name in ("expand", "commit_fallback"):
            args = steps[name][0]
            fresh = args[2] if name == "expand" else args[0]
            cons.append(z3.Implies(kind == KINDS.index(name),
                                   z3.And(*[z3.Implies(j < fresh, S.live(j)) for j in range(self.K)])))
        if i > 0:
            cons.append(z3.Implies(kind == KINDS.index("skip"), self.kinds[-1] == KINDS.index("skip")))
        cons += [f for _, st in steps.values() for f in st.facts]

        o = self.M.o

        def pick(get):
            out = get(steps[KINDS[-1]][1].post)
            for j in range(len(KINDS) - 2, -1, -1):
                out = o.If(kind == j, get(steps[KINDS[j]][1].post), out)
            return out

        def tie(a, b):
            return a.same(b) if isinstance(a, BSeq) else a == b

        for x in range(self.K):
            for f in fsm.NODE_FIELDS:
                cons.append(tie(getattr(nxt, f)(x), pick(lambda P, f=f, x=x: getattr(P, f)(x))))
            for f in fsm.LAYER_FIELDS:
                for m in range(self.L + 1):
                    cons.append(getattr(nxt, f)(x, m) == pick(lambda P, f=f, x=x, m=m: getattr(P, f)(x, m)))
            for f in fsm.PAIR_FIELDS:
                for y in range(self.K):
                    cons.append(getattr(nxt, f)(x, y) == pick(lambda P, f=f, x=x, y=y: getattr(P, f)(x, y)))
        for m in range(self.L + 1):
            cons.append(nxt.base(m) == pick(lambda P, m=m: P.base(m)))
        for f in fsm.SCALARS:
            cons.append(tie(getattr(nxt, f), pick(lambda P, f=f: getattr(P, f))))
        self.kinds.append(kind)
        self.steps.append(steps)
        self.states.append(nxt)
        return cons

    # what is checked ----------------------------------------------------------------------------
    def violations(self, n, only=None):
        """(name, formula) for each theorem clause (ghost clauses excluded) violated in s_n, and each
        transition property violated by the step into s_n (`only`: clauses whose name starts so)."""
        S, env, out = self.states[n], self.env, []
        for c in CLAUSES:
            if c.ghost or (only and not c.name.startswith(only)):
                continue
            if c.sorts:
                bad = self.D.exists(c.sorts, lambda *v, c=c: z3.Not(c.body(env, S, *v)))
            else:
                bad = z3.Not(c.body(env, S))
            out.append((f"{c.theorem}: {c.name}", bad))
        if n > 0 and not only:
            pre, steps, kind = self.states[n - 1], self.steps[n - 1], self.kinds[n - 1]
            for name, (thm, title, prop) in STEP_PROPERTIES.items():
                args, step = steps[name]
                bad = self.D.exists(("node",), lambda x: z3.Not(prop(env, pre, step, args, x)))
                out.append((f"{thm}: {title} ({name})", z3.And(kind == KINDS.index(name), bad)))
        return out

    def invariant(self, n):
        """Every clause of the inductive invariant (ghost ones included) holds in s_n."""
        S, env = self.states[n], self.env
        return z3.And(*[c.body(env, S) if not c.sorts else self.D.forall(c.sorts, lambda *v, c=c: c.body(env, S, *v))
                        for c in CLAUSES])

    def bad(self, n, only=None):
        return z3.Or(*[f for _, f in self.violations(n, only)])

    # a readable trace ---------------------------------------------------------------------------
    def trace(self, model, n):
        ev = lambda t: model.eval(t, model_completion=True)  # noqa: E731
        M = self.M
        E = [d for d in range(1, self.L + 1) if z3.is_true(ev(M.E(d)))]
        ar = [_seq(ev, M.ar(j)) for j in range(3)]
        lines = [f"    L={self.L}, E={{{', '.join(map(str, E))}}}, sampling {self.sampling}; "
                 f"AR commits {ar[0]} -> {ar[1]} -> {ar[2]} -> ...",
                 "    0. init", f"         {self._describe(ev, 0)}"]
        shown = 0
        for i in range(n):
            name = KINDS[ev(self.kinds[i]).as_long()]
            if name == "skip":
                continue
            shown += 1
            args = ", ".join(f"{k}={ev(a)}" for k, a in zip(fsm.PARAM_NAMES[name], self.steps[i][name][0]))
            lines.append(f"    {shown}. {name}({args})")
            lines.append(f"         {self._describe(ev, i + 1)}")
        for name, f in self.violations(n):
            if z3.is_true(ev(f)):
                lines.append(f"    violated: {name}")
        return "\n".join(lines)

    def _describe(self, ev, i):
        S, M = self.states[i], self.M
        if not z3.is_true(ev(S.active)):
            return f"C={_seq(ev, S.C)}, stopped"
        a = ev(S.a).as_long()
        out = [f"C={_seq(ev, S.C)}"]
        for x in range(self.K):
            if not z3.is_true(ev(S.live(x))):
                continue
            d, xd = ev(S.depth(x)).as_long(), ev(S.xd(x)).as_long()
            s = f"{'anchor ' if x == a else ''}{x}:tok={ev(S.tok(x))}"
            if x != a:
                s += f",par={ev(S.par(x))}"
            s += f",depth={d}"
            if xd:
                s += f",exit@{xd}={ev(S.xtok(x))}"
            good = all(z3.is_true(ev(S.st(x, m) == M.state(m, S.path(x)))) for m in range(min(d, self.L) + 1))
            out.append(s + ("" if good else ",STALE"))
        return "  ".join(out)


def _seq(ev, p):
    """A bounded sequence's value in a model, as a list."""
    n = ev(p.n).as_long()
    return "[" + " ".join(str(ev(t)) for t in p.toks[:n]) + "]"


# ------------------------------------------------------------------------------------ the checks

# The bounds each mutant is searched with: the smallest that show it (a wrong rule usually shows
# within a few transitions; larger bounds only cost time).
MUTANT_BOUNDS = {
    "keep_first_child": dict(L=1, K=2, steps=4),
    "commit_below_L": dict(L=2, K=2, steps=3),
    "skip_dependency": dict(L=1, K=2, steps=2),
    "advance_past_ancestor": dict(L=2, K=2, steps=3),
    "promote_child_kv": dict(L=1, K=2, steps=4),
    "forget_promote": dict(L=1, K=2, steps=3),
    "reuse_discarded": dict(L=1, K=2, steps=5),
    "reuse_prefix_state": dict(L=1, K=5, steps=7, kinds=("advance", "expand"), only="st, cx"),
    "keep_nonmatching": dict(L=1, K=3, steps=5),
    "evict_nonleaf": dict(L=1, K=3, steps=3),
    "exit_stale_state": dict(L=1, K=1, steps=2),
    "fallback_same_pos": dict(L=1, K=2, steps=3),
    "gumbel_counter": dict(L=1, K=1, steps=2, sampling="gumbel"),
    "gumbel_relative": dict(L=1, K=2, steps=4, sampling="gumbel"),
}
ENABLED_BOUNDS = {
    None: dict(L=2, K=2, steps=0),
    "advance": dict(L=2, K=2, steps=1),
    "read_exit": dict(L=2, K=2, steps=2),
    "expand": dict(L=2, K=2, steps=1),
    "evict": dict(L=2, K=2, steps=2),
    "commit_match": dict(L=1, K=2, steps=4),
    "commit_fallback": dict(L=1, K=2, steps=3),
    "stop": dict(L=1, K=2, steps=1),
}


BOUNDED_CHECKS = (dict(L=2, K=2, steps=3), dict(L=1, K=2, steps=4), dict(L=1, K=2, steps=4, sampling="gumbel"))


def _padded(u, steps, goal):
    """One query: `steps` transitions (skip allowed, so shorter runs count), goal on the last."""
    cons = list(u.start)
    for _ in range(steps):
        cons += u.extend()
    return cons + [goal(u)]


def bounded_check(sampling="greedy", L=2, K=2, steps=3) -> Result:
    """No theorem is violated in any execution of at most `steps` transitions."""
    u = Unrolling(sampling=sampling, L=L, K=K, steps=steps)
    return search("bmc", f"{sampling}: no theorem violated in any execution of <= {steps} steps (L={L}, "
                  f"{K} node ids)", u.start, u.extend, u.bad, steps, expect="unsat", explain=u.trace)


def enabled(kind: str | None, sampling="greedy") -> Result:
    """Init is satisfiable (kind=None), or `kind` is the last step of some execution."""
    b = ENABLED_BOUNDS[kind]
    u = Unrolling(sampling=sampling, **b)
    if kind is None:
        return search("vacuity", f"{sampling}: axioms and initial state satisfiable", u.start, u.extend,
                      lambda n: z3.BoolVal(True), 0, expect="sat", explain=u.trace)
    j = KINDS.index(kind)
    # the last step is `kind`, taken from a reachable state that satisfies the whole invariant: a
    # model of the hypotheses (axioms, Inv, guard) of every inductive obligation about `kind`
    f = _padded(u, b["steps"], lambda u: z3.And(u.kinds[-1] == j, u.invariant(len(u.kinds) - 1)))
    return search("vacuity", f"{sampling}: {kind} enabled in a reachable state satisfying Inv", f, None,
                  lambda n: z3.BoolVal(True), 0, expect="sat", explain=lambda m, n: u.trace(m, len(u.kinds)))


def refute(mutant: str) -> Result:
    """A counterexample trace for a mutated rule: a theorem violated within the mutant's bound."""
    b = dict(MUTANT_BOUNDS[mutant])
    only = b.pop("only", None)
    u = Unrolling(mut={mutant}, **b)
    f = _padded(u, b["steps"], lambda u: u.bad(len(u.kinds), only))
    return search("mutant", f"{mutant}: {fsm.MUTANTS[mutant]}", f, None, lambda n: z3.BoolVal(True), 0,
                  expect="sat", mutant=True, explain=lambda m, n: u.trace(m, len(u.kinds)))


DIAGNOSE_BOUNDS = (dict(L=1, K=2, steps=4), dict(L=2, K=2, steps=4), dict(L=1, K=3, steps=5))


def diagnose(only: str | None, sampling="greedy", mut=frozenset()) -> str:
    """For an obligation that was not proved: look for a real execution that violates the clause
    (`only`: a clause-name prefix; None: any theorem), and return its trace, or say none was found
    within the bounds (then the invariant may need strengthening, or the proof more instances)."""
    for b in DIAGNOSE_BOUNDS:
        u = Unrolling(sampling=sampling, mut=mut, **b)
        f = _padded(u, b["steps"], lambda u: u.bad(len(u.kinds), only))
        s = z3.Solver()
        s.set("rlimit", 50_000_000)
        s.add(*f)
        if s.check() == z3.sat:
            return "  a reachable violation, found by bounded model checking:\n" + u.trace(s.model(), len(u.kinds))
    return ("  no reachable violation within the bounds "
            f"{', '.join(str(b) for b in DIAGNOSE_BOUNDS)}: the invariant may not be inductive (a stronger one "
            "is needed) or the obligation needs more instances")
