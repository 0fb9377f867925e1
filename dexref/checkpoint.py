"""Models from outside the cache: a local Hugging Face checkpoint folder (`--model PATH`) and random
weights of a dexsim catalog shape (`--model random:NAME`).

A checkpoint folder holds `config.json`, one `model.safetensors` or several shards named by
`model.safetensors.index.json`, and `tokenizer.json` (its chat template in `tokenizer_config.json` or
`chat_template.jinja`). Its architecture maps onto `ModelArgs` (Llama, Qwen2, Qwen3, Mistral, Gemma 3).
Weights are read tensor by tensor from the memory-mapped files (`safe_open`) and copied once into
tensors allocated on the device in the run's dtype: host memory holds one checkpoint tensor at a time,
never the whole model. Nothing is fetched from a hub.

Every problem (unknown architecture, a setting the model cannot honour, a missing tensor, a shape
that does not fit) is a UserError naming the file and the field or tensor.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dexsim.errors import UserError

from .model import ROPE_SCALINGS, TABLES, ModelArgs, Transformer

RANDOM = "random:"

# Our unfused names (model.py's `random_state`, the GGUF cache) -> Hugging Face's, per layer.
HF_NAMES = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
            "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
            "attention.q_norm": "self_attn.q_norm", "attention.k_norm": "self_attn.k_norm",
            "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj"}
GEMMA3_NAMES = {**HF_NAMES, "ffn_norm": "pre_feedforward_layernorm",
                "post_attention_norm": "post_attention_layernorm", "post_ffn_norm": "post_feedforward_layernorm"}
TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
FUSED = {"attention.wqkv": ("attention.wq", "attention.wk", "attention.wv"),
         "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3")}

ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM")
ACTS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def is_checkpoint(spec: str) -> bool:
    """`--model` names a folder (a path) rather than a cached model."""
    return "/" in spec or spec.startswith(".") or Path(spec).is_dir()


def hf_name(key: str, gemma: bool) -> str:
    """Our unfused parameter name -> Hugging Face's."""
    stem, _, kind = key.rpartition(".")
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{kind}"
    _, i, rest = stem.split(".", 2)
    return f"model.layers.{i}.{(GEMMA3_NAMES if gemma else HF_NAMES)[rest]}.{kind}"


def sources(param: str, gemma: bool) -> list[str]:
    """The Hugging Face tensors a parameter of our (fused) model is the concatenation of, in order."""
    stem, _, kind = param.rpartition(".")
    for fused, parts in FUSED.items():
        if stem.endswith(fused):
            layer = stem[: -len(fused)]
            return [hf_name(f"{layer}{p}.{kind}", gemma) for p in parts]
    return [hf_name(param, gemma)]


# ---------------------------------------------------------------------------- config.json -> ModelArgs

def read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a JSON object")
    return d


