"""Replay speed of the lattice core: committed tokens per second of wall clock, one process.

    python benchmarks/replay_speed.py [--tokens 200000] [--seqs 1000] [--policy dex] [--explorers 4]

Default: `dex`, k = 4, E = every layer, buffer 8, eager, on a synthetic L = 32 trace (llama2-7b
architecture) of 200k tokens. Trace synthesis and the core's compilation (a warm-up replay of a
small trace) are not timed; the replay is, best of --repeat runs.
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: numpy must not spread out

from dexsim.core import registry  # noqa: E402
from dexsim.depths import parse_depths  # noqa: E402
from dexsim.replay.executor import replay  # noqa: E402
from dexsim.traces.synth import synth_trace  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--seqs", type=int, default=1000)
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--ead", default="beta:1.4,1.8,0.08")
    registry.add_policy_flags(ap, known=registry.names(hindsight=False))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    trace = synth_trace(args.model, args.seqs, args.tokens // args.seqs, ead=args.ead, seed=0)
    cfg = registry.policy_config(args)
    policy = cfg.policy(trace.L, parse_depths(args.exits, trace.L, "--exits"), trace.depths)
    replay(synth_trace(args.model, 4, 8, ead=args.ead, seed=1), policy)  # compile (or load the cache)
    best = cpu = float("inf")
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        lat = replay(trace, policy)
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    c = lat.counters.totals()
    name = registry.describe({"policy": cfg.name, **registry.policy_params(policy), "exits": args.exits})
    print(f"{name} L={trace.L} "
          f"seqs={trace.n_seqs} tokens={c['tokens']}: {best:.2f} s wall ({cpu:.2f} s CPU), "
          f"{c['tokens'] / best:,.0f} tokens/s "
          f"({c['rounds'] / trace.n_seqs:.0f} rounds/sequence)")


if __name__ == "__main__":
    main()
