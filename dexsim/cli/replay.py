"""`python -m dexsim replay`: replay a trace under a policy and print its counters; with `--gpu`, priced
(lockstep) or timed by the discrete-event simulator (`--scheduler des`), with the speedup over `ar` on
the same trace and hardware. With `--model` naming another model than the trace's, the trace's exit
depths are mapped onto that model by relative depth."""
from __future__ import annotations

import sys

from dexsim import config
from dexsim.config import add_flags, from_args
from dexsim.core import registry
from dexsim.core.policies import AR
from dexsim.des import simulate as des
from dexsim.des.record import record
from dexsim.hardware import pricing
from dexsim.hardware.pricing import HardwareConfig
from dexsim.des.simulate import SchedulerConfig
from dexsim.replay import hindsight
from dexsim.replay.executor import replay, result, save_events
from dexsim.traces.analyze import exit_set
from dexsim.traces.format import load_trace
from dexsim.traces.transforms import for_model

def cmd_replay(args) -> int:
    cfg = registry.policy_config(args)
    hw_cfg, sched = from_args(HardwareConfig, args), from_args(SchedulerConfig, args)
    trace, rescaled = for_model(load_trace(args.trace), hw_cfg.model)
    priced_on = hw_cfg.resolve(trace.meta.get("model"), trace.meta.get("heads", "lens"), trace.path, trace.L,
                               arch=trace.meta.get("arch"))
    exits = exit_set(trace, cfg.params["exits"])
    if cfg.spec.hindsight:
        policies = hindsight.candidates(trace, cfg.name, exits, **cfg.own())
    else:
        policies = [registry.make_policy(cfg.name, trace.L, exits=exits, depths=trace.depths, **cfg.own())]
    sched.check(priced_on is not None)
    events = args.events if not cfg.spec.hindsight else None
    if events is not None:
        config.check_writable("--events", events)
    timed = replay_des if sched.scheduler == "des" else replay_lockstep
    out = timed(trace, cfg, policies, priced_on, sched, rescaled, seed=args.seed, events=events)
    for note in out.pop("profile_notes", ()):
        print(f"note: --profile {out['profile']}: extrapolated: {note}", file=sys.stderr)
    config.print_result(out, args.json)
    return 0


def replay_lockstep(trace, cfg, policies, priced_on, sched, rescaled, *, seed, events) -> dict:
    """The replay priced in closed form (one device, or stages one after the other)."""
    lats = [replay(trace, p, seed=seed, record_events=bool(events)) for p in policies]
    results = [result(trace, lat, p) for lat, p in zip(lats, policies)]
    if cfg.spec.hindsight:  # unpriced: the fewest weight loads; priced: the fewest simulated seconds
        costs = ([r["weight_loads"] for r in results] if priced_on is None else
                 [pricing.price(pricing.tally_of(lat), *priced_on)["sim_seconds"] for lat in lats])
        out, best = hindsight.pick(cfg.name, results, costs)
    else:
        out, best = results[0], 0
        if events:
            save_events(events, lats[0], trace, policies[0])
    out["model"], out["depth_rescaled"] = trace.meta.get("model"), rescaled
    if priced_on is not None:
        model, hw = priced_on
        _, ar_tally = pricing.replay_tally(trace, AR(trace.L), seed=seed)
        out.update(gpu=hw.gpu.name, tp=hw.tp, pp=hw.pp, batch=hw.batch,
                   **pricing.priced_fields(pricing.tally_of(lats[best]), ar_tally, model, hw))
    return out


def replay_des(trace, cfg, policies, priced_on, sched, rescaled, *, seed, events) -> dict:
    """The same replay, its work timed by the discrete-event simulator. The lattice counters are those
    of the simulated requests (each counts its sequence's)."""
    model, hw = priced_on
    load = sched.load(hw.batch, seed)
    want = bool(sched.trace_out)
    runs = []
    for policy in policies:
        lat, _, log = record(trace, policy, seed=seed, pps=(hw.pp,), record_events=bool(events))
        runs.append((result(trace, lat, policy), lat, log, des.simulate(log, model, hw, load, want_events=want)))
    if cfg.spec.hindsight:  # the candidate with the fewest simulated seconds
        out, best = hindsight.pick(cfg.name, [r[0] for r in runs], [r[3].sim_seconds for r in runs])
    else:
        out, best = runs[0][0], 0
        if events:
            save_events(events, runs[0][1], trace, policies[0])
    _, _, log, res = runs[best]
    ar = des.simulate(record(trace, AR(trace.L), seed=seed, pps=(hw.pp,))[2], model, hw, load)
    out.update(des.request_counters(log, load))
    out["model"], out["depth_rescaled"] = trace.meta.get("model"), rescaled
    out.update(gpu=hw.gpu.name, tp=hw.tp, pp=hw.pp, batch=hw.batch, scheduler="des",
               requests=len(res.request_seqs), arrival=load.spec(), **res.fields())
    if load.micro_batch is not None:
        out["micro_batch"] = load.micro_batch
    out["speedup_vs_ar"] = res.tokens_per_s / ar.tokens_per_s
    out.update(pricing.profile_fields(hw, res.extrapolated, ar.extrapolated))
    if want:
        des.chrome_trace(res, hw, sched.trace_out)
    return out


def register(sub) -> None:
    p = sub.add_parser("replay", help="replay a trace under a policy and print its counters (priced with --gpu)")
    p.add_argument("--trace", required=True, help="trace file (.npz, DESIGN.md section 5)")
    registry.add_policy_flags(p)
    p.add_argument("--seed", type=config.parse_seed, default=0,
                   help="seed of the off-path exit tokens and confidences (and poisson arrivals)")
    add_flags(p, HardwareConfig)
    add_flags(p, SchedulerConfig)
    p.add_argument("--events", default=None, help="write the event log to this .npz")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_replay)
