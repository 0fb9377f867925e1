"""How often each policy's tokens leave the engine's own AR, per dtype and numeric mode, with the logit
margin at each divergence: the measured meaning of "lossless" outside float64 (DESIGN.md section 8).

In the fast mode a node's rows are batched with other nodes at its layer, so its states can round
differently from AR's one-row steps; a near-tie at an exit or at the final head may then flip. Each
prompt is decoded alone (batch 1, as served) by AR and by every policy; for each sequence that differs,
`margin` is AR's top-1 minus top-2 logit (float32 of the model's own logits) at the first differing
token: how close to a tie it had to be. The batch-invariant mode must show no divergence at all.
Against `transformers`' greedy `generate()` on the same weights, dtype and device too (`--hf`, models
from the cache only).

    python benchmarks/dexref_divergence.py [--model smollm2-135m] [--dtypes float32,bfloat16] \
        [--modes fast,bi] [--datasets humaneval,mtbench,sharegpt] [--prompts 2] [--new 32] [--device cpu] \
        [--hf] [--out results/dexref_divergence.json]

Prints one JSON line per (dtype, mode, policy), then a table. Prompt sets that are not in the cache
(and cannot be fetched here) are listed under `datasets_missing`, not silently dropped.
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

from dexref.engine import generate, reference_states  # noqa: E402
from dexref.model import head  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402
from dexsim.errors import UserError  # noqa: E402


def policies(L: int) -> dict:
    """Every policy of the core at settings that branch often (depths scale with L)."""
    every3 = np.r_[np.arange(3, L, 3), L]
    late = np.r_[np.unique(np.round(L * np.array([16, 20, 24, 27]) / 30).astype(int)), L]
    return {"ar": make_policy("ar", L),
            "layerskip e=L/2 g=4": make_policy("layerskip", L, exit=L // 2, draft=4),
            "adaptive tau=0.5 E=every3": make_policy("adaptive", L, exits=every3, threshold=0.5, buffer=4),
            "dex k=2 B=4 E=late align": make_policy("dex", L, exits=late, explorers=2, buffer=4, priority="align"),
            "dex k=4 B=8 E=every3": make_policy("dex", L, exits=every3, explorers=4, buffer=8)}


def first_diff(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def load_prompt_sets(tok, datasets: list[str], n: int, max_tokens: int) -> tuple[list[dict], list[str]]:
    """The first n prompts of each prompt set (raw template, cut to max_tokens tokens); the sets that
    could not be loaded are returned by name."""
    from dexref.assets.prompts import load_prompts

    out, missing = [], []
    for name in datasets:
        try:
            rows = load_prompts(name, n)
        except UserError as e:
            missing.append(f"{name}: {e}")
            continue
        out += [{"dataset": name, "id": r["id"], "ids": tok.apply(r["text"], "raw")[:max_tokens]} for r in rows]
    return out, missing


@torch.inference_mode()
def ar_margin(model, prompt: list[int], ar_out: list[int], i: int) -> float:
    """AR's top-1 minus top-2 logit for its token i: the states of AR's own steps from the prompt."""
    h = reference_states(model, prompt + ar_out[:i], len(prompt))[-1, -1]  # [D] at depth L
    top = torch.topk(head(model, h[None])[0].float(), 2).values
    return round(float(top[0] - top[1]), 5)


def divergence(model, prompts: list[list[int]], pols: dict, new: int, eos, batch_invariant: bool,
               hf_outs: list[list[int]] | None = None) -> list[dict]:
    """One row per policy: sequences whose tokens differ from AR's (each prompt decoded alone), the
    tokens compared, the margin at each divergence, wall time; and against transformers if given."""
    ar = [generate(model, [p], pols["ar"], new, eos=eos, batch_invariant=batch_invariant).outputs[0] for p in prompts]
    rows = []
    for name, policy in pols.items():
        t = time.perf_counter()
        outs = ar if name == "ar" else [generate(model, [p], policy, new, eos=eos, batch_invariant=batch_invariant)
                                        .outputs[0] for p in prompts]
        wall = time.perf_counter() - t
        flips, compared = [], 0
        for s, (p, o, r) in enumerate(zip(prompts, outs, ar)):
            i = first_diff(o, r)
            compared += len(r) if i is None else i + 1
            if i is not None:
                flips.append({"seq": s, "at": i, "margin": ar_margin(model, p, r, i)})
        row = {"policy": name, "sequences": len(prompts), "seqs_differ_from_ar": len(flips),
               "divergence_rate": round(len(flips) / len(prompts), 4), "tokens_compared": compared,
               "flips": flips, "wall_s": round(wall, 2)}
        if hf_outs is not None:
            row["seqs_differ_from_hf"] = sum(o != h for o, h in zip(outs, hf_outs))
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'dtype':<9} {'mode':<5} {'policy':<28} {'differ/seqs':>11} {'rate':>6} {'vs hf':>6}  margins at divergence"]
    for r in rows:
        hf = r.get("seqs_differ_from_hf")
        lines.append(f"{r['dtype']:<9} {r['mode']:<5} {r['policy']:<28} {r['seqs_differ_from_ar']:>5}/{r['sequences']:<5} "
                     f"{r['divergence_rate']:6.3f} {'-' if hf is None else hf:>6}  "
                     f"{[f['margin'] for f in r['flips']]}")
    return "\n".join(lines)


def main() -> int:
    from dexref.load import ModelConfig, load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--modes", default="fast,bi")
    ap.add_argument("--datasets", default="humaneval,mtbench,sharegpt")
    ap.add_argument("--prompts", type=int, default=2, help="per prompt set")
    ap.add_argument("--max-prompt-tokens", type=int, default=256)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hf", action="store_true", help="also against transformers' greedy generate (cached models)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, summary = [], None
    for dt in args.dtypes.split(","):
        model, tok, cfg = load_model(ModelConfig(model=args.model, dtype=dt, device=args.device))
        if summary is None:
            sets, missing = load_prompt_sets(tok, args.datasets.split(","), args.prompts, args.max_prompt_tokens)
            prompts = [s["ids"] for s in sets]
            summary = {"model": args.model, "device": str(model.device), "new": args.new,
                       "prompts": [f"{s['dataset']}:{s['id']}" for s in sets], "datasets_missing": missing,
                       "threads": torch.get_num_threads()}
        eos = model.args.eos if model.args.eos >= 0 else None
        hf_outs = None
        if args.hf:
            hf_outs = hf_outputs(args.model, model, prompts, args.new, eos)
        for mode in args.modes.split(","):
            for row in divergence(model, prompts, policies(model.args.n_layer), args.new, eos, mode == "bi", hf_outs):
                row = {"dtype": dt, "mode": mode, **row}
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
    print(table(rows))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    return 0


def hf_outputs(name: str, model, prompts, new: int, eos) -> list[list[int]]:
    """transformers' greedy tokens on the same weights, dtype and device (a cached model's file)."""
    from safetensors.torch import load_file

    from dexref.assets.fetch import require_model
    from dexref.hf import hf_greedy, hf_model

    state = load_file(str(require_model(name) / "model.safetensors"))
    hf = hf_model(model.args, state, model.dtype).to(model.device)
    return [hf_greedy(hf, p, new, eos) for p in prompts]


if __name__ == "__main__":
    sys.exit(main())
