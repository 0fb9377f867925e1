"""Gemma 3 in dexref (a second architecture: ModelArgs flags, one model file, the same engine).

Tiny random Gemma 3 models (float64, a sliding window shorter than the prompt, local and global
layers with their own rotary bases, an attention scalar other than head_dim): every policy gives
transformers' Gemma3ForCausalLM greedy tokens, and the batch-invariant mode gives AR's tokens.
The real Gemma-3-270M (fetched from the registry once per machine, skipped where it cannot be):
greedy `ar` and `dex` tokens equal transformers' `generate` on the same float32 weights."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dexref.engine import generate  # noqa: E402
from dexref.model import ModelArgs, from_state, random_state, window  # noqa: E402
from one_thread import one_thread  # noqa: E402, F401  (autouse fixture)
from dexsim.errors import UserError  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402

TINY = ModelArgs(n_layer=4, dim=32, n_head=4, n_kv_head=2, head_dim=16, intermediate=48, vocab=97,
                 rope_base=1e6, norm_eps=1e-6, max_len=128, tied=False, bos=2, eos=-1,
                 norm_offset=1.0, qk_norm=True, sandwich_norm=True, act="gelu_tanh", embed_scale=True,
                 attn_scalar=24.0, sliding_window=5, global_every=2, rope_local_base=1e4)



def policies(L):
    E = np.array([1, 2, 3, 4])
    return [make_policy("ar", L), make_policy("layerskip", L, exit=2, draft=3),
            make_policy("adaptive", L, exits=E, threshold=0.3, buffer=4),
            make_policy("dex", L, exits=E, explorers=4, buffer=6)]


def test_window_pattern():
    assert [window(TINY, i) for i in range(4)] == [5, 0, 5, 0]
    g = ModelArgs(n_layer=18, sliding_window=512, global_every=6)
    assert [i for i in range(18) if not window(g, i)] == [5, 11, 17]
    assert window(ModelArgs(), 0) == 0  # Llama: every layer global


def test_tiny_gemma3_every_policy_equals_transformers():
    pytest.importorskip("transformers")
    from dexref.hf import hf_greedy, hf_model

    state = random_state(TINY, seed=3)
    model = from_state(TINY, state, torch.float64)
    hf = hf_model(TINY, state, torch.float64, attn="eager")
    g = torch.Generator().manual_seed(0)
    prompts = [[2] + torch.randint(3, TINY.vocab, (n,), generator=g).tolist() for n in (11, 3)]  # > and < window
    new = 10
    ref = [hf_greedy(hf, p, new) for p in prompts]
    assert all(len(set(r)) > 3 for r in ref)  # not a degenerate repetition
    for policy in policies(TINY.n_layer):
        assert generate(model, prompts, policy, new).outputs == ref, policy.name
    dex = policies(TINY.n_layer)[-1]
    assert generate(model, prompts[:1], dex, new, batch_invariant=True).outputs == ref[:1]
    # the window matters here: without it (every layer global) the tokens differ
    glob = ModelArgs(**{**TINY.to_dict(), "sliding_window": 0})
    assert generate(from_state(glob, state, torch.float64), prompts, policies(4)[0], new).outputs != ref


@pytest.fixture(scope="module")
def folder():
    from dexref.assets.fetch import require_model

    try:
        return require_model("gemma3-270m")
    except UserError as e:  # no cache and no registry on this machine
        pytest.skip(str(e))


def test_real_gemma3_ar_and_dex_equal_transformers_generate(folder):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from dexref.hf import hf_greedy, hf_model
    from dexref.model import load_cached
    from dexref.assets.tokenizer import Tok

    model, cfg = load_cached(folder)
    a = model.args
    assert (a.n_layer, a.dim, a.n_head, a.n_kv_head, a.head_dim, a.vocab) == (18, 640, 4, 1, 256, 262144)
    assert cfg["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    tok = Tok(folder)
    prompts = [tok.apply(t, "raw") for t in ("The capital of France is", "def fibonacci(n):")]
    assert prompts[0] == [2, 818, 5279, 529, 7001, 563]  # BOS first, as transformers' GGUF tokenizer gives
    new = 6
    hf = hf_model(a, load_file(str(folder / "model.safetensors")), torch.float32)
    ref = [hf_greedy(hf, p, new, a.eos) for p in prompts]
    del hf
    assert tok.decode(ref[0]).startswith(" the capital")
    assert generate(model, prompts, make_policy("ar", a.n_layer), new, eos=a.eos).outputs == ref
    dex = make_policy("dex", a.n_layer, exits=np.array([9, 12, 15, 18]), explorers=4, buffer=6)
    assert generate(model, prompts, dex, new, eos=a.eos).outputs == ref
