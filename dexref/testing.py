"""Helpers for the dexref tests and benchmarks: tiny random-weight Llama-style models, a tiny cache
folder (model + character tokenizer) for CLI tests, and the on-path projection of an event log."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dexsim.core import lattice as core

from .model import ModelArgs, from_state, random_state


def tiny_args(seed: int, **overrides) -> ModelArgs:
    """A random small Llama-style configuration: depth 1-7, GQA groups 1-3, vocab 5-50."""
    rng = np.random.default_rng(seed)
    n_kv = int(rng.integers(1, 3))
    n_head = n_kv * int(rng.integers(1, 4))
    head_dim = int(rng.choice([4, 8]))
    dim = n_head * int(rng.choice([3, 4, 8]))  # transformers wants hidden % heads == 0
    a = ModelArgs(n_layer=int(rng.integers(1, 8)), dim=dim, n_head=n_head,
                  n_kv_head=n_kv, head_dim=head_dim, intermediate=int(rng.choice([16, 32, 40])),
                  vocab=int(rng.integers(5, 51)), rope_base=float(rng.choice([100.0, 10000.0])),
                  norm_eps=1e-5, max_len=512, tied=bool(rng.integers(0, 2)))
    for k, v in overrides.items():
        setattr(a, k, v)
    return a


def tiny_model(seed: int, dtype=torch.float64, scale: float = 2.0, **overrides):
    """(model, unfused state dict, args) with random weights. `scale` > 1 spreads the logits, so
    greedy paths are varied rather than stuck on one token."""
    a = tiny_args(seed, **overrides)
    state = random_state(a, seed=seed, scale=scale)
    return from_state(a, state, dtype), state, a


def random_prompts(seed: int, vocab: int, lengths) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


CHARS = "abcdefghijklmnopqrstuvwxyz .,:\n()=+-*"


def write_tiny_cache(folder: str | Path, seed: int = 0, n_layer: int = 3) -> Path:
    """A cache folder like `dexref fetch` writes, for a tiny model over a character vocabulary."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<eos>"] + list(CHARS)
    a = tiny_args(seed, vocab=len(vocab), n_layer=n_layer, eos=0, max_len=2048)
    state = {k: v.float().contiguous() for k, v in random_state(a, seed=seed, scale=2.0).items()}
    save_file(state, str(folder / "model.safetensors"))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<eos>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"name": folder.name, "args": a.to_dict(), "source": "test"}))
    return folder


# ---------------------------------------------------------------------------- event logs

def on_path_events(lat: core.Lattice, prompt_lens, outputs) -> list[tuple]:
    """The events of nodes on the true path (the committed tokens), as comparable tuples
    (kind, seq, round, pos, depth, token or -1, conf): advances expanded to one per round
    (a replay jumps, the engine does not), the root's token left out (a replay does not know it).
    A node is on the path if its parent is and its token is the committed one at its position; nodes
    whose exits predict past the last committed token are left out."""
    ev = lat.events()
    on: dict[tuple[int, int], bool] = {}
    out = []
    for e in ev:
        s, node, kind = int(e["seq"]), int(e["node"]), int(e["kind"])
        P, outs = int(prompt_lens[s]), outputs[s]
        pos = int(e["pos"])
        if kind == core.SPAWN:
            parent = int(e["parent"])
            if parent < 0:
                on[s, node] = True  # the first anchor: the last prompt token
            elif not on.get((s, parent), False):
                on[s, node] = False
            else:
                i = pos - P
                on[s, node] = 0 <= i < len(outs) and int(e["token"]) == outs[i]
        if not on.get((s, node), False) or kind in (core.COLLAPSE, core.DISCARD):
            continue
        if pos - P + 1 >= len(outs):  # it predicts past the last committed token: a trace cannot know
            continue
        root = pos == P - 1
        tok = -1 if (root and kind != core.EXIT and kind != core.COMMIT) else int(e["token"])
        if kind == core.ADVANCE:
            for r in range(int(e["n"])):
                out.append((kind, s, int(e["round"]) + r, pos, int(e["depth"]) + r, -1, 0.0))
        else:
            out.append((kind, s, int(e["round"]), pos, int(e["depth"]), tok, float(e["conf"])))
    return sorted(out)


