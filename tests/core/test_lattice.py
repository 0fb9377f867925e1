"""The lattice core under every policy, on random traces: DESIGN.md section 3 invariants."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from strategies import policies, tiny_trace, traces
from eventcheck import check_event_log

from dexsim.core import lattice as core
from dexsim.core.policies import AR, DEX, LayerSkip
from dexsim.replay.executor import ON_PATH, ReplayExecutor, output_matches, replay, result
from dexsim.core.registry import make_policy
from dexsim.replay.hindsight import oracle_select
from dexsim.traces.synth import synth_trace


@st.composite
def trace_and_policy(draw):
    trace = draw(traces())
    return trace, draw(policies(trace))


@given(trace_and_policy(), st.integers(0, 3))
def test_every_policy_commits_exactly_the_trace(tp, seed):
    trace, policy = tp
    lat = replay(trace, policy, seed=seed, record_events=True)
    assert output_matches(trace, lat)
    check_event_log(lat.events(), lat)


@given(trace_and_policy())
def test_invariants_hold_after_every_round(tp):
    """Every live node's path extends the committed sequence; children never deeper than parents;
    siblings distinct; the anchor is the last committed token at its position."""
    trace, policy = tp
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=np.diff(trace.seq_offsets))
    ex = ReplayExecutor(trace)
    core.start(lat, ex)
    while lat.active.any():
        core.step(lat, policy, ex)
        for s in np.nonzero(lat.active)[0]:
            n, k = lat.n[s], lat.counters.tokens[s]
            assert lat.pos[s, 0] == trace.prompt_len[s] - 1 + k
            if k:
                assert lat.token[s, 0] == lat.output[s, k - 1]
            assert lat.tag[s, 0] == 1  # the anchor is always on the true path
            for j in range(1, n):
                p = lat.parent[s, j]
                assert 0 <= p < j
                assert lat.pos[s, j] == lat.pos[s, p] + 1
                assert lat.depth[s, j] <= lat.depth[s, p]
            kids = [(lat.parent[s, j], lat.token[s, j]) for j in range(1, n)]
            assert len(kids) == len(set(kids))
            assert n - 1 <= policy.buffer


class _Stepping(ReplayExecutor):
    can_jump = False


@given(trace_and_policy(), st.integers(0, 3))
def test_jumps_are_exact(tp, seed):
    """Taking several rounds in one step changes nothing but speed: same counters, same tokens."""
    trace, policy = tp
    lengths = np.diff(trace.seq_offsets)
    runs = []
    for executor in (ReplayExecutor(trace, seed), _Stepping(trace, seed)):
        lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                           root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                           max_tokens=lengths)
        runs.append(core.run(lat, policy, executor))
    a, b = runs
    assert a.counters.totals() == b.counters.totals()
    assert (a.counters.load_rows == b.counters.load_rows).all() and (a.output == b.output).all()


@pytest.mark.parametrize("policy", ["align-1", "align-2", "align-3", "adaptive"])
def test_lowest_layer_first_jumps_exactly_with_few_explorers(policy):
    """Lowest-layer-first holds its choice only while no node left out (or one layer behind) could
    join it: with fewer explorers than nodes, jumping must give the rounds of stepping."""
    trace = synth_trace("llama2-7b", 6, 24, ead="beta:1.4,1.8,0.08", seed=3)
    kind, _, k = policy.partition("-")
    exits = np.arange(4, trace.L + 1, 4)  # sparse: rounds between exits are jumped
    p = (make_policy("dex", trace.L, exits=exits, explorers=int(k), buffer=6, priority="align") if kind == "align"
         else make_policy("adaptive", trace.L, exits=exits, threshold=0.3, buffer=3))
    a, b = (core.run(core.Lattice(L=trace.L, exits=p.exits, capacity=p.buffer + 1,
                                  root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                                  max_tokens=np.diff(trace.seq_offsets)), p, ex)
            for ex in (ReplayExecutor(trace), _Stepping(trace)))
    assert a.counters.totals() == b.counters.totals() and a.counters.totals()["fallbacks"] < trace.n_tokens


@given(traces(), st.data())
def test_layerskip_guesses_only_at_its_exit(trace, data):
    e = data.draw(st.sampled_from(trace.depths.tolist()))
    lat = replay(trace, LayerSkip(trace.L, e, data.draw(st.integers(0, 4))), record_events=True)
    ev = lat.events()
    assert (ev[(ev["kind"] == core.SPAWN) & (ev["n"] > 0)]["n"] == e).all()
    check_event_log(ev, lat)


class _PythonRounds(ReplayExecutor):
    """The same executor, but a subclass: the core runs it one Python `step` at a time."""


@given(trace_and_policy(), st.integers(0, 3))
def test_the_compiled_replay_loop_is_the_python_rounds(tp, seed):
    """A replay's one compiled loop and the core's Python rounds are the same rules: same event
    log, counters, tokens and per-layer counts."""
    trace, policy = tp
    runs, executors = [], (ReplayExecutor(trace, seed), _PythonRounds(trace, seed))
    for executor in executors:
        lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                           root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                           max_tokens=np.diff(trace.seq_offsets), record_events=True)
        runs.append(core.run(lat, policy, executor))
    a, b = runs
    assert a.counters.totals() == b.counters.totals() and (a.output == b.output).all()
    assert (a.counters.load_rows == b.counters.load_rows).all() and (a.counters.head_rows == b.counters.head_rows).all()
    assert a.counters.context_sum == b.counters.context_sum
    ea, eb = a.events(), b.events()
    assert len(ea) == len(eb) and (ea == eb).all()
    for x, y in zip(a.counters.per_layer(), b.counters.per_layer()):
        assert (x == y).all()


@given(traces())
def test_ar_costs_L_rounds_per_token(trace):
    lat = replay(trace, AR(trace.L))
    c, n = lat.counters.totals(), trace.n_tokens
    assert c["rounds"] == c["node_layers"] == c["weight_loads"] == trace.L * n
    assert c["head_evals"] == n and c["wasted_node_layers"] == 0


@given(traces(), st.integers(1, 4))
def test_dex_with_only_final_exit_and_one_explorer_is_ar(trace, buffer):
    a = replay(trace, AR(trace.L)).counters.totals()
    d = replay(trace, DEX(trace.L, np.array([trace.L]), 1, buffer)).counters.totals()
    assert a == d


@given(trace_and_policy())
def test_anchor_first_dex_never_needs_more_rounds_than_ar(tp):
    trace, _ = tp
    for priority in ("eager", "deep", "confident"):
        for k in (1, 2, 4):
            d = replay(trace, DEX(trace.L, trace.depths, k, 4, priority))
            assert (d.counters.rounds <= trace.L * np.diff(trace.seq_offsets)).all()


def fixed_ead_trace(L, d, n_tokens, vocab=1000, seed=0):
    """Every token's exit is right from depth d on and wrong below it."""
    rng = np.random.default_rng(seed)
    depths = np.arange(1, L + 1)
    final = rng.integers(0, vocab // 2, n_tokens)
    et = np.where(depths[None, :] >= d, final[:, None], vocab // 2 + rng.integers(0, vocab // 2, (n_tokens, L)))
    return tiny_trace(final, et, depths, [n_tokens], [3], vocab=vocab)


def commit_rounds(lat):
    ev = lat.events()
    return ev["round"][ev["kind"] == core.COMMIT]


@pytest.mark.parametrize("L,d,k", [(8, 2, 1), (8, 2, 2), (8, 2, 3), (8, 2, 4), (8, 2, 6), (12, 3, 2), (30, 7, 3),
                                   (30, 7, 5), (32, 8, 4), (32, 5, 3), (16, 16, 2)])
def test_dex_steady_state_on_fixed_ead(L, d, k):
    """E = {d, L}, buffer large enough: with k >= ceil(L/d) explorers the chain commits one token every
    d rounds (token n at round L + n*d); with fewer, the k lanes are the limit and commits come in
    groups of k, one group every L rounds (token n at round L*(1 + n//k) + (n % k)*d)."""
    N = 40
    trace = fixed_ead_trace(L, d, N)
    lat = replay(trace, DEX(L, np.array(sorted({d, L})), k, 16), record_events=True)
    n = np.arange(N)
    if k * d >= L:
        expected = L + n * d
    else:
        expected = L * (1 + n // k) + (n % k) * d
    # rounds are counted from 1: the commit of token n happens in round expected[n]
    assert (commit_rounds(lat) + 1 == expected).all()
    assert lat.counters.node_layers.sum() == L * N + lat.counters.wasted_node_layers.sum()


def test_steady_state_loads_about_L_layers_per_token_on_one_device():
    L, d, N = 32, 8, 100
    lat = replay(fixed_ead_trace(L, d, N), DEX(L, np.array([d, L]), 4, 8))
    c = lat.counters.totals()
    assert c["rounds"] == L + (N - 1) * d
    assert abs(c["weight_loads"] / N - L) <= 1  # rounds are latency, loads are what one device pays


@pytest.mark.parametrize("alpha,gamma", [(0.5, 3), (0.8, 4), (0.3, 1), (0.9, 6)])
def test_layerskip_closed_form_tokens_per_verification(alpha, gamma):
    L, e = 32, 12
    trace = synth_trace("llama2-7b", 40, 500, ead=f"two-point:{e},{alpha}", flicker=0.0, seed=7)
    lat = replay(trace, LayerSkip(L, e, gamma), record_events=True)
    ev = lat.events()
    commits = ev[ev["kind"] == core.COMMIT]
    steps = len(np.unique(commits["seq"].astype(np.int64) * 10**9 + commits["round"]))
    measured = len(commits) / steps
    expected = (1 - alpha ** (gamma + 1)) / (1 - alpha)
    # tokens per step is bounded in [1, gamma+1]; its standard error over `steps` i.i.d. steps
    se = (gamma + 1) / np.sqrt(steps)
    assert abs(measured - expected) < 3 * se, (measured, expected, steps)


def test_oracle_select_is_no_worse_than_any_fixed_depth():
    trace = synth_trace("smollm2-135m", 3, 30, seed=3, depths="every:3")
    best = oracle_select(trace, drafts=(2, 4))
    assert best["output_matches_trace"]
    for e in (9, 18, 27):
        for g in (2, 4):
            p = LayerSkip(trace.L, e, g)
            assert best["weight_loads"] <= result(trace, replay(trace, p), p)["weight_loads"]


def test_replay_is_deterministic_for_a_seed():
    trace = synth_trace("smollm2-135m", 2, 20, seed=2)
    p = make_policy("dex", trace.L, explorers=3, buffer=6)
    a, b = replay(trace, p, seed=5, record_events=True), replay(trace, p, seed=5, record_events=True)
    assert (a.events() == b.events()).all()


def test_off_path_tokens_change_at_the_true_paths_rate():
    """Off-path nodes must not look different: between consecutive exit depths their token changes
    about as often as the true path's does, so a policy cannot tell them apart by it."""
    trace = synth_trace("smollm2-135m", 10, 40, seed=4, change_rate=0.3)
    lat = replay(trace, DEX(trace.L, trace.depths, 8, 12), record_events=True)
    ev = lat.events()
    ex = ev[(ev["kind"] == core.EXIT) & (ev["token"] >= trace.vocab)]
    per_node = {}
    for e in ex:
        per_node.setdefault((e["seq"], e["node"]), []).append(int(e["token"]))
    changes = [np.mean(np.diff(t) != 0) for t in per_node.values() if len(t) >= 5]
    et = trace.exit_tokens
    true_rate = np.mean([(et[:, c, None] != et[:, :c]).all(1).mean() for c in range(1, et.shape[1])])
    assert len(changes) > 50
    assert 0.7 < np.mean(changes) / true_rate < 1.4


def test_a_deeper_node_with_the_committed_token_is_not_the_new_anchor():
    """Pinned: a wrong child's own child may guess the very token that gets committed (a real model's
    wrong branches guess real tokens); collapse must still look at the anchor's children only."""

    class GuessesOne(ReplayExecutor):  # off the true path, every exit guesses token 1
        def read_exits(self, lat, s, j):
            tok, conf = super().read_exits(lat, s, j)
            off = lat.tag[s, j] != ON_PATH
            tok[off], conf[off] = 1, 0.5
            return tok, conf

    # L = 2, E = {1, 2}: the anchor guesses 0 at depth 1 (wrong), that child guesses 1 = the final token
    trace = tiny_trace([1, 1, 1], [[0, 1]] * 3, [1, 2], [3], [3], vocab=2)
    lat = core.Lattice(L=2, exits=np.array([1, 2]), capacity=4, root_tokens=[-1], root_pos=[2], max_tokens=[3],
                       record_events=True)
    core.run(lat, DEX(2, np.array([1, 2]), 4, 3), GuessesOne(trace))
    ev = lat.events()
    grandchild = ev[(ev["kind"] == core.SPAWN) & (ev["pos"] == 4) & (ev["parent"] == 1)]
    assert len(grandchild) == 1 and grandchild["token"][0] == 1  # the scenario happened
    assert lat.counters.fallbacks[0] == 3 and (lat.output[0] == [1, 1, 1]).all()
    check_event_log(ev, lat)


class _Recording(ReplayExecutor):
    """Keeps what the core hands an executor: every compute call and both optional hooks."""

    def __init__(self, trace):
        super().__init__(trace)
        self.computed, self.commits, self.discards = [], [], []

    def compute(self, lat, s, j, layers):
        assert isinstance(lat, core.Lattice)
        self.computed += [(int(a), int(lat.node_id[a, b]), int(lat.depth[a, b]), int(m)) for a, b, m in zip(s, j, layers)]

    def committed(self, lat, s, node_ids):
        assert isinstance(lat, core.Lattice)
        self.commits += [(int(a), int(v)) for a, v in zip(s, node_ids)]

    def discarded(self, lat, s, node_ids):
        assert isinstance(lat, core.Lattice)
        self.discards += [(int(a), int(v)) for a, v in zip(s, node_ids)]


@given(trace_and_policy())
def test_the_executor_is_told_every_node_layer_commit_and_discard(tp):
    trace, policy = tp
    ex = _Recording(trace)
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=np.diff(trace.seq_offsets), record_events=True)
    core.run(lat, policy, ex)
    ev = lat.events()
    adv = ev[ev["kind"] == core.ADVANCE]
    by_seq = lambda calls: sorted(calls, key=lambda c: c[0])  # noqa: E731  (the log lists sequence by sequence)
    assert by_seq(ex.computed) == [(int(e["seq"]), int(e["node"]), int(e["depth"]), int(e["n"])) for e in adv]
    kind = lambda k: [(int(e["seq"]), int(e["node"])) for e in ev[ev["kind"] == k]]  # noqa: E731
    assert by_seq(ex.commits) == kind(core.COMMIT) and by_seq(ex.discards) == kind(core.DISCARD)


def test_no_events_without_recording():
    trace = fixed_ead_trace(4, 2, 3)
    assert len(replay(trace, AR(4)).events()) == 0


@given(traces(), st.floats(0, 1), st.integers(0, 4))
def test_adaptive_makes_one_guess_per_node(trace, tau, buffer):
    lat = replay(trace, make_policy("adaptive", trace.L, exits=trace.depths, threshold=tau, buffer=buffer),
                 record_events=True)
    ev = lat.events()
    guesses = ev[(ev["kind"] == core.SPAWN) & (ev["n"] > 0)]  # n: the parent's depth; 0 only for fresh anchors
    keys = list(zip(guesses["seq"].tolist(), guesses["parent"].tolist()))
    assert len(keys) == len(set(keys))
    # ... and a node guesses only at an exit whose confidence reaches tau (or at L, its exact token)
    exits = {(int(e["seq"]), int(e["node"]), int(e["depth"])): float(e["conf"]) for e in ev[ev["kind"] == core.EXIT]}
    for g in guesses:
        d = int(g["n"])
        assert d == trace.L or exits[int(g["seq"]), int(g["parent"]), d] >= np.float32(tau)


@given(traces(max_seqs=2), st.data())
def test_a_committed_eos_stops_the_sequence(trace, data):
    """With an EOS token, a sequence stops right after committing its first EOS (the rest of its
    trace is never decoded), whatever the policy; without one it runs to its token limit."""
    policy = data.draw(policies(trace))
    eos = int(data.draw(st.sampled_from(trace.final.tolist())))
    lengths = np.diff(trace.seq_offsets)
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=lengths, eos=eos, record_events=True)
    core.run(lat, policy, ReplayExecutor(trace))
    for s in range(trace.n_seqs):
        final = trace.final[trace.seq_slice(s)].tolist()
        n = final.index(eos) + 1 if eos in final else len(final)
        assert lat.counters.tokens[s] == n and lat.output[s, :n].tolist() == final[:n]
    assert not lat.active.any()
    check_event_log(lat.events(), lat)


class _Quiet:
    can_jump = True

    def compute(self, lat, s, j, layers):
        pass

    def spawned(self, lat, s, j):
        pass


def _lattice_of(nodes, buffer):
    """One sequence's lattice from (parent slot, spawn depth, depth) per slot; slot 0 is the anchor."""
    lat = core.Lattice(L=8, exits=np.arange(1, 9), capacity=buffer + 1, root_tokens=[0], root_pos=[5],
                       max_tokens=[9])
    for k, (p, sd, d) in enumerate(nodes):
        lat.parent[0, k], lat.spawn_depth[0, k], lat.depth[0, k] = p, sd, d
        lat.token[0, k], lat.node_id[0, k] = 100 + k, k
        lat.pos[0, k] = 5 if p < 0 else lat.pos[0, p] + 1
    lat.n[0], lat.next_id[0] = len(nodes), len(nodes)
    return lat


def _evict_case(nodes, requester, buffer=3):
    lat = _lattice_of(nodes, buffer)
    lat.expand(_Quiet(), np.array([0]), np.array([requester]), np.array([7]), buffer, evict=True)
    return [(int(lat.node_id[0, k]), int(lat.parent[0, k])) for k in range(lat.n[0])]


def test_eviction_takes_the_shallowest_spawned_leaf_only():
    # anchor(depth 6) -> b1 (spawned at 1, has a child) -> c (spawned at 2); anchor -> b2 (spawned at 3)
    nodes = [(-1, 0, 6), (0, 1, 4), (1, 2, 1), (0, 3, 2)]
    # b1 is shallower but not a leaf: c goes; the new child (id 4) hangs from the anchor
    assert _evict_case(nodes, 0) == [(0, -1), (1, 0), (3, 0), (4, 0)]


def test_eviction_spares_the_requester_and_needs_a_strictly_shallower_leaf():
    # anchor(6) -> b1 (spawned 1, leaf, depth 4, asks for a child) ; anchor -> b2 (spawned 2) ; anchor -> b3 (5)
    nodes = [(-1, 0, 6), (0, 1, 4), (0, 2, 3), (0, 5, 1)]
    assert _evict_case(nodes, 1) == [(0, -1), (1, 0), (3, 0), (4, 1)]  # b2 goes, not the requester b1
    # a requester at depth 2 may not evict a leaf spawned at depth 2: the request is dropped
    nodes = [(-1, 0, 6), (0, 5, 2), (0, 2, 3), (0, 5, 1)]
    assert _evict_case(nodes, 1) == [(0, -1), (1, 0), (2, 0), (3, 0)]


def test_eviction_ties_go_to_the_oldest():
    nodes = [(-1, 0, 6), (0, 2, 3), (0, 2, 3), (0, 2, 3)]
    assert _evict_case(nodes, 0) == [(0, -1), (2, 0), (3, 0), (4, 0)]


@given(trace_and_policy(), st.integers(0, 3))
def test_sequences_run_side_by_side_do_not_interact(tp, seed):
    """Each sequence's counters are those of its run alone (the others given no tokens to make, so
    the off-path model, fitted on the whole trace, stays the same): vectorising is speed only."""
    trace, policy = tp
    lengths = np.diff(trace.seq_offsets)

    def run(max_tokens):
        lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                           root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                           max_tokens=max_tokens)
        return core.run(lat, policy, ReplayExecutor(trace, seed)).counters

    together = run(lengths)
    for s in range(trace.n_seqs):
        alone = run(np.where(np.arange(trace.n_seqs) == s, lengths, 0))
        for name in ("tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers",
                     "fallbacks"):
            assert getattr(together, name)[s] == getattr(alone, name)[s], name


