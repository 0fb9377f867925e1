"""Properties of the core the other suites left open (issue 20): the dependency rule under every
priority with few explorers, how each priority ranks, where a spawn's confidence comes from, and that
a replay never leaks the truth off the true path (DESIGN.md sections 3 and 5)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from eventcheck import check_event_log
from strategies import tiny_trace, traces

from dexsim.core import lattice as core
from dexsim.core.params import PRIORITIES
from dexsim.core.policies import AR, DEX, Adaptive, LayerSkip
from dexsim.replay.executor import ReplayExecutor, output_matches, replay
from dexsim.traces.format import load_trace

TRACES = __import__("pathlib").Path(__file__).resolve().parents[2] / "traces"


def random_trace(seed: int, L: int = 8, seqs: int = 2, tokens: int = 14, vocab: int = 3):
    """A tiny-vocabulary trace recorded at every depth: guesses collide often, branches live long."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(tokens // 2, tokens + 1, seqs)
    et = rng.integers(0, vocab, (int(lengths.sum()), L))
    return tiny_trace(et[:, -1], et, list(range(1, L + 1)), lengths, rng.integers(1, 4, seqs),
                      rng.random(et.shape), vocab)


# ------------------------------------------------------------------ the dependency rule, every priority

@pytest.mark.parametrize("priority", PRIORITIES)
def test_no_child_computes_a_layer_before_its_parent_under_any_priority(priority):
    """A fixed grid that reaches the case the random examples rarely draw: few explorers, so a
    branch ranked above its parent (deeper or more confident spawn) runs while the parent stalls and
    catches up with it; from there only the dependency check keeps it from passing the parent."""
    for seed in range(4):
        trace = random_trace(seed)
        for k in (1, 2, 3):
            for buffer in (2, 4):
                lat = replay(trace, DEX(trace.L, trace.depths, k, buffer, priority), seed=seed, record_events=True)
                assert output_matches(trace, lat)
                check_event_log(lat.events(), lat)


@given(traces(), st.sampled_from(PRIORITIES), st.integers(1, 3), st.integers(1, 4), st.booleans())
def test_dependency_rule_on_random_traces_with_few_explorers(trace, priority, k, buffer, evict):
    lat = replay(trace, DEX(trace.L, trace.depths, k, buffer, priority, evict), record_events=True)
    check_event_log(lat.events(), lat)


# ----------------------------------------------------------------------- how each priority ranks

L_STATE = 6


@st.composite
def lattice_states(draw, lawful=True):
    """One sequence's lattice as select sees it: a random tree (parents before children), depths
    (a child never deeper than its parent if `lawful`; anything below L otherwise), spawn depths and
    confidences."""
    n = draw(st.integers(1, 7))
    lat = core.Lattice(L=L_STATE, exits=np.arange(1, L_STATE + 1), capacity=n, root_tokens=[0], root_pos=[3],
                       max_tokens=[9])
    lat.depth[0, 0] = draw(st.integers(0, L_STATE - 1))
    for j in range(1, n):
        p = draw(st.integers(0, j - 1))
        lat.parent[0, j] = p
        top = lat.depth[0, p] if lawful else L_STATE
        lat.depth[0, j] = draw(st.integers(0, top))
        lat.spawn_depth[0, j] = draw(st.integers(0, L_STATE))
        lat.spawn_conf[0, j] = draw(st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9]))
        lat.node_id[0, j], lat.pos[0, j], lat.token[0, j] = j, lat.pos[0, p] + 1, j
    lat.n[0] = n
    return lat


def _select(lat, priority, k):
    policy = DEX(L_STATE, np.arange(1, L_STATE + 1), k, lat.M, priority)
    chosen, _ = policy.select(lat, np.array([0]))
    return chosen[0]


@given(lattice_states(lawful=False), st.sampled_from(["deep", "confident"]), st.integers(1, 7))
def test_a_ranked_priority_checks_the_parent_whatever_the_state(lat, priority, k):
    """Deep and confident choose a node only if its parent holds the layer it computes, or computes
    it in the same round: on any state handed to them, children of the anchor included."""
    chosen, n = _select(lat, priority, k), lat.n[0]
    for j in range(1, n):
        p = lat.parent[0, j]
        if chosen[j]:
            assert lat.depth[0, p] > lat.depth[0, j] or (lat.depth[0, p] == lat.depth[0, j] and chosen[p])


