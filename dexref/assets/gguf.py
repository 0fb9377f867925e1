"""A GGUF model file -> the cache's fp32 safetensors, config.json and tokenizer.json.

Every tensor is dequantized to fp32 with the `gguf` package; llama.cpp's rotary permutation of the
query and key weights is undone (so the weights are in the Hugging Face layout); Gemma's RMSNorm
weights, stored by llama.cpp's converter as 1 + w, are taken back to w (Hugging Face's layout)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dexsim.errors import UserError


from .sources import ModelSource, sha256_file


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of a q/k projection [n_head * head_dim, dim]: it
    interleaves the two rotary halves of each head; the Hugging Face layout keeps them apart."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf(gguf_path: Path, out: Path, name: str, source: ModelSource | None = None) -> dict:
    """Dequantize a llama- or gemma3-architecture GGUF to fp32 safetensors + config + tokenizer in `out`."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch == "gemma3":
        return _convert_gemma3(reader, gguf_path, out, name, source)
    if arch != "llama":
        raise UserError(f"{gguf_path}: architecture {arch!r} is not supported (llama, gemma3)")
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv"))
    dim = int(_field(reader, "llama.embedding_length"))
    cfg = dict(
        n_layer=int(_field(reader, "llama.block_count")), dim=dim, n_head=n_head, n_kv_head=n_kv,
        head_dim=int(_field(reader, "llama.rope.dimension_count", dim // n_head)),
        intermediate=int(_field(reader, "llama.feed_forward_length")),
        vocab=int(_field(reader, "llama.vocab_size", 0)) or len(reader.fields["tokenizer.ggml.tokens"].data),
        rope_base=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        max_len=int(_field(reader, "llama.context_length")),
        bos=int(_field(reader, "tokenizer.ggml.bos_token_id", -1)),
        eos=int(_field(reader, "tokenizer.ggml.eos_token_id", -1)),
    )
    names = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
             "output.weight": "output.weight"}
    per_layer = {"attn_norm": "attention_norm", "ffn_norm": "ffn_norm", "attn_q": "attention.wq",
                 "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
                 "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}
    state = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if t.name.startswith("blk."):
            _, i, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = _unpermute(w, n_head)
            elif kind == "attn_k":
                w = _unpermute(w, n_kv)
            key = f"layers.{i}.{per_layer[kind]}.weight"
        else:
            key = names[t.name]
        state[key] = torch.from_numpy(np.ascontiguousarray(w))
    meta = _write_cache(out, state, cfg, name, gguf_path, source, dtype="float32 (dequantized from the GGUF)")
    _save_tokenizer(reader, out)
    return meta


def _write_cache(out: Path, state: dict, cfg: dict, name: str, gguf_path: Path, source, **extra) -> dict:
    """The weights and config.json (what the model is and where it came from) of a cache folder."""
    from safetensors.torch import save_file

    cfg["tied"] = "output.weight" not in state
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    meta = {"name": name, "args": cfg, "gguf": gguf_path.name, "gguf_sha256": sha256_file(gguf_path),
            "source": None if source is None else source.describe(), **extra}
    (out / "config.json").write_text(json.dumps(meta, indent=1))
    return meta


GEMMA3_NAMES = {"attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
                "attn_v": "attention.wv", "attn_output": "attention.wo", "attn_q_norm": "attention.q_norm",
                "attn_k_norm": "attention.k_norm", "post_attention_norm": "post_attention_norm",
                "ffn_norm": "ffn_norm", "post_ffw_norm": "post_ffn_norm", "ffn_gate": "feed_forward.w1",
                "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}


def _convert_gemma3(reader, gguf_path: Path, out: Path, name: str, source: ModelSource | None) -> dict:
    """Gemma 3 (text): no rotary permutation (llama.cpp runs Gemma's rotary in the rotate-half layout),
    but every RMSNorm weight was stored as 1 + w; the cache holds w (Hugging Face's layout), and the
    model scales by (1 + w). Settings the GGUF does not carry are Gemma 3's: query_pre_attn_scalar =
    head_dim, every 6th layer global, rotary base 10,000 on the local layers."""
    import torch
    from gguf.quants import dequantize

    g = lambda key, default=None: _field(reader, f"gemma3.{key}", default)  # noqa: E731
    hd = int(g("attention.key_length"))
    cfg = dict(
        n_layer=int(g("block_count")), dim=int(g("embedding_length")), n_head=int(g("attention.head_count")),
        n_kv_head=int(g("attention.head_count_kv")), head_dim=hd, intermediate=int(g("feed_forward_length")),
        vocab=len(reader.fields["tokenizer.ggml.tokens"].data), rope_base=float(g("rope.freq_base", 1e6)),
        # stored as float32: 1e-06 as Hugging Face's config writes it
        norm_eps=float(f"{float(g('attention.layer_norm_rms_epsilon')):.7g}"),
        max_len=int(g("context_length")), bos=int(_field(reader, "tokenizer.ggml.bos_token_id", -1)),
        eos=int(_field(reader, "tokenizer.ggml.eos_token_id", -1)),
        norm_offset=1.0, qk_norm=True, sandwich_norm=True, act="gelu_tanh", embed_scale=True,
        attn_scalar=float(hd), sliding_window=int(g("attention.sliding_window")), global_every=6,
        rope_local_base=10000.0)
    if g("final_logit_softcapping") or g("attn_logit_softcapping"):
        raise UserError(f"{gguf_path}: logit soft-capping is not supported")
    state = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if t.name.startswith("blk."):
            _, i, kind, _ = t.name.split(".")
            key = f"layers.{i}.{GEMMA3_NAMES[kind]}.weight"
        else:
            key = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
                   "output.weight": "output.weight"}[t.name]
        if key.endswith("norm.weight"):
            w = w - np.float32(1.0)  # llama.cpp stored 1 + w
        state[key] = torch.from_numpy(np.ascontiguousarray(w))
    meta = _write_cache(out, state, cfg, name, gguf_path, source, add_bos=True,
                        dtype="float32 (dequantized from the GGUF; RMSNorm weights minus the 1 llama.cpp added)")
    _save_sentencepiece_tokenizer(reader, out)
    return meta


def _save_sentencepiece_tokenizer(reader, out: Path) -> None:
    """Gemma's tokenizer (a SentencePiece BPE with byte fallback) as a `tokenizers` BPE, built as
    `transformers` builds it from a Gemma GGUF: spaces become "▁" (no prefix space), pre-split after
    each space, byte fallback; the file has no merges, so they are recovered from the vocabulary, best
    first in the file's token order; tokens made only of spaces are respelled with "▁"."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = _field(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise UserError(f"tokenizer model {model!r} is not supported here (SentencePiece 'llama' only)")
    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    score = {t: -i for i, t in enumerate(tokens)}  # the file's order (a respelled duplicate keeps its last id)
    merges = []  # transformers' generate_merges(vocab, score): best score first, then longer left, longer right
    for t, sc in score.items():
        local = [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges += [(sc, len(m[0]), len(m[1]), m) for m in local]
    merges.sort(key=lambda m: m[:3], reverse=True)
    unk = tokens[int(_field(reader, "tokenizer.ggml.unknown_token_id", 3))]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[m[3] for m in merges], fuse_unk=True, unk_token=unk,
                               byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    tok.save(str(out / "tokenizer.json"))
    template = _field(reader, "tokenizer.chat_template")
    if template:
        (out / "chat_template.jinja").write_text(template)


def _save_tokenizer(reader, out: Path) -> None:
    """A byte-level BPE `tokenizers` tokenizer from the GGUF vocabulary and merges. SmolLM2's
    pre-tokenizer ("smollm" in llama.cpp) splits digits one by one, then applies the GPT-2 regex."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UserError(f"tokenizer model {model!r} is not supported (gpt2 BPE only)")
    pre = _field(reader, "tokenizer.ggml.pre")
    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(control)
    tok.save(str(out / "tokenizer.json"))
    template = _field(reader, "tokenizer.chat_template")
    if template:
        (out / "chat_template.jinja").write_text(template)


