"""A layer-addressable Llama-family transformer: RMSNorm, rotary embeddings, grouped-query attention,
SwiGLU, tied embeddings. One file, in the spirit of nanoGPT's and gpt-fast's `model.py`.

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

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # x [..., D]
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.wqkv = nn.Linear(a.dim, (a.n_head + 2 * a.n_kv_head) * a.head_dim, bias=False)  # q, k, v fused
        self.wo = nn.Linear(a.n_head * a.head_dim, a.dim, bias=False)


class FeedForward(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.w13 = nn.Linear(a.dim, 2 * a.intermediate, bias=False)  # gate (w1) and up (w3) fused
        self.w2 = nn.Linear(a.intermediate, a.dim, bias=False)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(a.dim, a.norm_eps)
        self.attention = Attention(a)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)
        self.feed_forward = FeedForward(a)


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.args = a
        self.tok_embeddings = nn.Embedding(a.vocab, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layer))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.output = nn.Linear(a.dim, a.vocab, bias=False)
        if a.tied:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(a)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_len, head_dim]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_half", rotate_half_matrix(a.head_dim), persistent=False)  # [hd, hd]

    def to_dtype(self, dtype: torch.dtype) -> "Transformer":
        """Cast weights and the rotary tables (computed in float32, cast like Hugging Face does)."""
        self.to(dtype)
        cos, sin = rope_tables(self.args)
        self.rope_cos, self.rope_sin = cos.to(dtype), sin.to(dtype)
        self.rope_half = rotate_half_matrix(self.args.head_dim).to(dtype)
        return self


def rope_tables(a: ModelArgs) -> tuple[Tensor, Tensor]:
    """cos, sin [max_len, head_dim] of the rotary embedding, in float32 as Hugging Face computes them."""
    inv_freq = 1.0 / (a.rope_base ** (torch.arange(0, a.head_dim, 2, dtype=torch.int64).float() / a.head_dim))
    freqs = torch.arange(a.max_len, dtype=torch.int64).float()[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, hd]
    return emb.cos(), emb.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor, half: Tensor) -> Tensor:
    """Rotary embedding, rotate-half form: x * cos + rotate_half(x) * sin, where rotate_half(x1, x2) =
    (-x2, x1) is taken as x @ half, a signed permutation matrix (one product, exact: every output is
    one input times +-1 plus zeros). x [R, heads, hd]; cos, sin [R, hd]; half [hd, hd]."""
    return x * cos[:, None, :] + (x @ half) * sin[:, None, :]


def rotate_half_matrix(hd: int) -> Tensor:
    """[hd, hd] with x @ m = cat(-x[hd/2:], x[:hd/2])."""
    m = torch.zeros(hd, hd)
    i = torch.arange(hd // 2)
    m[i + hd // 2, i] = -1.0
    m[i, i + hd // 2] = 1.0
    return m


# ---------------------------------------------------------------------------- the pieces the engine calls

def embed(model: Transformer, tokens: Tensor) -> Tensor:
    return model.tok_embeddings(tokens)  # [R] -> [R, D]


def qkv(model: Transformer, layer: int, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values of rows x [R, D] at positions pos [R], rotary embedding applied."""
    a = model.args
    blk = model.layers[layer]
    R, nq = x.shape[0], a.n_head + a.n_kv_head
    qkv_ = F.linear(blk.attention_norm(x), blk.attention.wqkv.weight)  # [R, (H + 2 Hkv) * hd]
    cos, sin = model.rope_cos.index_select(0, pos), model.rope_sin.index_select(0, pos)  # [R, hd]
    qk = rotate(qkv_[:, : nq * a.head_dim].view(R, nq, a.head_dim), cos, sin, model.rope_half)  # [R, H + Hkv, hd]
    q, k = qk.split([a.n_head, a.n_kv_head], dim=1)  # [R, H, hd], [R, Hkv, hd]
    v = qkv_[:, nq * a.head_dim:].reshape(R, a.n_kv_head, a.head_dim)  # [R, Hkv, hd]
    return q, k, v


def finish(model: Transformer, layer: int, x: Tensor, att: Tensor) -> Tensor:
    """The rest of block `layer`: output projection, residual, SwiGLU MLP, residual. att [R, H*hd]."""
    blk = model.layers[layer]
    x = x + F.linear(att, blk.attention.wo.weight)  # [R, D]
    gate, up = F.linear(blk.ffn_norm(x), blk.feed_forward.w13.weight).chunk(2, dim=-1)  # [R, I] each
    return x + F.linear(F.silu(gate) * up, blk.feed_forward.w2.weight)  # [R, D]


def head(model: Transformer, x: Tensor) -> Tensor:
    """The exit head: final norm + shared LM head. x [R, D] -> logits [R, V]. For a few rows the
    product is taken as W @ x^T: on this CPU's BLAS, x @ W^T with 2-8 rows costs 2-3x one row while
    W @ x^T costs about the same as one row (benchmarks/dexref_speed.py measures both)."""
    h = model.norm(x)  # [R, D]
    if 1 < h.shape[0] <= 16:
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


