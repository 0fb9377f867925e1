"""A layer-addressable Llama-family transformer: RMSNorm, rotary embeddings, grouped-query attention,
SwiGLU, tied embeddings. One file, in the spirit of nanoGPT's and gpt-fast's `model.py`. A few
`ModelArgs` flags (all off for Llama) make it Gemma 3: RMSNorm scaling by (1 + w), q/k RMSNorm per
head, norms after attention and after the MLP too, GeGLU (gelu, tanh approximation), embeddings times
sqrt(dim), sliding-window attention with its own rotary base on the local layers, and an attention
scale of query_pre_attn_scalar ** -0.5.

The engine never calls a whole forward pass: it runs one block at a time on a set of rows (nodes of
the lattice), so a block is split where the attention context comes in:

    x -> qkv(block, x, pos)  -> q, k, v          (per row, with the rotary embedding applied)
    q + context K, V         -> attend(...)      (the caller builds the context: cache + tree)
    x, attention output      -> finish(block, x, a) -> x'   (output projection, residual, MLP)

and `head(model, x)` is the exit head (final norm + shared LM head: the logit lens at depth < L).
`prefill` runs whole prompts through every block with a causal mask, to fill the committed cache.

Numerics follow Hugging Face's Llama where it matters for token equality (rotary tables computed in
float32, RMSNorm as weight * (x * rsqrt(mean(x^2) + eps))); everything else runs in the model's dtype.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ModelArgs:
    n_layer: int = 30
    dim: int = 576
    n_head: int = 9
    n_kv_head: int = 3
    head_dim: int = 64
    intermediate: int = 1536
    vocab: int = 49152
    rope_base: float = 100000.0
    norm_eps: float = 1e-5
    max_len: int = 8192
    tied: bool = True
    bos: int = -1
    eos: int = -1
    # Gemma 3 (Hugging Face's Gemma3ForCausalLM); the defaults are Llama's.
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + w): 1.0 in Gemma (weights stored as w)
    qk_norm: bool = False  # RMSNorm of each query and key head (over head_dim) before the rotary embedding
    sandwich_norm: bool = False  # RMSNorm of the attention output and of the MLP output, before each residual add
    act: str = "silu"  # MLP gate activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embed_scale: bool = False  # embeddings times sqrt(dim) (the factor rounded to float32, then the model dtype)
    attn_scalar: float = 0.0  # scores times attn_scalar ** -0.5 (query_pre_attn_scalar); 0: 1 / sqrt(head_dim)
    sliding_window: int = 0  # local layers attend to the last sliding_window positions (themselves included)
    global_every: int = 0  # with a window: every global_every-th layer (1-based) is global, the others local;
    # 0: every layer is local (Mistral)
    rope_local_base: float = 0.0  # rotary base of the local layers (0: rope_base)
    # Other Hugging Face checkpoints (dexref/checkpoint.py); the defaults are Llama's.
    qkv_bias: bool = False  # Qwen2: biases on the q, k and v projections
    rope_scaling: dict | None = None  # Hugging Face's rope_scaling of the global layers: linear or llama3

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """x [..., D] -> w * (x * rsqrt(mean(x^2) + eps)), Hugging Face's formula; w is the scale itself
    (Gemma's offset already added). In 16-bit dtypes the normalisation runs in float32 and is cast
    back before the scale, as Hugging Face's Llama does."""
    if x.dtype.itemsize < 4:
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def softmax(s: Tensor) -> Tensor:
    """Softmax over the last axis; 16-bit scores are normalised in float32 (Hugging Face's eager
    attention does the same), then cast back."""
    if s.dtype.itemsize < 4:
        return torch.softmax(s, dim=-1, dtype=torch.float32).to(s.dtype)
    return torch.softmax(s, dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim))

    def scale(self) -> Tensor:
        return self.weight if not self.offset else self.offset + self.weight  # Gemma: (1 + w)

    def forward(self, x: Tensor) -> Tensor:  # x [..., D]
        return rms_norm(x, self.scale(), self.eps)


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.wqkv = nn.Linear(a.dim, (a.n_head + 2 * a.n_kv_head) * a.head_dim, bias=a.qkv_bias)  # q, k, v fused
        self.wo = nn.Linear(a.n_head * a.head_dim, a.dim, bias=False)
        if a.qk_norm:
            self.q_norm = RMSNorm(a.head_dim, a.norm_eps, a.norm_offset)
            self.k_norm = RMSNorm(a.head_dim, a.norm_eps, a.norm_offset)


