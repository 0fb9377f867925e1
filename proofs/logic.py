"""The little logic the rules are written in, and its readings: Z3 terms and Python values.

The transition rules and invariants of `proofs.fsm` are written once, against an `ops` object (the
connectives and the sequence operations) and a `Domain` (what "for every node" / "for every layer"
means). Comparisons (`==`, `<`, `+`) are Python operators, which Z3 terms, Python values and `BSeq`
all understand. The readings:

- `AxOps` (the inductive proofs): Z3 terms; sequences are an uninterpreted sort with the axioms S1-S8
  (each one proved valid for Z3's native sequences by `obligations.lemma_obligations`);
- `BoundedOps` (the model checker): Z3 terms; sequences are `BSeq`, at most N tokens, exact;
- `Z3Ops` (the lemmas): Z3's native sequences;
- `PyOps` (the conformance tests): Python bools, ints and tuples, evaluated on the real core's states.

Domains: `terms(nodes, core)` instantiates node variables on a finite list of ground node terms (one
proof obligation's instantiation set) and keeps layer variables quantified with patterns;
`finite(nodes, layers)` is a finite conjunction (model checking with Z3 terms, or a Python `all`).
"""
from __future__ import annotations

import itertools

import z3


class Z3Ops:
    """Connectives and sequence operations that build Z3 terms (sequences: Z3's native theory)."""

    concrete = False
    Seq = z3.SeqSort(z3.IntSort())

    @staticmethod
    def axioms():
        return []

    @staticmethod
    def And(*a):
        return z3.And(*a) if a else z3.BoolVal(True)

    @staticmethod
    def Or(*a):
        return z3.Or(*a) if a else z3.BoolVal(False)

    Not = staticmethod(z3.Not)
    Implies = staticmethod(z3.Implies)
    If = staticmethod(z3.If)

    @staticmethod
    def snoc(p, t):
        return z3.Concat(p, z3.Unit(z3.IntVal(t) if isinstance(t, int) else t))

    @staticmethod
    def prefixof(p, q):
        return z3.PrefixOf(p, q)

    @staticmethod
    def length(p):
        return z3.Length(p)

    @staticmethod
    def init(p):
        """p without its last element (the empty sequence stays empty)."""
        return z3.SubSeq(p, 0, z3.Length(p) - 1)

    @staticmethod
    def last(p):
        return p[z3.Length(p) - 1]


