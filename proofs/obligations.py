"""The proof obligations of theorems 1-5: one function per obligation kind, each returning a Result.

For a theorem T (a group of invariant clauses, `fsm.CLAUSES`) and a transition X:

    init(T):      Axioms & Init(S)                   =>  T(S)
    step(T, X):   Axioms & Inv(S) & guard_X(S, args)  =>  T(X(S, args))
    property(X):  Axioms & Inv(S) & guard_X(S, args)  =>  prop_X(S, X(S, args))

where Inv is the conjunction of *all* clauses (every theorem's and the ghost ones). Proving every
step(T, X) proves that Inv is inductive, so it holds after any number of transitions, for lattices
of any size (node ids range over all integers), for every model (the primitives are uninterpreted),
and for every policy, explorer count, exit set, priority rule, buffer size and eviction choice (the
transition arguments are free constants, the exit set a free predicate). Theorem 5 is the same set of
obligations with the Gumbel-sampling model. Each clause of T is its own query (`kernel.Prover`, one
solver per transition); a printed line is proved only if all of them are.

How the quantifiers are handled, and why that is sound and terminates:
- Node variables of the hypotheses (Inv, and the universal guards: "no live child has token t",
  "w is a leaf", "no child matches") are instantiated by us, on the obligation's *instantiation set*
  (`instantiation_set`): B = the anchor, the transition's node arguments and the goal's witnesses;
  K = B, their parents, and ch(x, y) for x in B and each witness y (the child of x toward y). A
  clause with two node variables takes the pairs of K with at least one element in B. An instance
  of a universally true formula is true, so this only weakens the hypotheses: sound. It is finite.
- Layer variables stay universally quantified, with explicit patterns: st(w, m) or cx(w, m) for the
  "states" clause, base(l) for the committed cache. Instances create `state`/`ctx` terms, never an
  `st`, `cx` or `base` term, so no instance triggers another: finitely many.
- The sequence axioms S1-S8 (`logic.AxOps`) are quantified with patterns whose instances create no
  new sequence terms except init(snoc(p, t)) (equal to p) and only `pre` atoms between existing terms
  and their subterms: finitely many.
- The model's definitions (state, ctx, ar) are never quantified: each obligation gets their ground
  instances at the points its transition computes (`Step.facts`).
- The goal is negated and skolemized by hand (witness constants u, w, m), so it has no quantifier.
- MBQI is off; Z3's effort is capped by a deterministic `rlimit`; `unknown` is a failure.

A failed obligation says what Z3 answered and, from the model checker, shows a short real execution
that violates the clause if there is one (`bmc.diagnose`).

Assumed: the model axioms of `proofs.model` (a causal decoder, as uninterpreted functions), L in the
exit set, a non-empty prompt whose prefill is AR's, and the sequence facts S1-S8 (proved for Z3's
sequences by `lemma_obligations`). Not covered: floating point (DESIGN.md section 8: the primitives
are exact functions here, batch-invariant by construction), liveness, and everything listed in the
package docstring (`proofs/__init__.py`).
"""
from __future__ import annotations

import z3

from . import fsm
from .fsm import CLAUSES, STEP_PROPERTIES, TRANSITIONS, Env, State
from .kernel import Prover, Result
from .logic import AxOps, Domain
from .model import SymbolicModel

THEOREMS = {
    "thm1": "committed sequence = AR's",
    "thm2": "retained states = state(layer, path)",
    "thm3": "lattice shape; collapse keeps exactly the nodes extending C",
    "thm4": "dependency rule",
}

def hypothesis(env: Env, S: State, clause: fsm.Clause):
    if not clause.sorts:
        return clause.body(env, S)
    pats = (lambda *v: clause.patterns(S, *v)) if clause.patterns else None
    return env.D.forall(clause.sorts, lambda *v: clause.body(env, S, *v), pats)


def invariant(env: Env, S: State):
    return [hypothesis(env, S, c) for c in CLAUSES]


