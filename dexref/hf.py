"""The Hugging Face reference: a `transformers` LlamaForCausalLM holding exactly our weights, and its
greedy `generate()`. Used by the tests and the benchmark (transformers is a test dependency only)."""
from __future__ import annotations

import torch

from .model import ModelArgs


def hf_config(a: ModelArgs):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.dim, intermediate_size=a.intermediate,
        num_hidden_layers=a.n_layer, num_attention_heads=a.n_head, num_key_value_heads=a.n_kv_head,
        head_dim=a.head_dim, rms_norm_eps=a.norm_eps, max_position_embeddings=a.max_len,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_base},
        tie_word_embeddings=a.tied, hidden_act="silu", attention_bias=False, mlp_bias=False,
        bos_token_id=a.bos if a.bos >= 0 else None, eos_token_id=a.eos if a.eos >= 0 else None,
        pad_token_id=a.eos if a.eos >= 0 else None)


HF_NAMES = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
            "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
            "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj"}


def to_hf_state(state: dict) -> dict:
    """Our (unfused) names -> Hugging Face Llama names."""
    out = {}
    for key, w in state.items():
        if key == "tok_embeddings.weight":
            out["model.embed_tokens.weight"] = w
        elif key == "norm.weight":
            out["model.norm.weight"] = w
        elif key == "output.weight":
            out["lm_head.weight"] = w
        else:
            _, i, rest = key.split(".", 2)
            out[f"model.layers.{i}.{HF_NAMES[rest[: -len('.weight')]]}.weight"] = w
    return out


def hf_model(a: ModelArgs, state: dict, dtype: torch.dtype = torch.float32, attn: str = "sdpa"):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(hf_config(a))
    hs = to_hf_state(state)
    if a.tied:
        hs["lm_head.weight"] = hs["model.embed_tokens.weight"]
    model.load_state_dict(hs, strict=True)
    model.config._attn_implementation = attn
    return model.to(dtype).eval().requires_grad_(False)


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """`generate(do_sample=False)`: the generated ids (stopping after eos if given)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, min_new_tokens=0,
                         eos_token_id=eos, pad_token_id=eos if eos is not None else 0,
                         temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()