class AxOps(Z3Ops):
    """Sequences as an uninterpreted sort `Pfx` with the few facts about them that the proofs use.

    Z3's native sequence solver decides these facts, but it slows down sharply with the hundreds of
    prefix atoms an inductive step brings (every pair of nodes has a "path u is a prefix of path w"),
    so the proofs use this first-order theory instead:

        S1  init(snoc(p, t)) = p,  last(snoc(p, t)) = t,  len(snoc(p, t)) = len(p) + 1
        S2  len(p) >= 0
        S3  pre(p, p)
        S4  pre(p, q)  =>  len(p) <= len(q)
        S5  pre(p, q) & len(p) = len(q)  =>  p = q
        S6  pre(p, snoc(q, t))  <=>  p = snoc(q, t) or pre(p, q)
        S7  pre(snoc(q, t), r)  =>  pre(q, r)
        S8  pre(p, r) & pre(q, r) & len(p) = len(q)  =>  p = q

    Each is a theorem about finite sequences (pre = prefix-of), and `lemma_obligations` proves each
    one in Z3's native theory of sequences, so the proofs rest on Z3's sequences, not on this list.
    They are given to Z3 as quantified formulas with explicit patterns (the left-hand side of each,
    S8: the two `pre` terms). An instance creates no new `Pfx` term other than init(snoc(p, t)), equal
    to p, and the only new `pre` atoms come from S6 and S7, whose second argument (resp. first) is a
    proper subterm of the matched one: every instance is over the finitely many `Pfx` terms of the
    obligation and their subterms, so instantiation terminates. (Full transitivity, or "prefixes of
    one sequence are ordered", would create a `pre` atom for every pair and did not pay its way.)
    """

    Seq = z3.DeclareSort("Pfx")
    _snoc = z3.Function("snoc", Seq, z3.IntSort(), Seq)
    _init = z3.Function("init", Seq, Seq)
    _last = z3.Function("last", Seq, z3.IntSort())
    _len = z3.Function("len", Seq, z3.IntSort())
    _pre = z3.Function("pre", Seq, Seq, z3.BoolSort())

    @classmethod
    def snoc(cls, p, t):
        return cls._snoc(p, t)

    @classmethod
    def prefixof(cls, p, q):
        return cls._pre(p, q)

    @classmethod
    def length(cls, p):
        return cls._len(p)

    @classmethod
    def init(cls, p):
        return cls._init(p)

    @classmethod
    def last(cls, p):
        return cls._last(p)

    @classmethod
    def axioms(cls):
        P = cls.Seq
        p, q, r = z3.Const("p", P), z3.Const("q", P), z3.Const("r", P)
        t = z3.Int("t")
        sn, init, last, ln, pre = cls._snoc, cls._init, cls._last, cls._len, cls._pre
        return [
            ("S1", z3.ForAll([p, t], z3.And(init(sn(p, t)) == p, last(sn(p, t)) == t, ln(sn(p, t)) == ln(p) + 1),
                             patterns=[sn(p, t)])),
            ("S2", z3.ForAll([p], ln(p) >= 0, patterns=[ln(p)])),
            ("S3", z3.ForAll([p], pre(p, p), patterns=[pre(p, p)])),
            ("S4", z3.ForAll([p, q], z3.Implies(pre(p, q), ln(p) <= ln(q)), patterns=[pre(p, q)])),
            ("S5", z3.ForAll([p, q], z3.Implies(z3.And(pre(p, q), ln(p) == ln(q)), p == q), patterns=[pre(p, q)])),
            ("S6", z3.ForAll([p, q, t], pre(p, sn(q, t)) == z3.Or(p == sn(q, t), pre(p, q)),
                             patterns=[pre(p, sn(q, t))])),
            ("S7", z3.ForAll([q, t, r], z3.Implies(pre(sn(q, t), r), pre(q, r)), patterns=[pre(sn(q, t), r)])),
            ("S8", z3.ForAll([p, q, r], z3.Implies(z3.And(pre(p, r), pre(q, r), ln(p) == ln(q)), p == q),
                             patterns=[z3.MultiPattern(pre(p, r), pre(q, r))])),
        ]

    @classmethod
    def native_meaning(cls):
        """Each axiom with `Pfx` read as Z3's native sequences of Int (for `lemma_obligations`)."""
        S = z3.SeqSort(z3.IntSort())
        p, q, r = z3.Const("p", S), z3.Const("q", S), z3.Const("r", S)
        t = z3.Int("t")
        o = Z3Ops
        sn, init, last, ln, pre = o.snoc, o.init, o.last, o.length, o.prefixof
        return {
            "S1": z3.And(init(sn(p, t)) == p, last(sn(p, t)) == t, ln(sn(p, t)) == ln(p) + 1),
            "S2": ln(p) >= 0,
            "S3": pre(p, p),
            "S4": z3.Implies(pre(p, q), ln(p) <= ln(q)),
            "S5": z3.Implies(z3.And(pre(p, q), ln(p) == ln(q)), p == q),
            "S6": pre(p, sn(q, t)) == z3.Or(p == sn(q, t), pre(p, q)),
            "S7": z3.Implies(pre(sn(q, t), r), pre(q, r)),
            "S8": z3.Implies(z3.And(pre(p, r), pre(q, r), ln(p) == ln(q)), p == q),
        }


class BSeq:
    """A sequence of at most N ints, for the model checker: a length `n` and N token slots (slots at
    n and beyond are ignored). Exact for every sequence of length <= N; the model checker sizes N so
    that no sequence of a bounded execution is longer."""

    __slots__ = ("n", "toks")

    def __init__(self, n, toks):
        self.n, self.toks = n, tuple(toks)

    @classmethod
    def fresh(cls, name, N):
        return cls(z3.Int(f"{name}.len"), [z3.Int(f"{name}[{i}]") for i in range(N)])

    def __eq__(self, other):
        return z3.And(self.n == other.n, *[z3.Implies(i < self.n, a == b)
                                            for i, (a, b) in enumerate(zip(self.toks, other.toks))])

    def __ne__(self, other):
        return z3.Not(self == other)

    __hash__ = None

    def same(self, other):
        """Slot-wise equality (lengths and every slot): how a table entry is tied to its value."""
        return z3.And(self.n == other.n, *[a == b for a, b in zip(self.toks, other.toks)])

    def prefixes(self):
        """(j, the first j tokens) for j = 0..N."""
        return [(j, self.toks[:j]) for j in range(len(self.toks) + 1)]


