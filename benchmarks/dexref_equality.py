"""Token equality of every policy on the real model (SmolLM2-135M, fp32 weights dequantized from the
GGUF): against this engine's `ar` and against transformers' `generate(do_sample=False)`, in float64,
float32 fast mode and float32 batch-invariant mode. Not a test (it takes minutes); the tests run a
small part of it. Prints one JSON line per (dtype, mode, policy) and a summary.

    python benchmarks/dexref_equality.py [--prompts 4] [--new 32] [--out results/dexref_equality.json]

For a mismatch, the margin is the gap between the top two logits of the float64 model at the first
position where the sequences differ: how close to a tie the float32 rounding had to be to flip it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dexref.engine import generate  # noqa: E402
from dexref.assets.prompts import load_prompts  # noqa: E402
from dexref.assets.fetch import require_model  # noqa: E402
from dexref.hf import hf_greedy, hf_model  # noqa: E402
from dexref.model import load_cached  # noqa: E402
from dexref.assets.tokenizer import Tok  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402


def policies(L: int):
    """The same settings for any depth: on SmolLM2 (L = 30) late exits are {16, 20, 24, 27, 30} and
    LayerSkip exits at 15 and 24."""
    every3 = np.r_[np.arange(3, L, 3), L]
    late = np.r_[np.unique(np.round(L * np.array([16, 20, 24, 27]) / 30).astype(int)), L]
    mid, deep = L // 2, round(L * 0.8)
    return [
        ("ar", make_policy("ar", L)),
        ("layerskip e=L/2 g=4", make_policy("layerskip", L, exit=mid, draft=4)),
        ("layerskip e=0.8L g=2", make_policy("layerskip", L, exit=deep, draft=2)),
        ("adaptive tau=0.5 E=every3", make_policy("adaptive", L, exits=every3, threshold=0.5, buffer=4)),
        ("dex k=1 B=2 E=late", make_policy("dex", L, exits=late, explorers=1, buffer=2)),
        ("dex k=2 B=4 E=late align", make_policy("dex", L, exits=late, explorers=2, buffer=4, priority="align")),
        ("dex k=4 B=8 E=every3", make_policy("dex", L, exits=every3, explorers=4, buffer=8)),
        ("dex k=8 B=8 E=late deep", make_policy("dex", L, exits=late, explorers=8, buffer=8, priority="deep")),
    ]


def long_prompts(tok: Tok, n_tokens: int, count: int) -> list[list[int]]:
    """`count` prompts of exactly n_tokens tokens: HumanEval prompts i, i+1, ... joined, cut at n_tokens
    (longer than a sliding window, to test it on a real model)."""
    texts = [r["text"] for r in load_prompts("humaneval")]
    out = []
    for i in range(count):
        ids, k = [], i
        while len(ids) < n_tokens:
            ids += tok.encode(texts[k % len(texts)])
            k += 1
        out.append(ids[:n_tokens])
    return out


def first_diff(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def margin(hf64, prompt: list[int], out: list[int], i: int) -> float:
    """Top-1 minus top-2 logit of the float64 model for generated token i of `out`."""
    logits = hf64(torch.tensor([prompt + out[:i]])).logits[0, -1]
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


@torch.inference_mode()
def versus_trace(path: str, names: list[str], threads: int | None) -> int:
    """float32 fast mode, one prompt at a time (batch 1, as served), against a batch-invariant trace
    (AR's own float32 states): sequences and tokens that differ, with the float32 top-2 logit gap of
    AR at the first difference."""
    from dexsim.traces.format import load_trace

    trace = load_trace(path)
    meta, params = trace.meta, trace.meta["recorder"]["params"]
    folder = require_model(meta["model"])
    tok = Tok(folder)
    model, _ = load_cached(folder, torch.float32)
    by_id = {r["id"]: r for r in load_prompts(params["dataset"])}
    prompts = [tok.apply(by_id[i]["text"], meta["template"]) for i in params["prompt_ids"]]
    pols = dict(policies(model.args.n_layer))
    for name in names:
        differ, compared, flips = 0, 0, []
        for s, p in enumerate(prompts):
            ref = trace.final[trace.seq_slice(s)].tolist()
            out = generate(model, [p], pols[name], params["max_new_tokens"], eos=params["eos"]).outputs[0]
            i = first_diff(out, ref)
            compared += len(ref) if i is None else i + 1
            if i is not None:
                differ += 1
                logits = _last_logits(model, p + ref[:i])
                top = torch.topk(logits, 2).values
                flips.append({"seq": s, "at": i, "margin_fp32": float(top[0] - top[1])})
        print(json.dumps({"versus_trace": path, "policy": name, "sequences": len(prompts), "seqs_differ": differ,
                          "tokens_compared": compared, "flips": flips}), flush=True)
    return 0


def _last_logits(model, tokens: list[int]):
    """AR's float32 logits for the token after `tokens` (prefill all but the last, then one row)."""
    from dexref.engine import reference_states
    from dexref.model import head

    h = reference_states(model, tokens, len(tokens))[-1, -1]
    return head(model, h[None])[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default="float64,float32,float32-bi")
    ap.add_argument("--long", type=int, default=0,
                    help="prompts of exactly this many tokens (HumanEval prompts joined) instead of HumanEval's own")
    ap.add_argument("--out", default=None)
    ap.add_argument("--versus-trace", default=None,
                    help="instead: float32 fast mode, batch 1, against this batch-invariant trace's tokens")
    ap.add_argument("--policies", default="ar,dex k=4 B=8 E=every3,dex k=8 B=8 E=late deep,layerskip e=L/2 g=4",
                    help="with --versus-trace: which policies")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.versus_trace:
        return versus_trace(args.versus_trace, args.policies.split(","), args.threads)
    folder = require_model(args.model)
    tok = Tok(folder)
    if args.long:
        prompts = long_prompts(tok, args.long, args.prompts)
    else:
        prompts = [tok.encode(r["text"]) for r in load_prompts("humaneval", args.prompts)]
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    m32, cfg = load_cached(folder, torch.float32)
    a = m32.args
    hf64 = hf_model(a, state, torch.float64)
    eos = a.eos
    ref = {"hf64": [hf_greedy(hf64, p, args.new, eos) for p in prompts]}
    hf32 = hf_model(a, state, torch.float32)
    ref["hf32"] = [hf_greedy(hf32, p, args.new, eos) for p in prompts]
    del hf32
    # the float64 model's smallest top-2 logit gap along its own greedy outputs: how near a tie it gets
    gaps = [margin(hf64, p, o, i) for p, o in zip(prompts, ref["hf64"]) for i in range(len(o))]
    rows = []
    for mode in args.modes.split(","):
        dtype = torch.float64 if mode == "float64" else torch.float32
        bi = mode.endswith("-bi")
        model = m32 if dtype == torch.float32 else load_cached(folder, dtype)[0]
        ar = None
        for name, policy in policies(a.n_layer):
            t = time.perf_counter()
            run = generate(model, prompts, policy, args.new, eos=eos, batch_invariant=bi)
            wall = time.perf_counter() - t
            outs = run.outputs
            if ar is None:
                ar = outs
            hf = ref["hf64"] if dtype == torch.float64 else ref["hf32"]
            row = {"mode": mode, "policy": name, "sequences": len(prompts), "tokens": sum(map(len, outs)),
                   "seqs_differ_from_ar": sum(o != r for o, r in zip(outs, ar)),
                   "seqs_differ_from_hf": sum(o != r for o, r in zip(outs, hf)),
                   "seqs_differ_from_hf64": sum(o != r for o, r in zip(outs, ref["hf64"])),
                   "wall_s": round(wall, 1), **run.counters()}
            flips = []
            for p, o, r in zip(prompts, outs, ref["hf64"]):
                i = first_diff(o, r)
                if i is not None and i < min(len(o), len(r)):
                    flips.append({"at": i, "margin_fp64": margin(hf64, p, r, i)})
            row["flips_vs_hf64"] = flips
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"model": args.model, "prompts": len(prompts), "prompt_tokens": [len(p) for p in prompts],
               "new": args.new, "threads": torch.get_num_threads(),
               "hf32_differs_from_hf64": sum(x != y for x, y in zip(ref["hf32"], ref["hf64"])),
               "fp64_min_top2_gap": min(gaps), "fp64_gaps_below_1e-3": int(sum(g < 1e-3 for g in gaps)),
               "fp64_tokens": len(gaps)}
    print(json.dumps(summary))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