def attend(q: Tensor, parts: list[tuple[Tensor, Tensor, Tensor | None]]) -> Tensor:
    """Softmax attention of rows q [R, H, hd] over the concatenation of context parts, each
    (K [Hkv, T_i, hd], V [Hkv, T_i, hd], visible [R, T_i] bool or None = all), without copying
    the parts together. Returns [R, H*hd]."""
    R, H, hd = q.shape
    n_kv = parts[0][0].shape[0]
    G = H // n_kv
    qh = _heads_first(q, n_kv)  # [Hkv, R*G, hd]
    scores = []
    for K, _, vis in parts:
        s = torch.matmul(qh, K.transpose(1, 2)) * (1.0 / math.sqrt(hd))  # [Hkv, R*G, T_i]
        if vis is not None:
            s = s.masked_fill(~vis.repeat_interleave(G, 0)[None], float("-inf"))
        scores.append(s)
    p = torch.softmax(torch.cat(scores, -1), dim=-1)  # [Hkv, R*G, sum T_i]
    out, t0 = None, 0
    for (K, V, _), s in zip(parts, scores):
        t1 = t0 + s.shape[-1]
        o = torch.matmul(p[..., t0:t1], V)  # [Hkv, R*G, hd]
        out = o if out is None else out + o
        t0 = t1
    return _rows_first(out, R)


def attend_one(q: Tensor, K: Tensor, V: Tensor) -> Tensor:
    """One row over one contiguous context, no mask: the batch-invariant form, whose rounding depends
    only on the row and its context (which are AR's). q [1, H, hd]; K, V [Hkv, T, hd]. -> [1, H*hd]."""
    hd = q.shape[-1]
    qh = _heads_first(q, K.shape[0])  # [Hkv, G, hd]
    s = torch.matmul(qh, K.transpose(1, 2)) * (1.0 / math.sqrt(hd))  # [Hkv, G, T]
    return _rows_first(torch.matmul(torch.softmax(s, dim=-1), V), 1)


def prefill(model: Transformer, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Run tokens [T] through every block (causal); returns the cache K, V [L, Hkv, T, hd]."""
    T = tokens.shape[0]
    pos = torch.arange(T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # [T, T]
    x = embed(model, tokens)  # [T, D]
    ks, vs = [], []
    for layer in range(model.args.n_layer):
        q, k, v = qkv(model, layer, x, pos)
        K, V = k.transpose(0, 1), v.transpose(0, 1)  # [Hkv, T, hd]
        x = finish(model, layer, x, attend(q, [(K, V, causal)]))
        ks.append(K)
        vs.append(V)
    return torch.stack(ks), torch.stack(vs)


# ---------------------------------------------------------------------------- weights

def fuse_state(state: dict, a: ModelArgs) -> dict:
    """Separate q/k/v and gate/up weights (the cache's and Hugging Face's layout) -> fused ones."""
    out = {}
    for key, w in state.items():
        if key.endswith(("attention.wk.weight", "attention.wv.weight", "feed_forward.w3.weight")):
            continue
        if key.endswith("attention.wq.weight"):
            p = key[: -len("wq.weight")]
            out[p + "wqkv.weight"] = torch.cat([w, state[p + "wk.weight"], state[p + "wv.weight"]])
        elif key.endswith("feed_forward.w1.weight"):
            p = key[: -len("w1.weight")]
            out[p + "w13.weight"] = torch.cat([w, state[p + "w3.weight"]])
        else:
            out[key] = w
    if a.tied:
        out.pop("output.weight", None)
    return out


def from_state(a: ModelArgs, state: dict, dtype: torch.dtype = torch.float32) -> Transformer:
    """A model from an unfused state dict (names as in the cache), cast to dtype."""
    with torch.device("meta"):
        model = Transformer(a)
    model.load_state_dict(fuse_state(state, a), strict=False, assign=True)
    if a.tied:
        model.output.weight = model.tok_embeddings.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"weights missing from the state dict: {missing[:3]}")
    model.rope_cos, model.rope_sin = rope_tables(a)
    model.rope_half = rotate_half_matrix(a.head_dim)
    return model.to_dtype(dtype).eval().requires_grad_(False)


def load_cached(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, dict]:
    """(model, config) from a cache folder written by `dexref fetch`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    a = ModelArgs.from_dict(cfg["args"])
    return from_state(a, load_file(str(folder / "model.safetensors")), dtype), cfg


def random_state(a: ModelArgs, seed: int = 0, scale: float = 1.0) -> dict:
    """Random weights (unfused names), for tests on tiny models."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std * scale

    s = {"tok_embeddings.weight": w(a.vocab, a.dim, std=1.0), "norm.weight": 1 + w(a.dim, std=0.1)}
    if not a.tied:
        s["output.weight"] = w(a.vocab, a.dim, std=a.dim ** -0.5)
    for i in range(a.n_layer):
        p = f"layers.{i}."
        s[p + "attention_norm.weight"] = 1 + w(a.dim, std=0.1)
        s[p + "ffn_norm.weight"] = 1 + w(a.dim, std=0.1)
        s[p + "attention.wq.weight"] = w(a.n_head * a.head_dim, a.dim, std=a.dim ** -0.5)
        s[p + "attention.wk.weight"] = w(a.n_kv_head * a.head_dim, a.dim, std=a.dim ** -0.5)
        s[p + "attention.wv.weight"] = w(a.n_kv_head * a.head_dim, a.dim, std=a.dim ** -0.5)
        s[p + "attention.wo.weight"] = w(a.dim, a.n_head * a.head_dim, std=(a.n_head * a.head_dim) ** -0.5)
        s[p + "feed_forward.w1.weight"] = w(a.intermediate, a.dim, std=a.dim ** -0.5)
        s[p + "feed_forward.w3.weight"] = w(a.intermediate, a.dim, std=a.dim ** -0.5)
        s[p + "feed_forward.w2.weight"] = w(a.dim, a.intermediate, std=a.intermediate ** -0.5)
    return s