class BoundedOps(Z3Ops):
    """Z3 connectives, sequences as `BSeq` of at most N tokens (the model checker)."""

    def __init__(self, N: int):
        self.N = N

    def If(self, c, a, b):
        if isinstance(a, BSeq):
            return BSeq(z3.If(c, a.n, b.n), [z3.If(c, x, y) for x, y in zip(a.toks, b.toks)])
        return z3.If(c, a, b)

    def snoc(self, p, t):
        return BSeq(p.n + 1, [z3.If(p.n == i, t, x) for i, x in enumerate(p.toks)])

    def prefixof(self, p, q):
        return z3.And(p.n <= q.n, *[z3.Implies(i < p.n, a == b) for i, (a, b) in enumerate(zip(p.toks, q.toks))])

    def length(self, p):
        return p.n

    def init(self, p):
        return BSeq(z3.If(p.n > 0, p.n - 1, 0), p.toks)

    def last(self, p):
        out = p.toks[0]
        for i in range(1, len(p.toks)):
            out = z3.If(p.n == i + 1, p.toks[i], out)
        return out


class PyOps:
    """The same operations on Python values (bools, ints, tuples)."""

    concrete = True

    @staticmethod
    def And(*a):
        return all(bool(x) for x in a)

    @staticmethod
    def Or(*a):
        return any(bool(x) for x in a)

    @staticmethod
    def Not(a):
        return not a

    @staticmethod
    def Implies(a, b):
        return (not a) or bool(b)

    @staticmethod
    def If(c, a, b):
        return a if c else b

    @staticmethod
    def snoc(p, t):
        return tuple(p) + (t,)

    @staticmethod
    def prefixof(p, q):
        return len(p) <= len(q) and tuple(q[: len(p)]) == tuple(p)

    @staticmethod
    def length(p):
        return len(p)

    @staticmethod
    def init(p):
        return tuple(p[:-1])

    @staticmethod
    def last(p):
        return p[-1] if len(p) else NO_VALUE


NO_VALUE = -(10**9)  # what a concrete table answers outside its support (never equal to a real value)


class Domain:
    """How a rule says "for every node" and "for every layer".

    - `terms(nodes)`: node variables range over a finite list of ground node *terms* (the
      instantiation set of one proof obligation); layer variables stay universally quantified, with
      the given patterns;
    - `finite(nodes, layers)`: a conjunction over a finite set of node ids and layers (bounded model
      checking; Z3 terms) or, with concrete values, a Python `all` (conformance).
    """

    def __init__(self, kind: str, nodes=(), layers=(), ops=Z3Ops, core=None):
        self.kind, self.nodes, self.layers, self.o = kind, tuple(nodes), tuple(layers), ops
        self.core = None if core is None else {t.get_id() for t in core}

    @classmethod
    def terms(cls, nodes, core=None):
        """Node variables range over `nodes`; a tuple of two or more node variables takes only the
        tuples with at least one element in `core` (if given)."""
        return cls("terms", nodes, core=core)

    @classmethod
    def finite(cls, nodes, layers, ops=Z3Ops):
        return cls("finite", nodes, layers, ops)

    _fresh = itertools.count()

    def _vars(self, sorts):
        n = next(self._fresh)
        return [z3.Int(f"{s}!{n}_{i}") for i, s in enumerate(sorts)]

    def forall(self, sorts: tuple[str, ...], body, patterns=None):
        """For every tuple of the given sorts ('node' or 'layer'): body(*vars). `patterns(*vars)` gives
        the E-matching patterns of a quantified layer variable (terms, or tuples for multi-patterns)."""
        if self.kind == "terms":
            out = []
            for t in itertools.product(*[self.nodes if s == "node" else [None] for s in sorts]):
                ns = [x for x in t if x is not None]
                if self.core is not None and len(ns) >= 2 and not any(x.get_id() in self.core for x in ns):
                    continue
                if "layer" not in sorts:
                    out.append(body(*t))
                    continue
                vs = self._vars(["layer"])
                args = [vs[0] if x is None else x for x in t]
                pats = [z3.MultiPattern(*p) if isinstance(p, tuple) else p for p in (patterns(*args) if patterns else [])]
                out.append(z3.ForAll(vs, body(*args), patterns=pats) if pats else z3.ForAll(vs, body(*args)))
            return z3.And(*out) if out else z3.BoolVal(True)
        ranges = [self.nodes if s == "node" else self.layers for s in sorts]
        return self.o.And(*[body(*t) for t in itertools.product(*ranges)])

    def exists(self, sorts, body):
        """Finite domains only (bad-state and enabledness queries of the model checker)."""
        assert self.kind == "finite"
        ranges = [self.nodes if s == "node" else self.layers for s in sorts]
        return self.o.Or(*[body(*t) for t in itertools.product(*ranges)])