def _rope(cfg: dict, kind: str | None = None) -> tuple[float, dict | None]:
    """(rope base, scaling or None) from either config layout: transformers 5's `rope_parameters`
    (per layer type for Gemma 3) or the older `rope_theta` + `rope_scaling`."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and kind is not None and kind in rp:
        rp = rp[kind]
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"]), (rp if rp.get("rope_type", "default") != "default" else None)
    sc = cfg.get("rope_scaling")
    return float(cfg.get("rope_theta", 10000.0)), sc


def _ids(v) -> list[int]:
    """Token ids from config: one id, a list of them, or none."""
    return [int(x) for x in (v if isinstance(v, list) else [v]) if x is not None]


def _int_id(v):
    """A token id from config (a list of ids: the first)."""
    if isinstance(v, list):
        v = v[0] if v else None
    return -1 if v is None else int(v)


def model_args(cfg: dict, path: Path) -> tuple[ModelArgs, str]:
    """(ModelArgs, architecture) of a Hugging Face config; one line naming the field for anything the
    model cannot run."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in ARCHS:
        raise UserError(f"{path}: architectures: {arch!r} is not supported (supported: {', '.join(ARCHS)})")
    gemma = arch == "Gemma3ForCausalLM"

    def need(key, default=None):
        v = cfg.get(key, default)
        if v is None:
            raise UserError(f"{path}: {key}: missing")
        return v

    try:
        dim, n_head = int(need("hidden_size")), int(need("num_attention_heads"))
        n_kv = int(cfg.get("num_key_value_heads") or n_head)
        head_dim = int(cfg.get("head_dim") or dim // n_head)
        act = cfg.get("hidden_activation" if gemma else "hidden_act", "gelu_pytorch_tanh" if gemma else "silu")
        if act not in ACTS:
            raise UserError(f"{path}: hidden_act: {act!r} is not supported (supported: {', '.join(ACTS)})")
        for key in ("mlp_bias", "final_logit_softcapping", "attn_logit_softcapping"):
            if cfg.get(key):
                raise UserError(f"{path}: {key}: {cfg[key]!r} is not supported")
        bias = bool(cfg.get("attention_bias", False))
        if bias and arch != "Qwen2ForCausalLM":  # Llama's attention_bias also biases o_proj
            raise UserError(f"{path}: attention_bias: true is not supported for {arch}")
        base, scaling = _rope(cfg, "full_attention" if gemma else None)
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind not in ROPE_SCALINGS:
                raise UserError(f"{path}: rope_scaling: type {kind!r} is not supported "
                                f"(supported: {', '.join(ROPE_SCALINGS)})")
        a = ModelArgs(
            n_layer=int(need("num_hidden_layers")), dim=dim, n_head=n_head, n_kv_head=n_kv, head_dim=head_dim,
            intermediate=int(need("intermediate_size")), vocab=int(need("vocab_size")), rope_base=base,
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), max_len=int(cfg.get("max_position_embeddings", 4096)),
            tied=bool(cfg.get("tie_word_embeddings", gemma)),
            bos=_int_id(cfg.get("bos_token_id")), eos=_int_id(cfg.get("eos_token_id")),
            act=ACTS[act], qkv_bias=arch == "Qwen2ForCausalLM" or bias, qk_norm=arch in ("Qwen3ForCausalLM",) or gemma,
            rope_scaling=scaling)
        if gemma:
            local_base, _ = _rope(cfg, "sliding_attention")
            a.norm_offset, a.sandwich_norm, a.embed_scale = 1.0, True, True
            a.attn_scalar = float(cfg.get("query_pre_attn_scalar") or head_dim)
            a.rope_local_base = float(cfg.get("rope_local_base_freq", local_base))
        _window(a, cfg, arch, path)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: unreadable model settings ({e})") from None
    if n_head % n_kv or a.n_layer < 1:
        raise UserError(f"{path}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}")
    return a, arch


def _window(a: ModelArgs, cfg: dict, arch: str, path: Path) -> None:
    """Sliding-window attention as ModelArgs knows it: every layer (Mistral), or every global_every-th
    layer global (Gemma 3); any other layer pattern is refused."""
    w = cfg.get("sliding_window")
    if arch.startswith("Qwen") and not cfg.get("use_sliding_window", False):
        w = None
    types = cfg.get("layer_types")
    if not w:
        if types and any(t != "full_attention" for t in types):
            raise UserError(f"{path}: layer_types: sliding layers without a sliding_window")
        return
    a.sliding_window = int(w)
    if types is None:
        every = int(cfg.get("sliding_window_pattern") or 0) if arch == "Gemma3ForCausalLM" else 0
        types = ["full_attention" if every and (i + 1) % every == 0 else "sliding_attention" for i in range(a.n_layer)]
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    every = full[0] + 1 if full else 0
    a.global_every = every
    want = ["full_attention" if every and (i + 1) % every == 0 else "sliding_attention" for i in range(a.n_layer)]
    if list(types) != want:
        raise UserError(f"{path}: layer_types: this pattern of sliding and full layers is not supported "
                        "(every layer sliding, or every k-th full)")


# ---------------------------------------------------------------------------- weights

