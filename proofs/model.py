"""The language model, abstracted: uninterpreted functions, and the functions AR decoding defines on them.

Primitives (uninterpreted: they may be *any* functions, so whatever is proved holds for every model):

    emb(token, position) -> H            the layer-0 state of a position (embedding; position included,
                                         so rotary or learned position encodings are covered)
    kvp(layer, H) -> KV                  the key/value entries a position writes at `layer`, from its
                                         input state at layer-1
    push(Ctx, KV) -> Ctx, nil            a causal KV cache: the entries of a sequence of positions
    blk(layer, H, Ctx) -> H              one transformer block: a position's state at `layer` from its
                                         state at layer-1 and the KV cache of itself and every earlier
                                         position of its own sequence at `layer`
    head(depth, H) -> token              the exit head (argmax, ties to the lowest id) at `depth`
    logits(depth, H), noise(pos), gmax   seeded Gumbel sampling: token = gmax(logits, noise(pos)) =
                                         argmax(logits / T + G(seed, pos)); the noise is keyed only by
                                         the absolute position `pos` of the token being chosen

Defined functions (what AR decoding computes; a prefix p is a sequence of token ids, its last element
at position len(p)-1):

    state(0, p)  = emb(last(p), len(p)-1)
    state(m, p)  = blk(m, state(m-1, p), ctx(m, p))                                   (1 <= m <= L)
    ctx(m, p)    = nil if p is empty, else push(ctx(m, init(p)), kvp(m, state(m-1, p)))
    exit(d, p)   = head(d, state(d, p))           (greedy)
                 = gmax(logits(d, state(d, p)), noise(len(p)))                          (Gumbel)
    final(p)     = exit(L, p)
    ar(0) = P,   ar(k+1) = ar(k) followed by final(ar(k))                  (AR's output after k steps)

These are well-founded recursive definitions (measure: (m, len(p)), with state(m, p) above ctx(m, p)),
so for every choice of the primitives there is exactly one `state`, `ctx` and `ar`: the axioms are
consistent and say nothing about the model beyond "it is a causal decoder". A causal transformer is
one such choice (push a list constructor, blk attention + MLP over that list); so is every other.

Three readings, the same primitives:
- `SymbolicModel` (the inductive proofs): state, ctx and ar are uninterpreted function symbols and
  every obligation is given the defining equations *as ground instances*, at the points where its
  transition computes something (`unfold_state`, `unfold_ar`). An instance of a valid equation is
  valid, so this is sound; no quantifier over prefixes or layers is ever handed to Z3, so nothing
  can loop.
- `BoundedModel` (the model checker): sequences of at most N tokens, and state, ctx, ar *computed* as
  terms by unrolling the definitions, so every execution found respects them exactly.
- `ConcreteModel` (the conformance tests), in Python: the primitives build hash-consed terms (the
  free, Herbrand interpretation: two states are equal only if they were computed the same way from
  the same inputs), and the heads are fixed pseudo-random functions of those terms.
"""
from __future__ import annotations

import random

import numpy as np
import z3

from .logic import NO_VALUE, AxOps, PyOps

SAMPLINGS = ("greedy", "gumbel")

H = z3.DeclareSort("H")
KV = z3.DeclareSort("KV")
Ctx = z3.DeclareSort("Ctx")
Logits = z3.DeclareSort("Logits")
Noise = z3.DeclareSort("Noise")
_I, _B = z3.IntSort(), z3.BoolSort()

emb = z3.Function("emb", _I, _I, H)
kvp = z3.Function("kvp", _I, H, KV)
push = z3.Function("push", Ctx, KV, Ctx)
nil = z3.Const("nil", Ctx)
blk = z3.Function("blk", _I, H, Ctx, H)
head = z3.Function("head", _I, H, _I)
logits = z3.Function("logits", _I, H, Logits)
noise = z3.Function("noise", _I, Noise)
gmax = z3.Function("gmax", Logits, Noise, _I)
E_fun = z3.Function("E", _I, _B)