def instantiation_set(S: State, args, skolems):
    """The ground node terms the hypotheses are instantiated at: the anchor, the transition's node
    arguments and the goal's witnesses (B), their parents, and the child of each of them toward each
    witness (`ch`). Pairs of node variables range over pairs with at least one element in B. Every
    proof step of an obligation speaks about these nodes."""
    B = [S.a] + list(args) + list(skolems)
    K = B + [S.par(x) for x in B] + [S.ch(x, y) for x in B for y in skolems if x is not y]
    out, seen = [], set()
    for t in K:
        if t.get_id() not in seen:
            seen.add(t.get_id())
            out.append(t)
    return Domain.terms(out, core=B)


def _explain(env, pre, post, nodes, extra=()):
    """A counterexample to induction, readable: the named nodes before and after the step."""
    def render(m):
        ev = lambda t: m.eval(t, model_completion=True)  # noqa: E731
        lines = [f"  L={ev(env.M.L)} C={ev(pre.C)} k={ev(pre.k)} anchor={ev(pre.a)}"
                 f"  ->  C'={ev(post.C)} k'={ev(post.k)} anchor'={ev(post.a)} active'={ev(post.active)}"]
        for name, t in extra:
            lines.append(f"  {name} = {ev(t)}")
        seen = set()
        for x in nodes:
            xv = ev(x)
            if str(xv) in seen:
                continue
            seen.add(str(xv))
            for tag, S in (("pre ", pre), ("post", post)):
                lines.append(f"  {tag} node {xv}: live={ev(S.live(xv))} par={ev(S.par(xv))} tok={ev(S.tok(xv))} "
                             f"pos={ev(S.pos(xv))} depth={ev(S.depth(xv))} xd={ev(S.xd(xv))} "
                             f"xtok={ev(S.xtok(xv))} path={ev(S.path(xv))} len={ev(env.o.length(S.path(xv)))}")
        return "\n".join(lines)
    return render


def _group(thm, sampling):
    return thm if sampling == "greedy" else f"thm5/{thm}"


def _combine(group, name, results, sampling="greedy", mut=frozenset()) -> Result:
    """One line for the sub-obligations (one per clause) of a (theorem, transition). A failure carries
    Z3's answer and, from the model checker, a real execution violating the clause if one is short."""
    from .bmc import diagnose
    bad = [r for r in results if not r.ok]
    secs = sum(r.seconds for r in results)
    label = f"{name} ({len(results)} clause{'s' * (len(results) > 1)})"
    if not bad:
        return Result(group, label, "unsat", "proved", secs)
    r = bad[0]
    return Result(group, label, "unsat", r.verdict, secs,
                  f"  clause {r.name!r}: Z3 says {r.verdict}\n{r.detail}\n{diagnose(r.name, sampling, mut)}")


class Context:
    """What the obligations of one model share: a symbolic pre-state, the transition arguments
    (node arguments n0, n1, n2 and a token argument), the goal witnesses (nodes u, w and a layer m),
    the instantiation set, and the invariant instantiated on it."""

    def __init__(self, sampling: str, mut=frozenset()):
        self.sampling, self.mut = sampling, frozenset(mut)
        self.M = SymbolicModel(sampling)
        self.pre = State.symbolic("pre", AxOps.Seq)
        self.nodes = [z3.Int(f"n{i}") for i in range(3)]
        self.token = z3.Int("t")
        self.u, self.w, self.m = z3.Int("u"), z3.Int("w"), z3.Int("m")
        self.env = Env(self.M, D=instantiation_set(self.pre, self.nodes, [self.u, self.w]), mut=self.mut)
        self.inv = invariant(self.env, self.pre)
        self._steps = {}

    def args(self, kind):
        nodes, out = iter(self.nodes), []
        for srt in fsm.param_sorts(kind, self.mut):
            out.append(next(nodes) if srt == "node" else self.token)
        return out

    def step(self, kind):
        if kind not in self._steps:
            args = self.args(kind)
            step = fsm.transition(self.env, self.pre, kind, args)
            hyps = self.M.axioms() + self.inv + [step.guard] + step.facts
            self._steps[kind] = (args, step, Prover(hyps))
        return self._steps[kind]

    def witnesses(self, clause):
        it = {"node": iter([self.u, self.w]), "layer": iter([self.m])}
        return [next(it[s]) for s in clause.sorts]


