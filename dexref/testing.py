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