class SymbolicModel:
    """The model for the inductive proofs: L is a symbolic constant (any depth >= 1), sequences are
    read with `AxOps`, state/ctx/ar are uninterpreted and defined by ground instances."""

    def __init__(self, sampling: str = "greedy", ops=AxOps):
        assert sampling in SAMPLINGS
        self.sampling, self.o = sampling, ops
        Seq = self.Seq = ops.Seq
        self.L = z3.Int("L")
        self.P = z3.Const("P", Seq)
        self.E = E_fun
        self.emb, self.kvp, self.push, self.nil, self.blk = emb, kvp, push, nil, blk
        self.state = z3.Function("state", _I, Seq, H)
        self.ctx = z3.Function("ctx", _I, Seq, Ctx)
        self.ar = z3.Function(f"ar_{sampling}", _I, Seq)

    # what the model computes -------------------------------------------------------------------
    def exit(self, d, p):
        h = self.state(d, p)
        if self.sampling == "greedy":
            return head(d, h)
        return gmax(logits(d, h), noise(self.o.length(p)))

    def final(self, p):
        return self.exit(self.L, p)

    def read(self, d, h, key):
        """What an executor's exit head answers for a state h at depth d; `key` is the position the
        sampling noise is keyed by (the position of the token being chosen)."""
        if self.sampling == "greedy":
            return head(d, h)
        return gmax(logits(d, h), noise(key))

    # axioms and ground instances of the definitions ---------------------------------------------
    def axioms(self):
        return [self.L >= 1, self.E(self.L), self.o.length(self.P) >= 1] + [f for _, f in self.o.axioms()]

    def unfold_state(self, m, p):
        o = self.o
        return [self.state(m, p) == z3.If(m <= 0, emb(o.last(p), o.length(p) - 1),
                                          blk(m, self.state(m - 1, p), self.ctx(m, p))),
                self.ctx(m, p) == z3.If(o.length(p) <= 0, nil,
                                        push(self.ctx(m, o.init(p)), kvp(m, self.state(m - 1, p))))]

    def unfold_ar(self, k):
        return [self.ar(k) == z3.If(k <= 0, self.P, self.o.snoc(self.ar(k - 1), self.final(self.ar(k - 1))))]


class BoundedModel:
    """The model for the bounded model checker: sequences are `BSeq` (at most N tokens), L is a
    number, and state, ctx, exit, final, ar are *computed* as terms over the primitives by unrolling
    their definitions in Python (an if-then-else over the possible lengths and layers). Exact: every
    interpretation of the primitives gives the defined functions, and nothing else is assumed."""

    def __init__(self, sampling: str, L: int, N: int, max_commits: int, prompt_len=(1, 2)):
        from .logic import BSeq, BoundedOps
        assert sampling in SAMPLINGS
        self.sampling, self.L_int, self.N = sampling, L, N
        self.o = BoundedOps(N)
        self.L = z3.IntVal(L)
        self.E = E_fun
        self.emb, self.kvp, self.push, self.nil, self.blk = emb, kvp, push, nil, blk
        self.P = BSeq.fresh("P", N)
        lo, hi = prompt_len
        self.prompt_constraints = [lo <= self.P.n, self.P.n <= hi]
        self._S: dict = {}
        self._Cx: dict = {}
        self._ar = [self.P]
        for _ in range(max_commits):
            p = self._ar[-1]
            self._ar.append(self.o.snoc(p, self.final(p)))

    # the definitions, on token tuples of known length
    def _key(self, toks):
        return tuple(t.get_id() for t in toks)

    def S(self, m, toks):
        key = (m, self._key(toks))
        if key not in self._S:
            if m <= 0:
                self._S[key] = emb(toks[-1] if toks else z3.IntVal(-1), len(toks) - 1)
            else:
                self._S[key] = blk(m, self.S(m - 1, toks), self.Cx(m, toks))
        return self._S[key]

    def Cx(self, m, toks):
        key = (m, self._key(toks))
        if key not in self._Cx:
            self._Cx[key] = nil if not toks else push(self.Cx(m, toks[:-1]), kvp(m, self.S(m - 1, toks)))
        return self._Cx[key]

    @staticmethod
    def _case(x, values, lo=0):
        """values[i] where x = lo + i, as an if-then-else (the last value outside the range)."""
        if isinstance(x, int) or z3.is_int_value(x):
            i = (x if isinstance(x, int) else x.as_long()) - lo
            return values[min(max(i, 0), len(values) - 1)]
        out = values[-1]
        for i in range(len(values) - 2, -1, -1):
            out = z3.If(x == lo + i, values[i], out)
        return out

    def _layers(self, m, f):
        return self._case(m, [f(j) for j in range(self.L_int + 1)])

    def state(self, m, p):
        return self._layers(m, lambda j: self._case(p.n, [self.S(j, t) for _, t in p.prefixes()]))

    def ctx(self, m, p):
        return self._layers(m, lambda j: self._case(p.n, [self.Cx(j, t) for _, t in p.prefixes()]))

    def exit(self, d, p):
        h = self.state(d, p)
        if self.sampling == "greedy":
            return head(d, h)
        return gmax(logits(d, h), noise(p.n))

    def final(self, p):
        return self.exit(self.L_int, p)

    def read(self, d, h, key):
        if self.sampling == "greedy":
            return head(d, h)
        return gmax(logits(d, h), noise(key))

    def ar(self, k):
        vals = self._ar
        if isinstance(k, int) or z3.is_int_value(k):
            return vals[min(max(k if isinstance(k, int) else k.as_long(), 0), len(vals) - 1)]
        out = vals[-1]
        for i in range(len(vals) - 2, -1, -1):
            out = self.o.If(k == i, vals[i], out)
        return out

    def axioms(self):
        return [self.E(self.L)] + self.prompt_constraints

    def unfold_state(self, m, p):
        return []

    def unfold_ar(self, k):
        return []