def max_live(lat: core.Lattice) -> np.ndarray:
    """[S] the most live nodes each sequence ever held, from the event log."""
    ev = lat.events()
    live = np.zeros(lat.S, np.int64)
    best = np.zeros(lat.S, np.int64)
    for e in ev:
        s, kind = int(e["seq"]), int(e["kind"])
        if kind == core.SPAWN:
            live[s] += 1
            best[s] = max(best[s], live[s])
        elif kind in (core.DISCARD, core.COMMIT):
            live[s] -= 1
    return best


def node_path(lat: core.Lattice, si: int, ji: int, prompt) -> tuple:
    """The tokens node (si, ji) stands at the end of: the prompt, what is committed, then the node's
    branch tokens from below the anchor down to itself."""
    below = []
    while lat.parent[si, ji] >= 0:
        below.append(int(lat.token[si, ji]))
        ji = int(lat.parent[si, ji])
    return tuple(prompt) + tuple(lat.output[si, : lat.counters.tokens[si]].tolist()) + tuple(below[::-1])


# ---------------------------------------------------------------------------- Hugging Face checkpoints

HF_ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma3")


def hf_tiny_config(arch: str, vocab: int, seed: int = 0, **overrides):
    """A tiny `transformers` config of each architecture dexref loads (2-3 layers, hidden 32-64), with
    the features that matter switched on: GQA, Qwen2's qkv bias, Qwen3's q/k norms, Mistral's sliding
    window (shorter than the test prompts), Gemma 3's local/global layers."""
    import transformers as tf

    rng = np.random.default_rng(seed)
    n_kv = int(rng.integers(1, 3))
    heads = n_kv * int(rng.integers(1, 3))
    hd = int(rng.choice([8, 16]))
    common = dict(vocab_size=vocab, hidden_size=int(rng.choice([32, 48, 64])), intermediate_size=int(rng.choice([48, 96])),
                  num_hidden_layers=int(rng.integers(2, 4)), num_attention_heads=heads, num_key_value_heads=n_kv,
                  head_dim=hd, max_position_embeddings=1024, rms_norm_eps=1e-6, initializer_range=0.5,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=bool(rng.integers(0, 2)))
    if arch == "llama":
        cfg = tf.LlamaConfig(**common, rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 16})
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    elif arch == "mistral":
        cfg = tf.MistralConfig(**common, sliding_window=5, rope_parameters={"rope_type": "default", "rope_theta": 100.0})
    elif arch == "gemma3":
        n = common["num_hidden_layers"]
        cfg = tf.Gemma3TextConfig(**common, sliding_window=4, query_pre_attn_scalar=24,
                                  layer_types=["full_attention" if (i + 1) % 2 == 0 else "sliding_attention"
                                               for i in range(n)],
                                  rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                                                   "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
                                  final_logit_softcapping=None, attn_logit_softcapping=None)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def hf_tiny_model(arch: str, vocab: int, seed: int = 0, **overrides):
    """A random tiny `transformers` model (float64) of `arch`; norms and biases randomised too, so every
    weight matters to the tokens."""
    import transformers as tf

    cfg = hf_tiny_config(arch, vocab, seed, **overrides)
    cls = {"llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM, "qwen3": tf.Qwen3ForCausalLM,
           "mistral": tf.MistralForCausalLM, "gemma3": tf.Gemma3ForCausalLM}[arch]
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float64).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", ".bias")):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3 + (1.0 if arch != "gemma3" and
                                                                                  not name.endswith(".bias") else 0.0))
        if arch == "gemma3":  # embeddings times sqrt(hidden) would drown every layer's contribution
            model.model.embed_tokens.weight.mul_(cfg.hidden_size ** -0.5)
    model.config._attn_implementation = "eager"
    return model


def write_tiny_tokenizer(folder: Path, vocab: int) -> None:
    """tokenizer.json (a word-level vocabulary of characters and filler tokens, BOS added to raw text)
    and tokenizer_config.json with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = ["<pad>", "<s>", "</s>"] + list(CHARS)
    words += [f"<t{i}>" for i in range(vocab - len(words))]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}"}))


def write_hf_checkpoint(folder: str | Path, model, shard: str | None = None) -> Path:
    """`save_pretrained` (safetensors; `shard`: max_shard_size, e.g. "20KB", for several files and an
    index) plus a tiny tokenizer."""
    folder = Path(folder)
    model.save_pretrained(folder, max_shard_size=shard or "10GB")
    write_tiny_tokenizer(folder, model.config.vocab_size)
    return folder