_contexts: dict = {}


def context(sampling: str, mut=frozenset()) -> Context:
    key = (sampling, frozenset(mut))
    if key not in _contexts:
        _contexts[key] = Context(sampling, mut)
    return _contexts[key]


def init_obligation(thm: str, sampling: str = "greedy") -> Result:
    """Axioms & Init(S) => T(S), one query per clause of T."""
    cx = context(sampling)
    S = State.symbolic("s", AxOps.Seq)
    env = Env(cx.M, D=instantiation_set(S, [], [cx.u, cx.w]))
    f, facts = fsm.init(env, S)
    prover = Prover([f] + facts)
    group = _group(thm, sampling)
    results = [prover.prove(group, c.name, z3.Not(c.body(env, S, *cx.witnesses(c))),
                            explain=_explain(env, S, S, [S.a, cx.u, cx.w]))
               for c in CLAUSES if c.theorem == thm]
    return _combine(group, f"{THEOREMS[thm]}: Init", results, sampling)


def step_obligation(thm: str, kind: str, sampling: str = "greedy", mut=frozenset()) -> Result:
    """Axioms & Inv(S) & guard(S, args) => T(step(S, args)), one query per clause of T (with `mut`:
    the same obligation for mutated rules, which must not be proved)."""
    cx = context(sampling, mut)
    args, step, prover = cx.step(kind)
    nodes = [cx.pre.a] + [x for x in args if x is not cx.token] + [cx.u, cx.w]
    explain = _explain(cx.env, cx.pre, step.post, nodes + [cx.pre.par(x) for x in nodes], [("args", args)])
    group = _group(thm, sampling)
    results = [prover.prove(group, c.name, z3.Not(c.body(cx.env, step.post, *cx.witnesses(c))), explain=explain)
               for c in CLAUSES if c.theorem == thm]
    return _combine(group, f"{THEOREMS[thm]}: {kind}", results, sampling, cx.mut)


def property_obligation(kind: str, sampling: str = "greedy", mut=frozenset()) -> Result:
    """Axioms & Inv(S) & guard(S, args) => prop(S, step(S, args)) for a transition's own property."""
    thm, title, prop = STEP_PROPERTIES[kind]
    cx = context(sampling, mut)
    args, step, prover = cx.step(kind)
    goal = z3.Not(prop(cx.env, cx.pre, step, args, cx.u))
    nodes = [cx.pre.a, cx.u] + [x for x in args if x is not cx.token]
    return prover.prove(_group(thm, sampling), f"{title}: {kind}", goal,
                        explain=_explain(cx.env, cx.pre, step.post, nodes, [("args", args)]))


def all_obligations(samplings=("greedy", "gumbel")):
    """(callable, args) for every obligation, in the order they are printed."""
    out = []
    for sampling in samplings:
        for thm in THEOREMS:
            out.append((init_obligation, (thm, sampling)))
            for kind in TRANSITIONS:
                out.append((step_obligation, (thm, kind, sampling)))
            for kind, (t, _, _) in STEP_PROPERTIES.items():
                if t == thm:
                    out.append((property_obligation, (kind, sampling)))
    return out


def lemma_obligations() -> list[Result]:
    """The sequence axioms of `AxOps` (S1-S8), each proved valid in Z3's native theory of sequences:
    the proofs' reading of prefixes is sound for real sequences."""
    from .kernel import prove
    return [prove("lemma", f"{name} holds for Z3's native sequences", [], z3.Not(f))
            for name, f in AxOps.native_meaning().items()]