def test_eviction_in_one_sequence_ignores_requests_of_another():
    # sequence 0 has room and asks from its slot 1; sequence 1 is full and its shallowest leaf is slot 1
    lat = core.Lattice(L=8, exits=np.arange(1, 9), capacity=4, root_tokens=[0, 0], root_pos=[5, 5],
                       max_tokens=[9, 9])
    shapes = {0: [(-1, 0, 6), (0, 3, 2)], 1: [(-1, 0, 6), (0, 1, 2), (0, 2, 2), (0, 4, 1)]}
    for q, nodes in shapes.items():
        for k, (p, sd, d) in enumerate(nodes):
            lat.parent[q, k], lat.spawn_depth[q, k], lat.depth[q, k] = p, sd, d
            lat.token[q, k], lat.node_id[q, k], lat.pos[q, k] = 100 + k, k, 5 if p < 0 else 6
        lat.n[q] = lat.next_id[q] = len(nodes)
    lat.expand(_Quiet(), np.array([0, 1]), np.array([1, 0]), np.array([7, 7]), 3, evict=True)
    assert lat.node_id[1, : lat.n[1]].tolist() == [0, 2, 3, 4]  # slot 1 (spawned at depth 1) was evicted
    assert lat.node_id[0, : lat.n[0]].tolist() == [0, 1, 2]


