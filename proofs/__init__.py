"""Z3 proofs that DEX is lossless for every model (issue 6; DESIGN.md section 3).

`python -m proofs [--json]` runs everything below and prints one line per obligation with its
verdict and seconds; the exit status is 0 only if every verdict is the expected one.

What is proved, in plain words, for executions of any length and lattices of any size:

  1. The committed sequence is always exactly what AR decoding commits (same prompt, same model).
  2. Every state a node retains, after m blocks, is the model's state for that node's own prefix
     after m blocks; every KV cache it attended to is the KV cache of its own prefix; the committed
     cache is the cache of the committed positions; every exit token read is the model's exit token
     for the node's prefix at that depth. (No state is stale, misplaced or shared across prefixes.)
  3. Each node's prefix is its parent's followed by its own token, so it extends the committed
     sequence; no two nodes share a prefix; and every commit keeps exactly the old nodes whose prefix
     extends the new committed sequence (nothing reusable is discarded, nothing wrong is kept).
  4. A child is never deeper than its parent, every ancestor is at least as deep as its descendants,
     and so the core's check on the parent alone is the whole dependency rule: when a node computes
     layer l, every ancestor (and every committed position) already holds layer l.
  5. All of the above with seeded Gumbel-max sampling instead of greedy decoding: the token at a
     position is argmax(logits/T + G(seed, position)) at every depth, noise keyed by the absolute
     position, and AR samples with the same seed.

How: `fsm` is the lattice core of `dexsim/core/lattice.py` as a transition system (advance, read_exit,
expand, evict, commit_match, commit_fallback, stop), with the model abstracted (`model`) and the
policy replaced by nondeterminism (every argument of every transition is free, so one proof covers
every policy, explorer count, exit set, priority rule, buffer and eviction choice). `obligations`
states each theorem as an inductive invariant (Init => Inv, Inv & T => Inv') and `kernel`, the only
module that asks Z3 anything, turns answers into verdicts. The encoding of prefixes and quantifiers,
and why instantiation is sound and terminates, is in the docstrings of `obligations` and
`logic.AxOps`.

Axioms (what the proofs assume):
- The model is a causal decoder of L >= 1 blocks: the state of a position after layer m is a
  function `blk` of its state after layer m-1 and the KV entries, at layer m, of itself and of every
  earlier position of its own sequence; a KV entry is a function `kvp` of the position's state after
  m-1; the layer-0 state is a function `emb` of the token and its position; an exit token is a
  function `head` of the depth and the state (argmax with ties to the lowest id is one such
  function); the Gumbel variant's token is a function `gmax` of the logits and the noise of the
  position. These are uninterpreted: *any* functions. That is the whole model.
- The prompt is non-empty and its KV cache (the prefill) is AR's.
- L is in the exit set (the final token is read at depth L). Note: `dexsim.core.lattice.Lattice` does not
  check this; with an exit set without L the core commits a token read below L (found while writing
  these proofs; the CLI always adds L).
- Eight facts about finite sequences (`logic.AxOps`, S1-S8), each proved valid in Z3's theory of
  sequences (the `lemma` lines).

Guards against a proof that cannot fail:
- vacuity: the axioms and the initial state are satisfiable, and every transition is taken, by a
  bounded execution, from a reachable state that satisfies the whole invariant: a model of the
  hypotheses of every obligation about it (`bmc.enabled`);
- mutants: fourteen deliberately wrong rules (`fsm.MUTANTS`), each refuted by bounded model checking
  with a printed counterexample trace (`bmc.refute`);
- bounded model checking of the correct rules (`bmc.bounded_check`), a bug finder with traces;
- conformance (`conformance`, tests/test_proofs_conformance.py): the real core, under every policy,
  next to the rules read concretely; every move it makes must be allowed by the rules, every clause
  must hold after it, its state must equal the rules' after every round; recorded moves are checked
  against the Z3 reading of the rules too. This is what makes the proofs about *that* code.
- the code itself (`code`, group `code` of `python -m proofs`): the real core runs every policy, on
  the bundled traces (the compiled replay loop), on random traces and with the conformance executor,
  several sequences side by side, and every transition it records is checked against the rules of
  `fsm` (guard conjuncts and invariant clauses named when one breaks), a sample of them in Z3 too.

Not covered:
- Floating point (DESIGN.md section 8). The proofs treat blk, kvp, head as mathematical functions:
  the same inputs give the same output, whatever else is in the batch. Real kernels round batched
  and unbatched work differently and a one-ulp difference can flip a near-tied argmax; losslessness
  then holds only for a batch-invariant executor, and the fast mode's divergence must be measured.
- Liveness: that every run commits and ends (the proofs are about safety: whatever is committed is
  right). Costs, counters, timing, schedulers and the replay's off-path token synthesis.
- Executors other than the conformance one: the theorem about states is about an executor that
  computes as the rules say (a node's cache = its parent's cache plus its own entry). The torch
  engine must do that; these tests do not run it.
- That a batched round equals its moves in slot order (parents first) is an argument (a parent's KV
  entry at layer l depends only on its state after l-1) plus the conformance tests, not a Z3 proof.
- Several sequences at once: the sequences of the core are independent; the proofs are about one,
  the conformance tests run two.
"""