class FeedForward(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.w13 = nn.Linear(a.dim, 2 * a.intermediate, bias=False)  # gate (w1) and up (w3) fused
        self.w2 = nn.Linear(a.intermediate, a.dim, bias=False)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)  # before attention
        self.attention = Attention(a)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)  # before the MLP
        self.feed_forward = FeedForward(a)
        if a.sandwich_norm:  # Gemma: on the attention output and on the MLP output
            self.post_attention_norm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)
            self.post_ffn_norm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)


@dataclass(frozen=True)
class BlockWeights:
    """What block `layer` reads, as plain tensors (norm scales with Gemma's offset added, its rotary
    tables): `qkv` and `finish` run once per layer per row, and the nn.Module attribute lookups they
    would otherwise make (about twenty, ~1 us each) cost 7% of a decode step on SmolLM2."""
    attention_norm: Tensor
    wqkv: Tensor
    wo: Tensor
    ffn_norm: Tensor
    w13: Tensor
    w2: Tensor
    rope: Tensor  # [max_len, 2, hd]: cos and sin
    rope_half: Tensor
    bqkv: Tensor | None = None
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None
    post_attention_norm: Tensor | None = None
    post_ffn_norm: Tensor | None = None


TABLES = ("rope", "rope_local", "rope_half", "embed_scale")  # buffers `set_tables` builds


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.args = a
        self.tok_embeddings = nn.Embedding(a.vocab, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layer))
        self.norm = RMSNorm(a.dim, a.norm_eps, a.norm_offset)
        self.output = nn.Linear(a.dim, a.vocab, bias=False)
        if a.tied:
            self.output.weight = self.tok_embeddings.weight
        self.set_tables(torch.float32)

    def set_tables(self, dtype: torch.dtype) -> None:
        """The rotary tables (computed in float32, cast like Hugging Face does), the rotate-half matrix
        and the embedding scale, in dtype, on the weights' device; then each block's `BlockWeights`."""
        a = self.args
        dev = self.tok_embeddings.weight.device
        # computed on the CPU (float32 tables as Hugging Face's), then moved
        with torch.device("cpu"):
            rope = torch.stack(rope_tables(a, scaling=a.rope_scaling), 1)  # [max_len, 2, hd]
            local = torch.stack(rope_tables(a, a.rope_local_base), 1) if a.rope_local_base else None
            half = rotate_half_matrix(a.head_dim)  # [hd, hd]
            # Hugging Face's Gemma keeps sqrt(dim) as a float32 buffer and casts it to the weights' dtype.
            scale = torch.tensor(a.dim ** 0.5)
        self.register_buffer("rope", rope.to(dev, dtype), persistent=False)
        if local is not None:  # the local (sliding-window) layers' own base
            self.register_buffer("rope_local", local.to(dev, dtype), persistent=False)
        self.register_buffer("rope_half", half.to(dev, dtype), persistent=False)
        self.register_buffer("embed_scale", scale.to(dev, dtype), persistent=False)
        self._index_blocks()

    def _index_blocks(self) -> None:
        self.blocks = [self._block_weights(layer) for layer in range(self.args.n_layer)]

    def _block_weights(self, layer: int) -> BlockWeights:
        blk, a = self.layers[layer], self.args
        local = a.rope_local_base and is_local(a, layer)
        extra = {}
        if a.qkv_bias:
            extra.update(bqkv=blk.attention.wqkv.bias)
        if a.qk_norm:
            extra.update(q_norm=blk.attention.q_norm.scale(), k_norm=blk.attention.k_norm.scale())
        if a.sandwich_norm:
            extra.update(post_attention_norm=blk.post_attention_norm.scale(), post_ffn_norm=blk.post_ffn_norm.scale())
        return BlockWeights(
            attention_norm=blk.attention_norm.scale(), wqkv=blk.attention.wqkv.weight, wo=blk.attention.wo.weight,
            ffn_norm=blk.ffn_norm.scale(), w13=blk.feed_forward.w13.weight, w2=blk.feed_forward.w2.weight,
            rope=self.rope_local if local else self.rope, rope_half=self.rope_half, **extra)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def to_dtype(self, dtype: torch.dtype, device: torch.device | str | None = None) -> "Transformer":
        """Cast weights and the tables (and move them to `device` if given). The tables are rebuilt,
        not moved (they may still be on the meta device of `from_state`)."""
        for name in TABLES:
            self._buffers.pop(name, None)
        self.to(device=device, dtype=dtype)
        self.set_tables(dtype)
        return self

    def _apply(self, fn, recurse=True):
        # .to(), .double() and the like replace the weight tensors: `blocks` must hold the new ones.
        super()._apply(fn, recurse)
        if "rope" in self._buffers:
            self._index_blocks()
        return self


