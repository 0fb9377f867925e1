"""Wall-clock decode speed on this CPU: the engine's `ar`, the engine's `dex` (the best of a few
settings) and transformers' greedy `generate()`, on SmolLM2-135M (fp32), 64 new tokens over 10
HumanEval prompts, one prompt at a time (batch 1). Also the costs that decide whether dex can win
here: one block and the exit head at 1..8 rows (the batching gain per layer, the head's price).

    python benchmarks/dexref_speed.py [--prompts 10] [--new 64] [--threads N] [--repeats 2] [--out F.json]

Every run's tokens are checked against the engine's `ar`. The machine is shared: contenders are
interleaved prompt by prompt (so a change of load hits them alike), `vs_ar` is the wall-time ratio
to `ar` over the same windows, and the load average is printed with the figures.
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
from dexref.model import attend, finish, head, load_cached, qkv  # noqa: E402
from dexref.assets.tokenizer import Tok  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402


def dex_candidates(L: int) -> dict:
    """A few settings for one CPU: sparse, late exits (every exit read costs a full LM head), few
    explorers (a second row at a layer is not free here: see unit_costs). Depths scale with L; on
    SmolLM2 (L = 30) they are 27, 29, {24, 27} and {20, 24, 27}."""
    d = lambda f: round(L * f)  # noqa: E731
    settings = [(2, 1, [d(0.9)], "eager"), (2, 1, [L - 1], "eager"), (2, 2, [d(0.8), d(0.9)], "eager"),
                (3, 2, [d(2 / 3), d(0.8), d(0.9)], "deep")]
    out = {}
    for k, b, exits, priority in settings:
        name = f"dex k={k} B={b} E={{{','.join(map(str, exits))},L}}" + (" deep" if priority == "deep" else "")
        out[name] = make_policy("dex", L, exits=np.array([*exits, L]), explorers=k, buffer=b, priority=priority)
    return out


@torch.inference_mode()
def unit_costs(model, rows=(1, 2, 4, 8), n: int = 60) -> dict:
    """Milliseconds for one block (qkv + attention over 200 cached positions + MLP) and one exit head,
    at R rows sharing one weight load. Blocks cycle through all layers, as decoding does, so the
    weights come from memory, not from cache."""
    a = model.args
    out = {}
    for R in rows:
        x = torch.randn(R, a.dim, dtype=model.dtype)
        pos = torch.arange(200, 200 + R)
        K = torch.randn(a.n_kv_head, 200, a.head_dim, dtype=model.dtype)

        def block(layer):
            q, k, v = qkv(model, layer, x, pos)
            return finish(model, layer, x, attend(q, [(K, K, None)]))

        for layer in range(a.n_layer):
            block(layer)
        t = time.perf_counter()
        for i in range(n):
            block(i % a.n_layer)
        tb = (time.perf_counter() - t) / n
        nh = max(n // 10, 3)
        head(model, x)
        t = time.perf_counter()
        for _ in range(nh):
            head(model, x)
        th = (time.perf_counter() - t) / nh
        t = time.perf_counter()
        for _ in range(nh):
            model.output(model.norm(x))  # x @ W^T, what nn.Linear does
        tl = (time.perf_counter() - t) / nh
        out[R] = {"block_ms": round(tb * 1e3, 3), "head_ms": round(th * 1e3, 3), "head_as_linear_ms": round(tl * 1e3, 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 | ...")
    ap.add_argument("--bi", action="store_true", help="also the batch-invariant mode's cost: ar and two dex "
                                                      "settings in both modes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = require_model(args.model)
    tok = Tok(folder)
    model, _ = load_cached(folder, getattr(torch, args.dtype))
    a = model.args
    L, eos = a.n_layer, a.eos
    prompts = [tok.encode(r["text"]) for r in load_prompts("humaneval", args.prompts)]
    res = {"model": args.model, "dtype": args.dtype, "prompts": len(prompts), "new": args.new, "threads": torch.get_num_threads(),
           "repeats": args.repeats, "load_before": os.getloadavg()}
    # Every contender runs on prompt i before any runs on prompt i+1 (and the order rotates), so a
    # change in the machine's load hits all of them alike: the machine is shared.
    runs = {"ar": (make_policy("ar", L), False, False), "ar (jump)": (make_policy("ar", L), True, False)}
    runs.update({name: (policy, True, False) for name, policy in dex_candidates(L).items()})
    if args.bi:  # the batch-invariant mode's price: every node alone, one row per call
        every3 = np.r_[np.arange(3, L, 3), L]
        wide = make_policy("dex", L, exits=every3, explorers=4, buffer=8)
        first = next(iter(dex_candidates(L)))
        runs.update({"ar (bi)": (make_policy("ar", L), False, True), f"{first} (bi)": (runs[first][0], True, True),
                     "dex k=4 B=8 E=every3": (wide, True, False), "dex k=4 B=8 E=every3 (bi)": (wide, True, True)})
    hf = None
    if not args.no_hf:
        from safetensors.torch import load_file

        from dexref.hf import hf_greedy, hf_model

        hf = hf_model(a, load_file(str(folder / "model.safetensors")), getattr(torch, args.dtype))
        runs["transformers greedy"] = None
    for name, run in runs.items():  # warm-up, not timed: the lattice core's first calls compile (or load the cache)
        if run is not None:
            generate(model, [prompts[0][:8]], run[0], 2, eos=eos, jump=run[1], batch_invariant=run[2])
    wall = {k: 0.0 for k in runs}
    outs = {k: [None] * len(prompts) for k in runs}
    counters = {k: {} for k in runs}
    order = list(runs)
    for rep in range(args.repeats):
        for i, p in enumerate(prompts):
            k0 = (i + rep) % len(order)
            for name in order[k0:] + order[:k0]:
                t = time.perf_counter()
                if runs[name] is None:
                    o = hf_greedy(hf, p, args.new, eos)
                else:
                    policy, jump, bi = runs[name]
                    run = generate(model, [p], policy, args.new, eos=eos, jump=jump, batch_invariant=bi)
                    o = run.outputs[0]
                    if rep == 0:
                        for c, v in run.counters().items():
                            counters[name][c] = counters[name].get(c, 0) + v
                wall[name] += time.perf_counter() - t
                outs[name][i] = o
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    n_tok = sum(map(len, outs["ar"]))
    res["runs"] = {}
    for name in runs:
        res["runs"][name] = {"tok_s": round(args.repeats * n_tok / wall[name], 2), "wall_s": round(wall[name], 2),
                             "vs_ar": round(wall["ar"] / wall[name], 3), "equals_ar": outs[name] == outs["ar"],
                             **counters[name]}
        print(json.dumps({name: res["runs"][name]}), flush=True)
    res["tokens"] = n_tok
    best = max(dex_candidates(L), key=lambda k: res["runs"][k]["tok_s"])
    res["dex_best"] = best
    res["unit_costs"] = unit_costs(model)
    res["load_after"] = os.getloadavg()
    print(json.dumps({"unit_costs": res["unit_costs"]}))
    r = res["runs"]
    line = (f"ar {r['ar']['tok_s']} tok/s (jump {r['ar (jump)']['tok_s']}) | best dex ({best}, jump) "
            f"{r[best]['tok_s']} tok/s ({r[best]['vs_ar']}x ar)")
    if "transformers greedy" in r:
        line += f" | transformers greedy {r['transformers greedy']['tok_s']} tok/s"
    print(line + f" | threads {res['threads']}, load {res['load_before'][0]:.1f} -> {res['load_after'][0]:.1f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
