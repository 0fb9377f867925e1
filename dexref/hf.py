"""The Hugging Face reference: a `transformers` LlamaForCausalLM (or Gemma3ForCausalLM, for a model
with Gemma's flags) holding exactly our weights, and its greedy `generate()`. Used by the tests and the
benchmark (transformers is a test dependency only)."""
from __future__ import annotations

import torch

from .model import ModelArgs, window


def is_gemma(a: ModelArgs) -> bool:
    return a.sandwich_norm


def gemma3_config(a: ModelArgs):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=a.vocab, hidden_size=a.dim, intermediate_size=a.intermediate,
        num_hidden_layers=a.n_layer, num_attention_heads=a.n_head, num_key_value_heads=a.n_kv_head,
        head_dim=a.head_dim, rms_norm_eps=a.norm_eps, max_position_embeddings=a.max_len,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": a.rope_base},
                         "sliding_attention": {"rope_type": "default", "rope_theta": a.rope_local_base or a.rope_base}},
        query_pre_attn_scalar=int(a.attn_scalar or a.head_dim), sliding_window=a.sliding_window or None,
        layer_types=["sliding_attention" if window(a, i) else "full_attention" for i in range(a.n_layer)],
        tie_word_embeddings=a.tied, hidden_activation="gelu_pytorch_tanh", attention_bias=False,
        final_logit_softcapping=None, attn_logit_softcapping=None,
        bos_token_id=a.bos if a.bos >= 0 else None, eos_token_id=a.eos if a.eos >= 0 else None,
        pad_token_id=0)


def hf_config(a: ModelArgs):
    from transformers import LlamaConfig

    if is_gemma(a):
        return gemma3_config(a)
    return LlamaConfig(
        vocab_size=a.vocab, hidden_size=a.dim, intermediate_size=a.intermediate,
        num_hidden_layers=a.n_layer, num_attention_heads=a.n_head, num_key_value_heads=a.n_kv_head,
        head_dim=a.head_dim, rms_norm_eps=a.norm_eps, max_position_embeddings=a.max_len,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_base},
        tie_word_embeddings=a.tied, hidden_act="silu", attention_bias=False, mlp_bias=False,
        bos_token_id=a.bos if a.bos >= 0 else None, eos_token_id=a.eos if a.eos >= 0 else None,
        pad_token_id=a.eos if a.eos >= 0 else None)


def to_hf_state(state: dict, gemma: bool = False) -> dict:
    """Our (unfused) names -> Hugging Face Llama (or Gemma 3) names."""
    from .checkpoint import hf_name

    return {hf_name(key, gemma): w for key, w in state.items()}


def hf_model(a: ModelArgs, state: dict, dtype: torch.dtype = torch.float32, attn: str = "sdpa"):
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is loaded below (strict): skip the random init (Gemma's 168 M embedding)
        model = (Gemma3ForCausalLM if is_gemma(a) else LlamaForCausalLM)(hf_config(a))
    hs = to_hf_state(state, is_gemma(a))
    if a.tied:
        hs["lm_head.weight"] = hs["model.embed_tokens.weight"]
    model.load_state_dict(hs, strict=True)
    model.config._attn_implementation = attn
    return model.to(dtype).eval().requires_grad_(False)


@torch.no_grad()
def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """`generate(do_sample=False)`: the generated ids (stopping after eos if given)."""
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, min_new_tokens=0,
                         eos_token_id=eos, pad_token_id=eos if eos is not None else 0,
                         temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()