def weight_files(folder: Path) -> tuple[dict[str, Path], Path]:
    """(Hugging Face tensor name -> the safetensors file holding it, the file that says so): the index,
    or every file's header."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        wm = read_json(index).get("weight_map")
        if not isinstance(wm, dict):
            raise UserError(f"{index}: weight_map: missing")
        out = {k: folder / v for k, v in wm.items()}
        for f in sorted(set(out.values())):
            if not f.is_file():
                raise UserError(f"{index}: shard {f.name} is missing")
        return out, index
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no *.safetensors weights")
    out = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as h:
                out.update((k, f) for k in h.keys())
        except Exception as e:  # safetensors raises its own error type for a bad header
            raise UserError(f"{f}: not a readable safetensors file ({e})") from None
    return out, files[0] if len(files) == 1 else folder


def _fill(model: Transformer, files: dict[str, Path], where: Path, gemma: bool, dtype: torch.dtype, device) -> None:
    """Every parameter of `model` (on the meta device) from the checkpoint: allocated on `device` in
    `dtype`, its source tensors copied in one at a time from the memory-mapped files."""
    from safetensors import safe_open

    handles: dict[Path, object] = {}

    def read(name: str):
        if name not in files:
            raise UserError(f"{where}: tensor {name}: missing")
        f = files[name]
        if f not in handles:
            try:
                handles[f] = safe_open(str(f), "pt")
            except Exception as e:
                raise UserError(f"{f}: not a readable safetensors file ({e})") from None
        return f, handles[f].get_slice(name)

    for pname, p in list(model.named_parameters()):
        if model.args.tied and pname == "output.weight":
            continue
        out = torch.empty(p.shape, dtype=dtype, device=device)
        at = 0
        for name, n in zip(sources(pname, gemma), _parts(pname, model.args, p.shape[0])):
            f, sl = read(name)
            want = (n, *p.shape[1:])
            if tuple(sl.get_shape()) != want:
                raise UserError(f"{f}: tensor {name}: shape {list(sl.get_shape())}, the config says {list(want)}")
            out[at: at + n].copy_(sl[:])  # an mmap'd read, then one cast/copy into the device tensor
            at += n
        _set(model, pname, out)
    if model.args.tied:
        model.output.weight = model.tok_embeddings.weight


def _parts(pname: str, a: ModelArgs, rows: int) -> list[int]:
    """Rows of each source tensor of a (fused) parameter."""
    if ".wqkv." in pname:
        return [a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim]
    if ".w13." in pname:
        return [a.intermediate, a.intermediate]
    return [rows]


def _set(model: Transformer, pname: str, t: torch.Tensor) -> None:
    mod, _, attr = pname.rpartition(".")
    setattr(model.get_submodule(mod), attr, torch.nn.Parameter(t, requires_grad=False))


def empty_model(a: ModelArgs, dtype: torch.dtype) -> Transformer:
    """A model on the meta device in dtype, without its tables (they are built on the real device)."""
    with torch.device("meta"):
        model = Transformer(a).to(dtype)
    for name in TABLES:
        model._buffers.pop(name, None)
    return model


def load_checkpoint(folder: str | Path, dtype: torch.dtype, device) -> tuple[Transformer, dict]:
    """(model, provenance) of a Hugging Face checkpoint folder, on `device` in `dtype`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--model {folder}: no such folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: missing (a Hugging Face checkpoint folder has config.json)")
    cfg = read_json(cfg_path)
    a, arch = model_args(cfg, cfg_path)
    gen = folder / "generation_config.json"
    eos_ids = _ids(cfg.get("eos_token_id"))
    if gen.is_file():  # the eos ids generate() stops at
        eos_ids = _ids(read_json(gen).get("eos_token_id")) or eos_ids
    a.eos = eos_ids[0] if eos_ids else -1  # the core stops at one id: `load_model` may pick another of them
    files, where = weight_files(folder)
    model = empty_model(a, dtype)
    _fill(model, files, where, arch == "Gemma3ForCausalLM", dtype, device)
    model.set_tables(dtype)
    model.eval().requires_grad_(False)
    meta = {"name": folder.name, "source": str(folder.resolve()), "architecture": arch, "eos_ids": eos_ids,
            "config_sha256": hashlib.sha256(cfg_path.read_bytes()).hexdigest(), "args": a.to_dict()}
    return model, meta


# ---------------------------------------------------------------------------- random weights

def random_args(name: str) -> ModelArgs:
    """The shape of a dexsim catalog model as ModelArgs (Llama defaults for what the catalog leaves out)."""
    from dexsim.specs.catalog import get_model

    try:
        m = get_model(name)
    except UserError as e:
        raise UserError(f"--model {RANDOM}{name}: {e}") from None
    return ModelArgs(n_layer=m.layers, dim=m.hidden, n_head=m.heads, n_kv_head=m.kv_heads, head_dim=m.head_dim,
                     intermediate=m.intermediate, vocab=m.vocab, tied=m.tied_embeddings, rope_base=10000.0,
                     max_len=4096)


def random_model(a: ModelArgs, dtype: torch.dtype, device, seed: int = 0, std: float = 0.02) -> Transformer:
    """Random weights allocated directly on `device` in `dtype` (normal(0, std), norms 1): for speed
    work without a download."""
    model = empty_model(a, dtype)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.fill_(1.0 - a.norm_offset)
            else:
                p.normal_(0.0, std, generator=g)
    if a.tied:
        model.output.weight = model.tok_embeddings.weight
    model.set_tables(dtype)
    return model.eval().requires_grad_(False)