def test_an_exit_set_without_L_still_reads_the_final_token():
    """Found by the proofs' conformance work: E = {1} must not commit a depth-1 guess."""
    trace = fixed_ead_trace(3, 2, 6)
    lat = replay(trace, DEX(3, np.array([1]), 2, 3))
    assert output_matches(trace, lat)


def test_a_change_to_compiled_code_gets_a_fresh_numba_cache(tmp_path, monkeypatch):
    """Numba keys a cached function on its own file: a cache shared across versions of the core would
    run machine code of the old core from the modules that call it. One cache folder per version."""
    import dexsim

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    (tmp_path / "core").mkdir()
    rules = tmp_path / "core" / "rules.py"
    rules.write_text("@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    (tmp_path / "notes.py").write_text("x = 1\n")
    first = dexsim.numba_cache_dir(tmp_path)
    (tmp_path / "notes.py").write_text("x = 2\n")  # no compiled code: the same cache
    assert dexsim.numba_cache_dir(tmp_path) == first
    rules.write_text("@njit(cache=True)\ndef f(x):\n    return x + 2\n")
    assert dexsim.numba_cache_dir(tmp_path) != first
    current = dexsim.numba_cache_dir(tmp_path)
    monkeypatch.setenv("NUMBA_CACHE_DIR", current)  # a child process inherits the folder as it is
    assert dexsim.numba_cache_dir(tmp_path) == current
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))  # the user's folder: a version in it
    assert dexsim.numba_cache_dir(tmp_path) == str(tmp_path / "mine" / Path(current).name)