@given(lattice_states(), st.sampled_from(["deep", "confident"]), st.integers(1, 7))
def test_deep_and_confident_advance_the_higher_ranked_branch(lat, priority, k):
    """Anchor first; then, among branches free to move (the parent already deeper), none left out
    outranks a chosen branch: deep ranks by spawn depth, confident by spawn confidence, ties to the
    older; fewer than k chosen only when no such branch is left out."""
    chosen, n = _select(lat, priority, k), lat.n[0]
    key = lat.spawn_depth[0] if priority == "deep" else lat.spawn_conf[0]
    assert chosen[0] and chosen.sum() <= k
    free = [i for i in range(1, n) if lat.depth[0, i] < L_STATE and lat.depth[0, lat.parent[0, i]] > lat.depth[0, i]]
    for i in free:
        if chosen[i]:
            continue
        assert chosen.sum() == k
        for j in range(1, n):
            if chosen[j]:
                assert key[j] > key[i] or (key[j] == key[i] and j < i), f"{priority}: branch {i} outranks {j}"


@given(lattice_states(), st.integers(1, 7))
def test_eager_advances_the_first_movable_nodes_in_slot_order(lat, k):
    chosen, n = _select(lat, "eager", k), lat.n[0]
    movable = [j for j in range(n) if lat.depth[0, j] < L_STATE]
    assert np.flatnonzero(chosen).tolist() == movable[:k]


@given(lattice_states(), st.integers(1, 7))
def test_align_advances_the_lowest_pending_layer_together(lat, k):
    chosen, n = _select(lat, "align", k), lat.n[0]
    low = min(lat.depth[0, :n])
    assert np.flatnonzero(chosen).tolist() == [j for j in range(n) if lat.depth[0, j] == low][:k]


@given(lattice_states(lawful=False), st.data())
def test_which_nodes_ask_for_a_child(lat, data):
    """DESIGN.md section 3, Exit: a node that reads its exit token below L may expand; at L only a
    branch does (its final token is exact given its path; the anchor at L commits instead). dex expands
    wherever it may, LayerSkip only at its draft depth e < L, adaptive once per node, at the first exit
    whose confidence reaches tau or as a branch at L; AR never."""
    n = lat.n[0]
    j = np.flatnonzero(lat.depth[0, :n] >= 1)  # exits are read at depths >= 1
    d, branch = lat.depth[0, j], j > 0
    conf = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]), min_size=len(j),
                                       max_size=len(j))), np.float32)
    lat.guessed[0, j] = data.draw(st.lists(st.booleans(), min_size=len(j), max_size=len(j)))
    e, tau, L, E = data.draw(st.integers(1, L_STATE)), 0.5, L_STATE, np.arange(1, L_STATE + 1)
    expected = {
        "dex": (d < L) | branch,
        "layerskip": (d == e) & (e < L),
        "adaptive": ~lat.guessed[0, j] & (((conf >= tau) & (d < L)) | ((d == L) & branch)),
        "ar": np.zeros(len(j), bool),
    }
    policies = {"dex": DEX(L, E, 2, lat.M), "layerskip": LayerSkip(L, e, 2), "adaptive": Adaptive(L, E, tau, 2),
                "ar": AR(L)}
    for name, policy in policies.items():
        got = policy.wants(lat, np.zeros(len(j), np.int64), j, np.zeros(len(j), np.int64), conf)
        assert got.tolist() == expected[name].tolist(), f"{name}: depths {d.tolist()}, nodes {j.tolist()}"


class _CheckSpawns(ReplayExecutor):
    """The replay, one Python round at a time, checking each spawn as it happens."""

    spawns = 0

    def spawned(self, lat, s, j):
        for a, b in zip(np.asarray(s).tolist(), np.asarray(j).tolist()):
            p = lat.parent[a, b]
            if b > 0:  # a branch (a root or a fallback anchor has no spawning exit)
                assert lat.spawn_conf[a, b] == lat.exit_conf[a, p], "spawn confidence is not the parent's exit's"
                assert lat.spawn_depth[a, b] == lat.depth[a, p], "spawn depth is not the parent's depth"
                assert lat.exit_conf[a, b] == 0 and lat.depth[a, b] == 0
                self.spawns += 1
        super().spawned(lat, s, j)


@pytest.mark.parametrize("priority", PRIORITIES)
def test_spawn_confidence_is_the_parents_exit_confidence_at_spawn(priority):
    trace = random_trace(7)
    policy = DEX(trace.L, trace.depths, 2, 3, priority)
    ex = _CheckSpawns(trace, seed=1)
    lat = core.run(core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                                root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                                max_tokens=np.diff(trace.seq_offsets)), policy, ex)
    assert output_matches(trace, lat) and ex.spawns > 20