ROPE_SCALINGS = ("default", "linear", "llama3")


def rope_tables(a: ModelArgs, base: float | None = None, scaling: dict | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin [max_len, head_dim] of the rotary embedding, in float32 as Hugging Face computes them
    (with its `linear` or `llama3` frequency scaling if given)."""
    inv_freq = 1.0 / ((base or a.rope_base) ** (torch.arange(0, a.head_dim, 2, dtype=torch.int64).float() / a.head_dim))
    if scaling:
        inv_freq = scaled_frequencies(inv_freq, scaling)
    freqs = torch.arange(a.max_len, dtype=torch.int64).float()[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, hd]
    return emb.cos(), emb.sin()


def scaled_frequencies(inv_freq: Tensor, sc: dict) -> Tensor:
    """Hugging Face's rope scaling of the inverse frequencies (`_compute_linear_scaling_rope_parameters`,
    `_compute_llama3_parameters`)."""
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / sc["factor"]
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r}: supported are {', '.join(ROPE_SCALINGS)}")
    factor, lo, hi, old = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"], sc["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    out = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)  # long wavelengths: scaled down
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
    return torch.where(medium, smoothed, out)


def rotate(x: Tensor, cs: Tensor, half: Tensor) -> Tensor:
    """Rotary embedding, rotate-half form: x * cos + rotate_half(x) * sin, where rotate_half(x1, x2) =
    (-x2, x1) is taken as x @ half, a signed permutation matrix (one product, exact: every output is
    one input times +-1 plus zeros). x [R, heads, hd]; cs [R, 2, hd] (cos, sin); half [hd, hd]."""
    return x * cs[:, :1] + (x @ half) * cs[:, 1:]


def rotate_half_matrix(hd: int) -> Tensor:
    """[hd, hd] with x @ m = cat(-x[hd/2:], x[:hd/2])."""
    m = torch.zeros(hd, hd)
    i = torch.arange(hd // 2)
    m[i + hd // 2, i] = -1.0
    m[i, i + hd // 2] = 1.0
    return m


def is_local(a: ModelArgs, layer: int) -> bool:
    """A sliding-window layer (Gemma 3: five local layers, then one global; Mistral: every layer)."""
    if a.global_every == 0:
        return a.sliding_window > 0
    return (layer + 1) % a.global_every != 0


def window(a: ModelArgs, layer: int) -> int:
    """How many positions back (itself included) a row at `layer` sees; 0: all of them."""
    return a.sliding_window if a.sliding_window and is_local(a, layer) else 0


def attn_scale(a: ModelArgs) -> float:
    return 1.0 / math.sqrt(a.head_dim) if not a.attn_scalar else a.attn_scalar ** -0.5


def _act(a: ModelArgs, x: Tensor) -> Tensor:
    if a.act == "silu":
        return F.silu(x)
    if a.act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"activation {a.act!r}: must be silu or gelu_tanh")


# ---------------------------------------------------------------------------- the pieces the engine calls

def embed(model: Transformer, tokens: Tensor) -> Tensor:
    x = model.tok_embeddings(tokens)  # [R] -> [R, D]
    return x * model.embed_scale if model.args.embed_scale else x


def qkv(model: Transformer, layer: int, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values of rows x [R, D] at positions pos [R], rotary embedding applied."""
    a, b = model.args, model.blocks[layer]
    R, nq, hd = x.shape[0], a.n_head + a.n_kv_head, a.head_dim
    qkv_ = F.linear(rms_norm(x, b.attention_norm, a.norm_eps), b.wqkv, b.bqkv)  # [R, (H + 2 Hkv) * hd]
    cs = b.rope.index_select(0, pos)  # [R, 2, hd]: cos, sin
    qk = qkv_[:, : nq * hd].view(R, nq, hd)  # [R, H + Hkv, hd]
    if a.qk_norm:  # Gemma: each head normed over hd, queries and keys by their own weights
        qk = torch.cat([rms_norm(qk[:, : a.n_head], b.q_norm, a.norm_eps),
                        rms_norm(qk[:, a.n_head:], b.k_norm, a.norm_eps)], 1)
    qk = rotate(qk, cs, b.rope_half)  # [R, H + Hkv, hd]
    q, k = qk.split([a.n_head, a.n_kv_head], dim=1)  # [R, H, hd], [R, Hkv, hd]
    v = qkv_[:, nq * hd:].reshape(R, a.n_kv_head, hd)  # [R, Hkv, hd]
    return q, k, v


