"""dexref on tiny random-weight Llama-style models (built here, float64 unless said): every policy of
the core gives AR's tokens, AR gives transformers' `generate(do_sample=False)`, batch-invariant
states are bitwise AR's, seeded Gumbel sampling is lossless, the engine frees every KV slot, and a
trace recorded here replays in dexsim with the engine's counters."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dexref import record as rec  # noqa: E402
from dexref.engine import Sampling, generate, reference_states  # noqa: E402
from dexref.model import from_state, qkv  # noqa: E402
from dexref.testing import max_live, node_path, on_path_events, random_prompts, tiny_model  # noqa: E402
from one_thread import one_thread  # noqa: E402, F401  (autouse fixture)
from dexsim.core.registry import make_policy  # noqa: E402
from dexsim.replay.executor import replay  # noqa: E402
from dexsim.traces.format import load_trace  # noqa: E402

SEEDS = [0, 1, 2, 3, 5, 8]
NEW = 24



def policies(L: int) -> list:
    """A spread of every policy of the core, with explorer counts 1..8, every priority, dense and
    sparse exit sets, tight and loose buffers."""
    every2 = np.unique(np.r_[np.arange(2, L + 1, 2), L])
    out = [make_policy("ar", L),
           make_policy("layerskip", L, exit=1, draft=1), make_policy("layerskip", L, exit=max(L // 2, 1), draft=4),
           make_policy("adaptive", L, threshold=0.0, buffer=3), make_policy("adaptive", L, threshold=0.4, buffer=6),
           make_policy("adaptive", L, exits=every2, threshold=0.9, buffer=2)]
    for k, B, prio, exits in [(1, 1, "eager", None), (2, 3, "align", None), (4, 8, "eager", None),
                              (4, 2, "deep", None), (8, 8, "confident", None), (3, 6, "align", every2),
                              (8, 4, "deep", every2), (16, 15, "eager", None)]:
        out.append(make_policy("dex", L, exits=exits, explorers=k, buffer=B, priority=prio))
    return out


def label(p) -> str:
    return f"{p.name}(k={p.explorers},B={p.buffer},{getattr(p, 'priority', '')}{getattr(p, 'threshold', '')}" \
           f"{getattr(p, 'exit', '')}/{getattr(p, 'draft', '')},E={len(p.exits)})"


@pytest.mark.parametrize("seed", SEEDS)
def test_ar_equals_transformers_generate(seed):
    pytest.importorskip("transformers")
    from dexref.hf import hf_greedy, hf_model

    model, state, a = tiny_model(seed)
    ref = hf_model(a, state, torch.float64)
    prompts = random_prompts(seed, a.vocab, (1, 4, 11))
    run = generate(model, prompts, make_policy("ar", a.n_layer), NEW)
    for p, out in zip(prompts, run.outputs):
        assert out == hf_greedy(ref, p, NEW)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_policy_gives_ar_tokens(seed):
    model, _, a = tiny_model(seed)
    prompts = random_prompts(seed, a.vocab, (1, 5, 9))
    ar = generate(model, prompts, make_policy("ar", a.n_layer), NEW).outputs
    assert all(len(o) == NEW for o in ar)
    for policy in policies(a.n_layer):
        run = generate(model, prompts, policy, NEW)  # the three prompts as S = 3 sequences of one lattice
        assert run.outputs == ar, label(policy)
        assert run.counters()["tokens"] == 3 * NEW
        # every KV slot came back (commit and discard hooks); the committed cache ends at the last commit
        assert all(sorted(f) == list(range(policy.buffer + 1)) for f in run.executor.free), label(policy)
        assert list(run.executor.n_cached) == [len(p) - 1 + NEW for p in prompts]
        alone = generate(model, prompts[2:], policy, NEW)  # S = 1: the same counters for that sequence
        assert alone.outputs == ar[2:], label(policy)
        for key in ("rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks"):
            assert getattr(alone.lattice.counters, key)[0] == getattr(run.lattice.counters, key)[2], (label(policy), key)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_jumping_computes_the_same(seed):
    """With `jump` the core takes quiet stretches of rounds in one call; the engine still computes
    every layer: same tokens, same counters, and (batch-invariant) the same committed cache bit for
    bit. In fast mode a sequence jumping alone is batched with fewer rows of the other sequences, so
    only the last bits may differ."""
    model, _, a = tiny_model(seed)
    prompts = random_prompts(seed, a.vocab, (2, 6))
    for policy in policies(a.n_layer)[::2]:
        for bi in (False, True):
            plain = generate(model, prompts, policy, NEW, batch_invariant=bi)
            jumped = generate(model, prompts, policy, NEW, batch_invariant=bi, jump=True)
            assert jumped.outputs == plain.outputs, label(policy)
            assert jumped.counters() == plain.counters(), label(policy)
            for s in range(len(prompts)) if bi else ():
                assert torch.equal(jumped.executor.committed_cache(s)[0], plain.executor.committed_cache(s)[0]), \
                    label(policy)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_eos_stops_every_policy_alike(seed):
    model, _, a = tiny_model(seed)
    prompts = random_prompts(seed, a.vocab, (2, 6))
    ar = generate(model, prompts, make_policy("ar", a.n_layer), NEW).outputs
    eos = ar[0][len(ar[0]) // 2]  # a token that does occur
    ar_eos = generate(model, prompts, make_policy("ar", a.n_layer), NEW, eos=eos).outputs
    assert ar_eos[0] == ar[0][: ar[0].index(eos) + 1]
    for policy in policies(a.n_layer)[1::2]:
        assert generate(model, prompts, policy, NEW, eos=eos).outputs == ar_eos, label(policy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_batch_invariant_states_are_bitwise_ar(seed, dtype):
    """Every node-layer any policy computes (on the true path or not) equals, bit for bit, the state AR
    computes for that node's path; and the tokens equal AR's."""
    model, _, a = tiny_model(seed, dtype=dtype, n_layer=4)
    prompt = random_prompts(seed, a.vocab, (6,))[0]
    ar = generate(model, [prompt], make_policy("ar", a.n_layer), 16, batch_invariant=True).outputs[0]
    cache: dict[tuple, torch.Tensor] = {}
    checked = []

    def observe(lat, s, j, depth, states):
        for r in range(len(s)):
            si, ji = int(s[r]), int(j[r])
            seq = node_path(lat, si, ji, prompt)
            assert len(seq) - 1 == lat.pos[si, ji]
            if seq not in cache:
                cache[seq] = reference_states(model, list(seq), len(prompt))[-1]  # [L+1, D]
            assert torch.equal(cache[seq][depth], states[r]), (depth, seq)
            checked.append(len(seq) - len(prompt) - int(lat.counters.tokens[si]))

    for policy in (make_policy("dex", a.n_layer, explorers=4, buffer=6),
                   make_policy("layerskip", a.n_layer, exit=1, draft=3),
                   make_policy("adaptive", a.n_layer, threshold=0.3, buffer=3)):
        run = generate(model, [prompt], policy, 16, batch_invariant=True, observe=observe)
        assert run.outputs[0] == ar, label(policy)
    assert max(checked) >= 2  # branches below branches were checked too


def test_bf16_fast_mode_rounds_apart_from_ar():
    """Why the batch-invariant mode exists: in bfloat16 the fast mode's batched rows round differently
    from AR's one-row steps, so its committed cache differs from AR's (and a near-tie can flip a token),
    while the batch-invariant mode's is AR's bit for bit (the bitwise tests above are not vacuous)."""
    differs = 0
    for seed in range(3):
        model, _, a = tiny_model(seed, dtype=torch.bfloat16, n_layer=4)
        prompts = random_prompts(seed, a.vocab, (6,))
        ar = generate(model, prompts, make_policy("ar", 4), 16).executor.committed_cache(0)
        runs = {bi: generate(model, prompts, make_policy("dex", 4, explorers=4, buffer=8), 16, batch_invariant=bi)
                for bi in (False, True)}
        assert all(map(torch.equal, runs[True].executor.committed_cache(0), ar))
        differs += not all(map(torch.equal, runs[False].executor.committed_cache(0), ar))
    assert differs >= 2


@pytest.mark.parametrize("seed", range(8))
def test_gumbel_sampling_dex_equals_ar(seed):
    model, _, a = tiny_model(seed % 4)
    prompts = random_prompts(seed, a.vocab, (3, 7))
    sampling = Sampling("gumbel", seed=seed, temperature=(1.0, 0.7, 1.6)[seed % 3])
    ar = generate(model, prompts, make_policy("ar", a.n_layer), NEW, sampling=sampling).outputs
    greedy = generate(model, prompts, make_policy("ar", a.n_layer), NEW).outputs
    for policy in (make_policy("dex", a.n_layer, explorers=4, buffer=8),
                   make_policy("dex", a.n_layer, explorers=2, buffer=3, priority="align"),
                   make_policy("layerskip", a.n_layer, exit=max(a.n_layer // 2, 1), draft=3),
                   make_policy("adaptive", a.n_layer, threshold=0.2, buffer=4)):
        assert generate(model, prompts, policy, NEW, sampling=sampling).outputs == ar, label(policy)
    if seed < 4:
        assert ar != greedy  # the noise does something
    other = Sampling("gumbel", seed=seed + 100, temperature=sampling.temperature)
    assert generate(model, prompts, make_policy("ar", a.n_layer), NEW, sampling=other).outputs != ar


def test_bad_input_is_a_user_error():
    from dexsim.errors import UserError

    model, _, a = tiny_model(0)
    ar = make_policy("ar", a.n_layer)
    for prompts, n in [([[]], 4), ([[1]], 0), ([[1] * (a.max_len - 3)], 4), ([[a.vocab]], 4)]:
        with pytest.raises(UserError):
            generate(model, prompts, ar, n)
    for bad in (dict(rule="nucleus"), dict(rule="gumbel", temperature=0.0), dict(rule="gumbel", seed=-1)):
        with pytest.raises(UserError):
            Sampling(**bad)


# ---------------------------------------------------------------------------- traces and replay

def _recorded(tmp_path, seed, n_layer=5, lengths=(1, 3, 7, 12, 5), new=32):
    model, _, a = tiny_model(seed, n_layer=n_layer)
    prompts = random_prompts(seed, a.vocab, lengths)
    eos = 0
    arrays = rec.record(model, prompts, max_new_tokens=new, depths=np.arange(1, a.n_layer + 1), eos=eos)
    arch = dict(layers=a.n_layer, hidden=a.dim, intermediate=a.intermediate, heads=a.n_head,
                kv_heads=a.n_kv_head, head_dim=a.head_dim, vocab=a.vocab, params=0, dtype="float64")
    path = str(tmp_path / "tiny.npz")
    rec.save(arrays, path, catalog_name="smollm2-135m", dataset="test", template="raw", sampling=Sampling(),
             params={"test": True}, arch=arch)
    return model, a, prompts, eos, load_trace(path)


def test_recorded_trace_is_valid_and_is_ar(tmp_path):
    model, a, prompts, eos, trace = _recorded(tmp_path, 3)
    ar = generate(model, prompts, make_policy("ar", a.n_layer), 32, eos=eos).outputs
    assert trace.meta["synthetic"] is False and trace.meta["heads"] == "lens"
    assert trace.meta["recorder"]["tool"] == "dexref"
    for s, out in enumerate(ar):
        assert trace.final[trace.seq_slice(s)].tolist() == out
    assert (trace.exit_tokens[:, -1] == trace.final).all()
    assert list(trace.prompt_len) == [len(p) for p in prompts]


def test_blocks_follow_the_weights_when_the_model_is_cast():
    """qkv / finish read `model.blocks` (plain tensors); a cast by .to() must not leave them stale."""
    model, state, a = tiny_model(2, torch.float32)
    cast = tiny_model(2, torch.float32)[0].to(torch.float64)  # rotary tables cast from float32, as to_dtype makes them
    ref = from_state(a, {k: w.float() for k, w in state.items()}, torch.float64)  # the same float32 weights
    assert all(b.wqkv.dtype == torch.float64 for b in cast.blocks)
    prompts = random_prompts(2, a.vocab, (4, 7))
    for policy in (make_policy("ar", a.n_layer), policies(a.n_layer)[-1]):
        assert generate(cast, prompts, policy, 6).outputs == generate(ref, prompts, policy, 6).outputs
    x = torch.randn(3, a.dim, dtype=torch.float64)
    pos = torch.tensor([0, 2, 5])
    assert all(torch.equal(u, v) for u, v in zip(qkv(cast, 1, x, pos), qkv(ref, 1, x, pos)))
    assert model.blocks[0].wqkv.dtype == torch.float32


def test_recording_batches_fit_the_cache_budget_and_change_nothing():
    lengths = [50, 3, 400, 7, 9, 1200, 2, 2, 2]
    parts = rec.batches(lengths, batch=3, per_position=1, budget=1000)
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(len(lengths)))  # all, in order
    for p in parts:
        group = lengths[p]
        assert len(group) <= 3
        assert len(group) == 1 or len(group) * max(group) <= 1000  # only a lone sequence may exceed it
    assert [len(lengths[p]) for p in parts] == [2, 2, 1, 1, 3]
    model, _, a = tiny_model(5)
    prompts = random_prompts(5, a.vocab, (9, 2, 30, 4))
    depths = np.arange(1, a.n_layer + 1)
    one = rec.record(model, prompts, max_new_tokens=6, depths=depths, eos=None, batch=4, cache_budget=1 << 40)
    per_position = 2 * a.n_layer * a.n_kv_head * a.head_dim * 8
    split = rec.record(model, prompts, max_new_tokens=6, depths=depths, eos=None, batch=4,
                       cache_budget=20 * per_position)  # 30 + 6 positions: alone
    for k in one:
        assert np.array_equal(one[k], split[k]), k


KEYS = ("tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks",
        "commit_rounds", "reused_depth")


@pytest.mark.parametrize("seed", [1, 3])
def test_replay_agrees_exactly_where_off_path_tokens_cannot_matter(tmp_path, seed):
    """ar, layerskip and adaptive with tau = 0 grow chains: whatever an off-path node predicts, the
    lattice has the same shape. dex, eager with explorers to spare, with every exit depth above L/2:
    an off-path node is spawned at its parent's depth e > L/2 and keeps e layers behind it, so it is
    discarded before it reaches any exit and never reads a head. Either way every counter agrees
    exactly with dexsim's replay of the trace."""
    model, a, prompts, eos, trace = _recorded(tmp_path, seed)
    L = a.n_layer
    late = np.arange(L // 2 + 1, L + 1)
    for policy in (make_policy("ar", L), make_policy("layerskip", L, exit=1, draft=1),
                   make_policy("layerskip", L, exit=2, draft=4), make_policy("layerskip", L, exit=L - 1, draft=2),
                   make_policy("adaptive", L, threshold=0.0, buffer=4),
                   make_policy("dex", L, exits=late, explorers=64, buffer=63)):
        engine = generate(model, prompts, policy, 32, eos=eos, record_events=True)
        sim = replay(trace, policy, record_events=True)
        assert {k: engine.counters()[k] for k in KEYS} == {k: sim.counters.totals()[k] for k in KEYS}, label(policy)
        assert on_path_events(engine.lattice, trace.prompt_len, engine.outputs) == \
            on_path_events(sim, trace.prompt_len, engine.outputs), label(policy)


@pytest.mark.parametrize("seed", [1, 3])
def test_replay_agrees_on_the_true_path_for_dex(tmp_path, seed):
    """dex expands off-path nodes with the tokens they predict, which a trace does not hold (a replay
    models them), so off-path work differs. When no explorer or buffer limit binds, the true path
    does not depend on off-path nodes: tokens, rounds, fallbacks, verifications, the depth of each new
    anchor and every on-path event agree."""
    model, a, prompts, eos, trace = _recorded(tmp_path, seed)
    L = a.n_layer
    for prio in ("eager", "deep", "confident"):
        policy = make_policy("dex", L, explorers=200, buffer=199, priority=prio)
        engine = generate(model, prompts, policy, 32, eos=eos, record_events=True)
        sim = replay(trace, policy, record_events=True)
        assert (max_live(engine.lattice) <= policy.buffer).all() and (max_live(sim) <= policy.buffer).all()
        e, r = engine.counters(), sim.counters.totals()
        true_path = ("tokens", "rounds", "fallbacks", "commit_rounds", "reused_depth")
        assert {k: e[k] for k in true_path} == {k: r[k] for k in true_path}
        assert on_path_events(engine.lattice, trace.prompt_len, engine.outputs) == \
            on_path_events(sim, trace.prompt_len, engine.outputs), prio