# ------------------------------------------------------------------ replay fidelity (DESIGN.md 5)

def _synthesized_reads(trace, ev):
    """The exit reads the replay synthesized (off the true path, or past the trace's end): [(seq,
    node, depth, token, conf)], in log order. On the true path: the root, a fallback anchor, and a
    child of an on-path node whose token is the trace's next final token (recomputed from the log)."""
    on, out = set(), []
    for e in ev:
        s, v = int(e["seq"]), int(e["node"])
        row = int(e["pos"]) - int(trace.prompt_len[s]) + 1  # the row this node's state predicts
        sl = trace.seq_slice(s)
        if e["kind"] == core.SPAWN:
            p = int(e["parent"])
            if p < 0 or ((s, p) in on and row - 1 < sl.stop - sl.start and e["token"] == trace.final[sl.start + row - 1]):
                on.add((s, v))
        elif e["kind"] == core.EXIT and not ((s, v) in on and row < sl.stop - sl.start):
            out.append((s, v, int(e["depth"]), int(e["token"]), float(e["conf"])))
    return out


def test_off_path_reads_never_match_and_look_like_the_true_paths():
    """Every synthesized exit read: a token that can never match (>= vocab); between consecutive exit
    depths it changes at the rate the trace's true path shows a new token there; its confidence is a
    draw from the trace's own confidences at that depth (a randomized probability-integral transform
    through each depth's empirical distribution must be uniform: Kolmogorov-Smirnov at 1e-6)."""
    trace = load_trace(TRACES / "smollm2-135m-lens-humaneval-raw.npz")
    lat = replay(trace, DEX(trace.L, trace.depths, 4, 8, "confident"), seed=3, record_events=True)
    assert output_matches(trace, lat)
    reads = _synthesized_reads(trace, lat.events())
    col = {int(d): c for c, d in enumerate(trace.depths)}
    et, conf = trace.exit_tokens, trace.exit_conf.astype(np.float32)
    assert len(reads) > 2000
    assert all(t >= trace.vocab for _, _, _, t, _ in reads)

    # the change rate: P(stay from depth c0 to c) = prod over columns (c0, c] of (1 - novelty)
    novel = np.array([0.0] + [np.mean([et[g, c] not in et[g, :c] for g in range(len(et))]) for c in range(1, et.shape[1])])
    last, changes, p_change = {}, 0, []
    for s, v, d, t, _ in reads:
        if (s, v) in last:
            d0, t0 = last[s, v]
            p_change.append(1 - np.prod(1 - novel[col[d0] + 1:col[d] + 1]))
            changes += t != t0
        last[s, v] = d, t
    p = np.array(p_change)
    assert len(p) > 1000
    z = (changes - p.sum()) / np.sqrt((p * (1 - p)).sum())
    assert abs(z) < 5, f"off-path tokens change {changes} times, the true path's rate gives {p.sum():.0f}"

    # the confidences: members of the depth's column, distributed as it is
    rng = np.random.default_rng(0)
    u = []
    for _, _, d, _, cf in reads:
        column = np.sort(conf[:, col[d]])
        lo, hi = np.searchsorted(column, np.float32(cf), "left"), np.searchsorted(column, np.float32(cf), "right")
        assert hi > lo, f"confidence {cf} at depth {d} is none of the trace's"
        u.append((lo + rng.random() * (hi - lo)) / len(column))
    u = np.sort(u)
    n = len(u)
    ks = max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max())
    assert ks < np.sqrt(np.log(2 / 1e-6) / (2 * n)), f"off-path confidences are not the trace's (KS {ks:.3f})"


def test_a_spawn_past_the_buffer_raises_inside_the_compiled_code():
    """numba does not bounds-check: a buffer the caller did not enforce (here B larger than the arrays
    hold) must stop with an assertion, not write past the node arrays."""
    lat = core.Lattice(L=4, exits=np.arange(1, 5), capacity=2, root_tokens=[0], root_pos=[3], max_tokens=[4])
    lat.expand(None, np.array([0]), np.array([0]), np.array([1]), 1)
    assert lat.n[0] == 2
    with pytest.raises(AssertionError, match="buffer"):
        lat.expand(None, np.array([0]), np.array([1]), np.array([2]), 5)
    with pytest.raises(AssertionError, match="buffer"):
        lat.expand(None, np.array([0]), np.array([1]), np.array([2]), 3)