def finish(model: Transformer, layer: int, x: Tensor, att: Tensor) -> Tensor:
    """The rest of block `layer`: output projection, residual, gated MLP (SwiGLU or GeGLU), residual;
    with sandwich norms (Gemma) each branch's output is normed before its residual add. att [R, H*hd]."""
    a, b = model.args, model.blocks[layer]
    o = F.linear(att, b.wo)  # [R, D]
    x = x + (rms_norm(o, b.post_attention_norm, a.norm_eps) if a.sandwich_norm else o)
    gate, up = F.linear(rms_norm(x, b.ffn_norm, a.norm_eps), b.w13).chunk(2, dim=-1)  # [R, I] each
    m = F.linear(_act(a, gate) * up, b.w2)  # [R, D]
    return x + (rms_norm(m, b.post_ffn_norm, a.norm_eps) if a.sandwich_norm else m)


def head(model: Transformer, x: Tensor) -> Tensor:
    """The exit head: final norm + shared LM head. x [R, D] -> logits [R, V]. For a few rows the
    product is taken as W @ x^T: on this CPU's BLAS, x @ W^T with 2-8 rows costs 2-3x one row while
    W @ x^T costs about the same as one row (benchmarks/dexref_speed.py measures both)."""
    h = model.norm(x)  # [R, D]
    if 1 < h.shape[0] <= 16 and h.is_cpu:
        return (model.output.weight @ h.T).T  # [R, V]
    return model.output(h)


