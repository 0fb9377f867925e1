"""Conformance: the real lattice core (`dexsim.core.lattice`) under every policy, next to the transition
rules the proofs are about (`proofs.fsm`). See `proofs/conformance.py` for what is compared."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dexsim.core import lattice as core
from dexsim.core.policies import DEX, AR, Adaptive, LayerSkip
from dexsim.core.params import PRIORITIES
from dexsim.core.registry import make_policy
from proofs import conformance as cf
from proofs.model import ConcreteModel

EXAMPLES = max(10, settings.default.max_examples // 4)


@st.composite
def setups(draw):
    L = draw(st.integers(1, 6))
    inner = draw(st.lists(st.integers(1, L - 1), unique=True, min_size=min(L - 1, 1), max_size=L - 1)) if L > 1 else []
    exits = sorted(set(inner) | {L})
    name = draw(st.sampled_from(["ar", "layerskip", "adaptive", "dex", "dex", "dex"]))
    policy = make_policy(name, L, exits=exits, explorers=draw(st.integers(1, 5)), buffer=draw(st.integers(0, 4)),
                         priority=draw(st.sampled_from(PRIORITIES)), exit=draw(st.sampled_from(exits)),
                         draft=draw(st.integers(0, 3)), threshold=draw(st.floats(0, 1)))
    if name == "dex":
        policy.evict = draw(st.booleans())
    vocab = draw(st.integers(2, 4))
    sampling = draw(st.sampled_from(["greedy", "gumbel"]))
    seed = draw(st.integers(0, 2**16))
    n = draw(st.integers(1, 2))
    prompts = [tuple(draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3))) for _ in range(n)]
    models = [ConcreteModel(L, policy.exits, p, vocab, sampling, seed + i) for i, p in enumerate(prompts)]
    max_tokens = [draw(st.integers(0, 10)) for _ in range(n)]
    eos = draw(st.none() | st.integers(0, vocab - 1))
    return policy, models, max_tokens, eos, draw(st.booleans())


@settings(max_examples=EXAMPLES, deadline=None)
@given(setups())
def test_the_core_moves_only_as_the_rules_allow_and_commits_ar(setup):
    """Every move of the core satisfies the rules' guard, every invariant clause holds after it, the
    core's state (and the executor's retained states) equals the rules' after every round, and the
    output is AR's, up to the limit or EOS."""
    policy, models, max_tokens, eos, can_jump = setup
    r = cf.run(policy, models, max_tokens, eos=eos, can_jump=can_jump)
    for s, M in enumerate(models):
        k = int(r.lat.counters.tokens[s])
        out = tuple(int(t) for t in r.lat.output[s, :k])
        expected = M.ar(max_tokens[s])[len(M.P):]  # AR's output, up to the limit and its first EOS
        if eos in expected:
            expected = expected[:expected.index(eos) + 1]
        assert out == expected
        assert eos not in out[:-1]  # EOS is never inside the committed output


RUNS = [
    ("dex eager, evict", lambda L, E: DEX(L, E, 3, 2, "eager", evict=True), "greedy"),
    ("dex deep", lambda L, E: DEX(L, E, 2, 3, "deep"), "gumbel"),
    ("dex align", lambda L, E: DEX(L, E, 4, 3, "align"), "greedy"),
    ("layerskip", lambda L, E: LayerSkip(L, 1, 2), "greedy"),
    ("adaptive", lambda L, E: Adaptive(L, E, 0.3, 2), "gumbel"),
]


@pytest.mark.parametrize("name,make,sampling", RUNS, ids=[r[0] for r in RUNS])
def test_the_z3_reading_of_the_rules_allows_every_recorded_move(name, make, sampling):
    """Each move of the core, replayed on the Z3 reading of the rules (the model checker's): the Z3
    guard holds, the Z3 post-state is the core's, and it satisfies every invariant clause read in Z3."""
    L = 2
    policy = make(L, np.array([1, 2]))
    M = ConcreteModel(L, policy.exits, (1, 0), vocab=2, sampling=sampling, seed=5)
    r = cf.run(policy, [M], [4], record=True)
    moves = r.mirrors[0].moves
    assert {m[0] for m in moves} >= {"advance", "read_exit", "expand", "stop"}
    bad = [(k, a) for k, a, pre, post in moves if not cf.z3_agrees(M, k, a, pre, post)]
    assert not bad


def test_the_z3_check_rejects_a_move_the_core_did_not_make():
    L = 2
    policy = DEX(L, np.array([1, 2]), 3, 2)
    M = ConcreteModel(L, policy.exits, (1,), vocab=2, seed=1)
    r = cf.run(policy, [M], [2], record=True)
    kind, args, pre, post = next(m for m in r.mirrors[0].moves if m[0] == "advance")
    x = args[0]
    post.node["depth"][x] += 1  # claim the node computed two layers
    assert not cf.z3_agrees(M, kind, args, pre, post)


class BreaksDependency:
    """A rogue policy: advances the newest node whatever its parent's depth."""

    name, buffer, explorers = "rogue", 2, 1

    def __init__(self, L):
        self.exits = np.arange(1, L + 1)

    def select(self, lat, s):
        chosen = np.zeros((len(s), lat.M), bool)
        for r, q in enumerate(s):
            movable = [j for j in range(lat.n[q]) if lat.depth[q, j] < lat.L]
            chosen[r, movable[-1] if movable else 0] = True
        return chosen, np.ones(len(s), np.int64)

    def wants(self, lat, s, j, tok, conf):
        return np.ones(len(s), bool)


def test_conformance_fails_on_a_policy_that_breaks_the_dependency_rule():
    L = 3
    policy = BreaksDependency(L)
    M = ConcreteModel(L, policy.exits, (0,), vocab=2)
    with pytest.raises(cf.ConformanceError):
        cf.run(policy, [M], [3])


def test_conformance_fails_when_the_core_reads_exits_the_model_does_not_have():
    L = 3
    policy = DEX(L, np.array([3]), 2, 2)
    M = ConcreteModel(L, [3], (0,), vocab=2)
    orig = core.Lattice.__init__

    def init(self, *a, **k):
        orig(self, *a, **k)
        self.is_exit[1:] = True  # the core now reads a head at every depth: not what the rules allow

    core.Lattice.__init__ = init
    try:
        with pytest.raises(cf.ConformanceError):
            cf.run(policy, [M], [3], can_jump=False)
    finally:
        core.Lattice.__init__ = orig


def test_ar_policy_is_one_node_at_a_time():
    M = ConcreteModel(3, [3], (2, 1), vocab=3)
    r = cf.run(AR(3), [M], [5])
    assert r.moves == 5 * (3 + 1 + 1) + 1  # per token: 3 advances, 1 exit read, 1 commit; then stop


def test_the_code_check_names_the_clause_a_rogue_core_breaks():
    """`python -m proofs`' code group on a replay whose policy breaks the dependency rule: the move is
    refused and the guard conjunct it breaks is named."""
    from proofs.code import check_replay, random_trace
    trace = random_trace(3)
    check_replay(trace, make_policy("dex", trace.L, exits=trace.depths, explorers=2, buffer=2, priority="deep"))
    with pytest.raises(cf.ConformanceError, match="guard clause broken: dependency"):
        rogue = BreaksDependency(trace.L)
        rogue.exits = trace.depths
        check_replay(trace, rogue)