@given(trace_and_policy(), st.integers(0, 3), st.data())
def test_the_work_log_is_the_event_log_grouped(tp, seed, data):
    """The work log (what the DES times) says what the event log says: a group per (step, depth) of
    advancing nodes with their rows, layers and context; a dependency for every node whose first layer
    in a step waits for another step (spawned, or crossing a cut), pointing at that step; a commit per
    token, at the step of the committed node's last layer."""
    trace, policy = tp
    cuts = np.array(data.draw(st.lists(st.booleans(), min_size=trace.L + 1, max_size=trace.L + 1)))
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=np.diff(trace.seq_offsets), record_events=True, work_cuts=cuts)
    core.run(lat, policy, ReplayExecutor(trace, seed))
    groups, deps, commits = lat.work_log()
    ev = lat.events()
    adv = ev[ev["kind"] == core.ADVANCE]
    # steps of each sequence: its distinct advance rounds, in order; a group per (step, depth)
    step_of, rounds_of = {}, {}
    for s in range(lat.S):
        starts = np.unique(adv["round"][adv["seq"] == s])
        rounds_of[s] = starts
        step_of.update({(s, int(r)): k for k, r in enumerate(starts)})
    want = {}
    for e in adv:
        g = want.setdefault((int(e["seq"]), step_of[int(e["seq"]), int(e["round"])], int(e["depth"])), [0, 0, 0])
        g[0] += 1
        g[1] = int(e["n"])
        g[2] += int(e["pos"]) + 1
    got = {(int(g[0]), int(g[1]), int(g[2])): [int(g[4]), int(g[3]), int(g[5])] for g in groups}
    assert got == want and len(groups) == len(want)
    assert (lat.steps == [len(rounds_of[s]) for s in range(lat.S)]).all()

    def step_at(s, r):  # the step whose rounds include round r
        return int(np.searchsorted(rounds_of[s], r, side="right")) - 1

    last, spawned, committed = {}, {}, set()
    expected_deps, expected_commits = [], []
    for e in ev:  # each sequence's events in order
        s, node, r = int(e["seq"]), int(e["node"]), int(e["round"])
        if e["kind"] == core.SPAWN:
            parent = int(e["parent"])
            if parent < 0:
                spawned[s, node] = (-1, 0)  # a root: waits for its request only
            elif (s, parent) in committed:
                spawned[s, node] = (last[s, parent], trace.L)  # a fallback: the committed token
            else:
                spawned[s, node] = (step_at(s, r), int(e["n"]))  # the step that read its parent's exit
        elif e["kind"] == core.COMMIT:
            committed.add((s, node))
            expected_commits.append((s, last[s, node]))
        elif e["kind"] == core.ADVANCE:
            d, k = int(e["depth"]), step_of[s, r]
            if d == 0:
                expected_deps.append((s, k, d, *spawned[s, node]))
            elif cuts[d]:
                expected_deps.append((s, k, d, last[s, node], d))
            last[s, node] = k
    got_deps = [(int(groups[g, 0]), int(groups[g, 1]), int(groups[g, 2]), int(src), int(dep))
                for g, src, dep in deps]
    assert sorted(got_deps) == sorted(expected_deps)
    assert sorted(map(tuple, commits.tolist())) == sorted(expected_commits)
