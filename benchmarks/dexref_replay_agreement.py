"""Does the simulator agree with the engine? A trace recorded by `python -m dexref record` is replayed by
`dexsim.replay` under policy P, and P is run in the engine on the same prompts (batch-invariant mode,
as the trace was recorded, so the true path's exit tokens are the same bits). Prints, per policy,
every counter from both and whether the true-path events (spawn, advance, exit, commit of the nodes
on the committed path) agree one for one.

    python benchmarks/dexref_replay_agreement.py --trace traces/smollm2-135m-lens-humaneval-raw.npz [--limit 4]

What can agree exactly: a trace holds exit tokens on the true path only; a replay invents the
off-path ones. Policies whose off-path nodes never branch (ar, layerskip, adaptive with tau = 0: a
chain whatever the tokens) agree on every counter. For dex, off-path nodes expand with the tokens they
predict, so off-path work (node-layers, head evaluations, waste, weight loads) differs; when no
explorer or buffer limit binds, the true path is independent of off-path work and tokens, rounds,
fallbacks and every true-path event agree.
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
from dexref.model import load_cached  # noqa: E402
from dexref.testing import max_live, on_path_events  # noqa: E402
from dexref.assets.tokenizer import Tok  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402
from dexsim.replay.executor import replay  # noqa: E402
from dexsim.traces.format import Trace, load_trace  # noqa: E402

KEYS = ("tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks")


def head_of(trace: Trace, n: int) -> Trace:
    """The first n sequences of a trace."""
    end = int(trace.seq_offsets[n])
    return Trace(trace.depths, trace.final[:end], trace.exit_tokens[:end], trace.exit_conf[:end],
                 trace.seq_offsets[: n + 1], trace.prompt_len[:n], dict(trace.meta), trace.path)


def policies(L: int) -> dict:
    late = np.array([16, 20, 24, 27, L])
    return {
        "ar": make_policy("ar", L),
        "layerskip e=15 g=4": make_policy("layerskip", L, exit=15, draft=4),
        "layerskip e=24 g=2": make_policy("layerskip", L, exit=24, draft=2),
        "adaptive tau=0 E=late": make_policy("adaptive", L, exits=late, threshold=0.0, buffer=4),
        "adaptive tau=0.5 E=late": make_policy("adaptive", L, exits=late, threshold=0.5, buffer=4),
        "dex k=64 B=63 E=late eager": make_policy("dex", L, exits=late, explorers=64, buffer=63),
        "dex k=4 B=8 E=late eager": make_policy("dex", L, exits=late, explorers=4, buffer=8),
        "dex k=2 B=4 E=late align": make_policy("dex", L, exits=late, explorers=2, buffer=4, priority="align"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--limit", type=int, default=None, help="the first N sequences")
    ap.add_argument("--seeds", type=int, default=3, help="replay seeds (off-path modelling) per policy")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated policy names")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    trace = load_trace(args.trace)
    if args.limit:
        trace = head_of(trace, min(args.limit, trace.n_seqs))
    meta, params = trace.meta, trace.meta["recorder"]["params"]
    folder = require_model(meta["model"])
    tok = Tok(folder)
    model, _ = load_cached(folder, getattr(torch, params["dtype"]))
    rows = load_prompts(params["dataset"])
    by_id = {r["id"]: r for r in rows}
    prompts = [tok.apply(by_id[i]["text"], meta["template"]) for i in params["prompt_ids"][: trace.n_seqs]]
    assert [len(p) for p in prompts] == trace.prompt_len.tolist(), "prompts do not re-create the trace's"
    out = []
    for name, policy in policies(trace.L).items():
        if args.only and name not in args.only.split(","):
            continue
        t = time.perf_counter()
        run = generate(model, prompts, policy, int(params["max_new_tokens"]), eos=params["eos"],
                       batch_invariant=params["mode"] == "batch_invariant", record_events=True)
        wall = time.perf_counter() - t
        e = run.counters()
        lossless = all(run.outputs[s] == trace.final[trace.seq_slice(s)].tolist() for s in range(trace.n_seqs))
        ev_engine = on_path_events(run.lattice, trace.prompt_len, run.outputs)
        sims = []
        for seed in range(args.seeds):
            sim = replay(trace, policy, seed=seed, record_events=True)
            r = sim.counters.totals()
            sims.append({"seed": seed, **r,
                         "on_path_events_equal": on_path_events(sim, trace.prompt_len, run.outputs) == ev_engine,
                         "max_live": int(max_live(sim).max())})
        row = {"policy": name, "engine": {**e, "max_live": int(max_live(run.lattice).max()), "wall_s": round(wall, 1)},
               "engine_equals_trace": lossless, "replay": sims,
               "agree": {k: all(s[k] == e[k] for s in sims) for k in KEYS},
               "on_path_events_equal": all(s["on_path_events_equal"] for s in sims),
               "buffer": policy.buffer, "explorers": policy.explorers}
        out.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
