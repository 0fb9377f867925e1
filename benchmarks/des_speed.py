"""Speed of the discrete-event scheduler: simulated (committed) tokens per second of wall clock, one core.

    python benchmarks/des_speed.py [--tokens 100000] [--seqs 1000] [--pp 4] [--explorers 4] [--exits all]

Default: `dex` k = 4, E = every layer, buffer 8, eager, on a synthetic L = 32 trace (llama2-7b) of
100k tokens, timed on 4 pipeline stages of A100-80GB, every sequence one request, one at a time
(closed:1, the closed form: no event per step). Three figures, each best of --repeat:

- replay: the lattice core alone (what lockstep pricing also runs), for reference;
- record: the same replay with the core logging its work for the DES (`--scheduler des`; once per
  replay, whatever the hardware), in the same compiled loop, and the WorkLog made of it;
- DES: compiling the record onto the stages, pricing every step and computing the timeline. The
  issue's goal (100,000 tokens/s) is about this figure;
- each further configuration with the same stage count (pricing and timeline only; the sweep reuses
  the compiled plan).

`--load closed:8 --batch 8` times the SimPy engine (requests competing for the devices) instead.
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: numpy must not spread out

from dexsim.hardware import pricing  # noqa: E402
from dexsim.des.simulate import parse_load, simulate  # noqa: E402
from dexsim.des.plan import compile_plan  # noqa: E402
from dexsim.des.record import record  # noqa: E402
from dexsim.core import registry  # noqa: E402
from dexsim.replay.executor import replay  # noqa: E402
from dexsim.depths import parse_depths  # noqa: E402
from dexsim.traces.synth import synth_trace  # noqa: E402


def best_of(n, fn):
    best, out = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--seqs", type=int, default=1000)
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--ead", default="beta:1.4,1.8,0.08")
    registry.add_policy_flags(ap, known=registry.names(hindsight=False))
    ap.add_argument("--gpu", default="a100-sxm4-80gb")
    ap.add_argument("--pp", type=int, default=4)
    ap.add_argument("--load", default="closed:1")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-replay", action="store_true", help="do not time the plain replay")
    args = ap.parse_args()
    trace = synth_trace(args.model, args.seqs, args.tokens // args.seqs, ead=args.ead, seed=0)
    cfg = registry.policy_config(args)
    policy = cfg.policy(trace.L, parse_depths(args.exits, trace.L, "--exits"), trace.depths)
    model, hw = pricing.hardware(args.model, args.gpu, 1, args.pp, args.batch)
    load = parse_load(args.load, args.requests, args.batch)
    tokens = int(trace.seq_offsets[-1])
    name = registry.describe({"policy": cfg.name, **registry.policy_params(policy), "exits": args.exits})
    name += f" L={trace.L}"
    if not args.skip_replay:
        t, _ = best_of(1, lambda: replay(trace, policy))
        print(f"{name}: replay {t:.2f} s, {tokens / t:,.0f} tokens/s")
    t, (_, _, log) = best_of(1, lambda: record(trace, policy, pps=(args.pp,)))
    print(f"{name}: replay + record {t:.2f} s, {tokens / t:,.0f} tokens/s "
          f"({len(log.g_call) / tokens:.1f} groups/token)")
    t_plan, plan = best_of(args.repeat, lambda: compile_plan(log, args.pp))
    t, res = best_of(args.repeat, lambda: simulate(log, model, hw, load))
    t_more, _ = best_of(args.repeat, lambda: simulate(log, model, hw, load, plan=plan))
    print(f"DES on {args.gpu} pp={args.pp}, {load.spec()} batch {args.batch} ({res.engine}): {t:.2f} s for "
          f"{res.tokens:,} simulated tokens = {res.tokens / t:,.0f} tokens/s "
          f"(compile {t_plan:.2f} s, {plan.n_steps / res.tokens:.1f} steps/token); "
          f"simulated {res.tokens_per_s:.1f} tokens/s, utilization {[round(u, 3) for u in res.utilization]}")
    print(f"each further GPU / TP / batch / load on {args.pp} stages (plan reused, as a sweep does): {t_more:.2f} s "
          f"= {res.tokens / t_more:,.0f} tokens/s")


if __name__ == "__main__":
    main()