def _heads_first(q: Tensor, n_kv: int) -> Tensor:
    """q [R, H, hd] -> [Hkv, R*G, hd]: the G query heads of each KV head, for every row."""
    R, H, hd = q.shape
    return q.view(R, n_kv, H // n_kv, hd).transpose(0, 1).reshape(n_kv, R * (H // n_kv), hd)


def _rows_first(o: Tensor, R: int) -> Tensor:
    """[Hkv, R*G, hd] -> [R, H*hd]."""
    n_kv, _, hd = o.shape
    return o.view(n_kv, R, -1, hd).transpose(0, 1).reshape(R, -1)


def attend(q: Tensor, parts: list[tuple[Tensor, Tensor, Tensor | None]], scale: float | None = None) -> Tensor:
    """Softmax attention of rows q [R, H, hd] over the concatenation of context parts, each
    (K [Hkv, T_i, hd], V [Hkv, T_i, hd], visible [R, T_i] bool or None = all), without copying
    the parts together; scores times `scale` (default 1 / sqrt(hd)). Returns [R, H*hd]."""
    R, H, hd = q.shape
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    n_kv = parts[0][0].shape[0]
    G = H // n_kv
    qh = _heads_first(q, n_kv)  # [Hkv, R*G, hd]
    scores = []
    for K, _, vis in parts:
        s = torch.matmul(qh, K.transpose(1, 2)) * scale  # [Hkv, R*G, T_i]
        if vis is not None:
            s = s.masked_fill(~vis.repeat_interleave(G, 0)[None], float("-inf"))
        scores.append(s)
    p = softmax(torch.cat(scores, -1))  # [Hkv, R*G, sum T_i]
    out, t0 = None, 0
    for (K, V, _), s in zip(parts, scores):
        t1 = t0 + s.shape[-1]
        o = torch.matmul(p[..., t0:t1], V)  # [Hkv, R*G, hd]
        out = o if out is None else out + o
        t0 = t1
    return _rows_first(out, R)


def attend_one(q: Tensor, K: Tensor, V: Tensor, scale: float | None = None) -> Tensor:
    """One row over one contiguous context, no mask: the batch-invariant form, whose rounding depends
    only on the row and its context (which are AR's). q [1, H, hd]; K, V [Hkv, T, hd]. -> [1, H*hd]."""
    hd = q.shape[-1]
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    qh = _heads_first(q, K.shape[0])  # [Hkv, G, hd]
    s = torch.matmul(qh, K.transpose(1, 2)) * scale  # [Hkv, G, T]
    return _rows_first(torch.matmul(softmax(s), V), 1)


def prefill(model: Transformer, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Run tokens [T] through every block (causal); returns the cache K, V [L, Hkv, T, hd]."""
    T, dev = tokens.shape[0], tokens.device
    pos = torch.arange(T, device=dev)
    a = model.args
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()  # [T, T]
    x = embed(model, tokens)  # [T, D]
    ks, vs = [], []
    for layer in range(a.n_layer):
        q, k, v = qkv(model, layer, x, pos)
        K, V = k.transpose(0, 1), v.transpose(0, 1)  # [Hkv, T, hd]
        w = window(a, layer)
        mask = causal if not w else causal & ~torch.ones(T, T, dtype=torch.bool, device=dev).tril(-w)  # key > query - w
        x = finish(model, layer, x, attend(q, [(K, V, mask)], attn_scale(a)))
        ks.append(K)
        vs.append(V)
    return torch.stack(ks), torch.stack(vs)


# ---------------------------------------------------------------------------- weights

def fuse_state(state: dict, a: ModelArgs) -> dict:
    """Separate q/k/v (weights and biases) and gate/up weights (the cache's and Hugging Face's layout)
    -> fused ones."""
    out = {}
    for key, w in state.items():
        if key.endswith(("attention.wk.weight", "attention.wv.weight", "feed_forward.w3.weight",
                         "attention.wk.bias", "attention.wv.bias")):
            continue
        if key.endswith(("attention.wq.weight", "attention.wq.bias")):
            p, _, kind = key.rpartition(".wq.")
            out[f"{p}.wqkv.{kind}"] = torch.cat([w, state[f"{p}.wk.{kind}"], state[f"{p}.wv.{kind}"]])
        elif key.endswith("feed_forward.w1.weight"):
            p = key[: -len("w1.weight")]
            out[p + "w13.weight"] = torch.cat([w, state[p + "w3.weight"]])
        else:
            out[key] = w
    if a.tied:
        out.pop("output.weight", None)
    return out


def from_state(a: ModelArgs, state: dict, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Transformer:
    """A model from an unfused state dict (names as in the cache), cast to dtype on device."""
    with torch.device("meta"):
        model = Transformer(a)
    model.load_state_dict(fuse_state(state, a), strict=False, assign=True)
    if a.tied:
        model.output.weight = model.tok_embeddings.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"weights missing from the state dict: {missing[:3]}")
    return model.to_dtype(dtype, device).eval().requires_grad_(False)


def load_cached(folder: str | Path, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> tuple[Transformer, dict]:
    """(model, config) from a cache folder written by `dexref fetch`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    a = ModelArgs.from_dict(cfg["args"])
    return from_state(a, load_file(str(folder / "model.safetensors")), dtype, device), cfg


def random_state(a: ModelArgs, seed: int = 0, scale: float = 1.0) -> dict:
    """Random weights (unfused names), for tests on tiny models."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std * scale

    one = 1 - a.norm_offset  # norms start near a scale of 1 (Gemma stores w of (1 + w))
    s = {"tok_embeddings.weight": w(a.vocab, a.dim, std=1.0), "norm.weight": one + w(a.dim, std=0.1)}
    if not a.tied:
        s["output.weight"] = w(a.vocab, a.dim, std=a.dim ** -0.5)
    for i in range(a.n_layer):
        p = f"layers.{i}."
        s[p + "attention_norm.weight"] = one + w(a.dim, std=0.1)
        s[p + "ffn_norm.weight"] = one + w(a.dim, std=0.1)
        s[p + "attention.wq.weight"] = w(a.n_head * a.head_dim, a.dim, std=a.dim ** -0.5)
        s[p + "attention.wk.weight"] = w(a.n_kv_head * a.head_dim, a.dim, std=a.dim ** -0.5)
        s[p + "attention.wv.weight"] = w(a.n_kv_head * a.head_dim, a.dim, std=a.dim ** -0.5)
        s[p + "attention.wo.weight"] = w(a.dim, a.n_head * a.head_dim, std=(a.n_head * a.head_dim) ** -0.5)
        s[p + "feed_forward.w1.weight"] = w(a.intermediate, a.dim, std=a.dim ** -0.5)
        s[p + "feed_forward.w3.weight"] = w(a.intermediate, a.dim, std=a.dim ** -0.5)
        s[p + "feed_forward.w2.weight"] = w(a.dim, a.intermediate, std=a.intermediate ** -0.5)
        if a.qkv_bias:
            s[p + "attention.wq.bias"] = w(a.n_head * a.head_dim, std=1.0)
            s[p + "attention.wk.bias"] = w(a.n_kv_head * a.head_dim, std=1.0)
            s[p + "attention.wv.bias"] = w(a.n_kv_head * a.head_dim, std=1.0)
        if a.qk_norm:
            s[p + "attention.q_norm.weight"] = one + w(a.head_dim, std=0.1)
            s[p + "attention.k_norm.weight"] = one + w(a.head_dim, std=0.1)
        if a.sandwich_norm:
            s[p + "post_attention_norm.weight"] = one + w(a.dim, std=0.1)
            s[p + "post_ffn_norm.weight"] = one + w(a.dim, std=0.1)
    return s
