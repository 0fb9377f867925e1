"""Speed of a `--scheduler des` replay's recording: the replay plus its work log for the DES, best of
--repeat, one core; and the plain replay beside it. Runs on this tree or, to compare, on an older one:

    python benchmarks/des_record_speed.py [--tree DIR] [--tokens 100000] [--repeat 3]

`--tree DIR`: import dexsim from DIR (a checkout of another revision, e.g. `git worktree add`); its
module layout may be the one before or after the packages of issue 14. Default workload: `dex` k = 4,
E = every layer, buffer 8, eager, synthetic L = 32 trace (llama2-7b), pipelines of 4 stages recorded.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--seqs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.tree))
    try:  # the layout by layer
        from dexsim.core.registry import make_policy
        from dexsim.des.record import record
        from dexsim.replay.executor import replay
        from dexsim.traces.synth import synth_trace
    except ImportError:  # the flat layout before it
        from dexsim.des_record import record
        from dexsim.replay import make_policy, replay
        from dexsim.synth import synth_trace
    trace = synth_trace("llama2-7b", args.seqs, args.tokens // args.seqs, ead="beta:1.4,1.8,0.08", seed=0)
    policy = make_policy("dex", trace.L, explorers=4, buffer=8)
    record(synth_trace("llama2-7b", 4, 8, seed=1), policy, pps=(4,))  # compile (or load the cache)
    tokens = int(trace.seq_offsets[-1])
    for name, run in (("replay", lambda: replay(trace, policy)),
                      ("replay + work log", lambda: record(trace, policy, pps=(4,)))):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        print(f"{args.tree}: {name}: {best:.2f} s, {tokens / best:,.0f} tokens/s")


if __name__ == "__main__":
    main()