_TERM_ARGS = {"kvp": {1}, "push": {0, 1}, "blk": {1, 2}}  # which arguments of a term are terms
_OPCODE = {"nil": 1, "emb": 2, "kvp": 3, "push": 4, "blk": 5}  # (str hashes vary between processes)


class ConcreteModel:
    """A concrete model for the conformance tests: free (hash-consed) terms for states and caches,
    pseudo-random heads over a tiny vocabulary (so guesses often collide with the final token)."""

    o = PyOps

    def __init__(self, L: int, exits, prompt, vocab: int = 3, sampling: str = "greedy", seed: int = 0):
        assert sampling in SAMPLINGS
        self.L, self.exits, self.P = int(L), frozenset(int(e) for e in exits) | {int(L)}, tuple(int(t) for t in prompt)
        self.vocab, self.sampling, self.seed = vocab, sampling, seed
        self.terms: list[tuple] = []
        self.index: dict[tuple, int] = {}
        self.shash: list[int] = []  # a structural hash of each term: the heads depend on the term only
        self.nil = self._mk("nil")
        self._state: dict = {}
        self._ctx: dict = {}
        self._ar = [self.P]
        self.reads: dict = {}  # (depth, state, key) -> token: what the heads answered

    def _mk(self, *key):
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.terms)
            self.terms.append(key)
            op, *args = key
            # a term argument that is no term (NO_VALUE: a layer never computed, as a move the rules refuse
            # reads) hashes as itself, so the move's guard is what reports it
            kids = [self.shash[a] if op in _TERM_ARGS and k in _TERM_ARGS[op] and 0 <= a < len(self.shash) else a
                    for k, a in enumerate(args)]
            self.shash.append(hash((_OPCODE[op], *kids)))
        return i

    # primitives
    def E(self, d):
        return d in self.exits

    def emb(self, t, pos):
        return self._mk("emb", t, pos)

    def kvp(self, m, h):
        return self._mk("kvp", m, h)

    def push(self, c, kv):
        return self._mk("push", c, kv)

    def blk(self, m, h, c):
        return self._mk("blk", m, h, c)

    def read(self, d, h, key):
        if self.sampling == "greedy":
            key = 0  # a greedy head does not look at the position
            tok = random.Random(hash((self.seed, 1, d, self.shash[h]))).randrange(self.vocab)
        else:
            lg = np.random.default_rng([self.seed, 2, d, self.shash[h] % 2**62]).normal(size=self.vocab)
            g = np.random.default_rng([self.seed, 3, max(int(key), 0)]).gumbel(size=self.vocab)
            tok = int(np.argmax(lg + g))  # ties: the lowest id, as np.argmax
        self.reads[(d, h, key)] = tok
        return tok

    # defined functions
    def state(self, m, p):
        key = (m, p)
        if key not in self._state:
            if m <= 0:
                v = self.emb(p[-1] if p else NO_VALUE, len(p) - 1)
            else:
                v = self.blk(m, self.state(m - 1, p), self.ctx(m, p))
            self._state[key] = v
        return self._state[key]

    def ctx(self, m, p):
        key = (m, p)
        if key not in self._ctx:
            self._ctx[key] = self.nil if not p else self.push(self.ctx(m, p[:-1]), self.kvp(m, self.state(m - 1, p)))
        return self._ctx[key]

    def exit(self, d, p):
        return self.read(d, self.state(d, p), len(p))

    def final(self, p):
        return self.exit(self.L, p)

    def ar(self, k):
        while len(self._ar) <= k:
            p = self._ar[-1]
            self._ar.append(p + (self.final(p),))
        return self._ar[k] if k >= 0 else self.P

    def axioms(self):
        return []

    def unfold_state(self, m, p):
        return []

    def unfold_ar(self, k):
        return []
