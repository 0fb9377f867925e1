"""Is the simulator right? Emulated wall-clock against the simulator's prediction, policy by policy.

For each trace (by default the bundled real ones, logit lens and trained heads, and the
early-exit-trained synthetic one) and each policy (ar, layerskip, adaptive, oracle-select's pick and
three dex settings), `dexref.emulate` runs the replay's schedule with every node-layer and exit head
really computed on the device, and the simulator prices the very same counters (they are equal by
construction, and checked) with (a) the roofline catalog entry of the device and (b) the measured
profile. Reported: each row's error (predicted / emulated - 1) and whether the simulator ranks the
policies of a trace in the emulated order.

Profile and emulation run back to back under the same load: profile A, the emulations, profile B;
predictions are given with both profiles, and the spread of A and B over their grids is reported.

    python benchmarks/sim_vs_hardware.py                      # this CPU, the SmolLM2 shape, fp32, 1 thread
    python benchmarks/sim_vs_hardware.py --device cuda --shape llama2-7b --dtype bfloat16 --gpu h100-sxm5-80gb
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dexsim.core import registry  # noqa: E402
from dexsim.hardware import pricing  # noqa: E402
from dexsim.replay import hindsight  # noqa: E402
from dexsim.replay.executor import replay  # noqa: E402
from dexsim.specs.catalog import DTYPE_BYTES  # noqa: E402
from dexsim.hardware import cost  # noqa: E402
from dexsim.specs.profile import load_profile, rates_entry  # noqa: E402
from dexsim.traces.analyze import exit_set  # noqa: E402
from dexsim.traces.format import load_trace  # noqa: E402
from dexsim.traces.transforms import first_seqs, first_tokens, for_model  # noqa: E402

TRACES = ("traces/smollm2-135m-lens-humaneval-raw.npz", "traces/smollm2-135m-trained-humaneval-raw.npz",
          "traces/synth-llama2-7b-eetrained.npz")
POLICIES = (("ar", {}), ("layerskip", {}), ("adaptive", {"exits": "every:3"}), ("oracle-select", {}),
            ("dex", {"explorers": 2, "buffer": 4, "priority": "align", "exits": "every:3"}),
            ("dex", {"explorers": 4, "buffer": 8, "exits": "every:3"}),
            ("dex", {"explorers": 8, "buffer": 16, "priority": "deep", "exits": "every:6"}))


KINDS = ("roofline", "roofline_rated", "profile_a", "profile_b")
COUNTERS = ("tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks")


def uptime() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def label(name: str, params: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in params.items())


def prepared(trace, args):
    """(trace to emulate, the model the simulator prices it as): with --shape, the trace mapped by relative
    depth onto that catalog shape where their depths differ (as `--model` does in dexsim); with --model,
    the trace as it is (the model must have its depth), priced from the model's own arch."""
    if args.model is None:
        return for_model(trace, args.shape, flag="--shape")[0], args.shape
    return trace, f"model:{Path(args.model).name}"


def policies_for(trace, profile, model_name, heads, dtype, gpu):
    """(label, policy) of every POLICIES entry on this trace; oracle-select becomes its pick, the
    LayerSkip setting the simulator with the profile prices fastest."""
    out = []
    for name, given in POLICIES:
        params = dict(given)
        exits = exit_set(trace, params.pop("exits", "all"))
        if name == "oracle-select":
            cands = hindsight.candidates(trace, name, exits)
            model, hw = priced_on(trace, model_name, heads, dtype, gpu, profile)
            costs = [pricing.price(pricing.tally_of(replay(trace, p)), model, hw)["sim_seconds"] for p in cands]
            pick = cands[int(np.argmin(costs))]
            out.append((f"oracle-select -> {label(pick.name, registry.policy_params(pick))}", pick))
            continue
        policy = registry.make_policy(name, trace.L, exits=exits, depths=trace.depths, **params)
        out.append((label(name, given), policy))
    return out


ARCH = {}  # the emulated model's arch, for a model outside the catalog (--model)


def priced_on(trace, model_name, heads, dtype, gpu, profile):
    """(model, hardware) the simulator prices this trace on: the catalog model (or the --model's own arch)
    in the dtype it was run in."""
    model, hw = pricing.hardware(model_name, gpu, heads=heads, layers=trace.L, arch=ARCH or trace.meta.get("arch"),
                                 profile=profile)
    return replace(model, dtype=dtype, bytes_per_weight=float(DTYPE_BYTES[dtype])), hw


def run_profile(args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "dexref", "profile", *model_flags(args), "--clock", args.clock, "--rows", args.rows,
           "--contexts", args.contexts, "--repeats", str(args.profile_repeats), "--out", str(out)]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    return {"path": str(out), "seconds": round(time.time() - t0, 1), "command": " ".join(cmd[1:])}


def model_flags(args) -> list[str]:
    flags = ["--shape", args.shape] if args.model is None else ["--model", args.model]
    flags += ["--dtype", args.dtype] + (["--device", args.device] if args.device else [])
    return flags + (["--threads", str(args.threads)] if args.threads else [])


def spread(a: dict, b: dict) -> dict:
    """How far two profiles of one machine are apart: per table, the largest and the median |B/A - 1|."""
    out = {}
    for key in ("layer_s", "head_s"):
        r = np.abs(np.asarray(b[key]) / np.asarray(a[key]) - 1).ravel()
        out[key] = {"max": float(r.max()), "median": float(np.median(r))}
    out["host_round_s"] = abs(b["host_round_s"] / a["host_round_s"] - 1)
    out["head_refill"] = [a.get("head_refill", 0.0), b.get("head_refill", 0.0)]  # layer steps, A and B
    return out


def load_model(args, positions: int):
    import torch

    from dexref.load import load_shape

    ns = argparse.Namespace(shape=args.shape if args.model is None else None, model=args.model, device=args.device,
                            dtype=args.dtype, threads=args.threads)
    model, shape = load_shape(ns, positions)
    torch.set_grad_enabled(False)
    return model, shape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m", help="random weights of this catalog shape")
    p.add_argument("--model", default=None, help="or a real model (cached name or checkpoint folder)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least disturbed by other jobs)")
    p.add_argument("--gpu", default="cpu-local", help="the catalog entry of the device (roofline, and what the profile prices as)")
    p.add_argument("--traces", default=",".join(TRACES))
    p.add_argument("--seqs", type=int, default=2, help="the first N sequences of each trace")
    p.add_argument("--tokens", type=int, default=12, help="the first N tokens of each sequence")
    p.add_argument("--policies", default=None, help="only these of the policies (ar, layerskip, adaptive, oracle-select, "
                                                    "dex), comma-separated (default: all)")
    p.add_argument("--repeats", type=int, default=1, help="emulations of each row; their mean is compared (as the "
                                                          "profile's tables are means)")
    p.add_argument("--rows", default="1,2,4,8,16,32")
    p.add_argument("--contexts", default="64,256,1024,8192")
    p.add_argument("--profile-repeats", type=int, default=7)
    p.add_argument("--clock", default=None, choices=("wall", "cpu"),
                   help="what is timed, in the profiles and the emulations: wall clock (default on a GPU), or "
                        "this process's CPU time (default on a CPU: other jobs on a shared machine then cost "
                        "nothing; with --threads 1)")
    p.add_argument("--out", default="results/sim_vs_hardware", help="folder for the profiles and results.json")
    args = p.parse_args(argv)
    if args.clock is None:
        args.clock = "wall" if (args.device or "cpu").startswith("cuda") else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keep = None if args.policies is None else set(args.policies.split(","))

    loads = {"start": uptime()}
    prof_a = run_profile(args, out / "profile-a.json")
    loads["after profile A"] = uptime()
    profile_a, profile_b = load_profile(prof_a["path"]), None
    # the roofline with the device entry profile A gives it (its rates and host terms, as cpu-local reads them)
    rates = rates_entry(json.loads(Path(prof_a["path"]).read_text()))
    rates = {k: v for k, v in rates.items() if isinstance(v, float) and np.isfinite(v)}
    traces = []
    for path in args.traces.split(","):
        traces.append(first_tokens(first_seqs(load_trace(str(ROOT / path) if not Path(path).exists() else path),
                                              args.seqs), args.tokens))
    positions = max(int((t.prompt_len + np.diff(t.seq_offsets)).max()) for t in traces) + 40
    model, shape = load_model(args, positions)
    if args.model is not None:
        ARCH.update(shape["arch"], params=sum(p.numel() for p in model.parameters()), dtype=args.dtype)
        skipped = [t.path for t in traces if t.L != model.args.n_layer]
        for path in skipped:
            print(f"note: {path}: {model.args.n_layer} layers in --model, skipped", file=sys.stderr)
        traces = [t for t in traces if t.L == model.args.n_layer]
    from dexref.emulate import emulate

    warm = prepared(traces[0], args)[0]
    emulate(first_tokens(first_seqs(warm, 1), 2), registry.make_policy("dex", warm.L, exits=warm.depths), model,
            graphs=model.device.type == "cuda")  # first calls (caches, allocator, compiled code loaded) untimed
    rows = []
    for trace0 in traces:
        trace, model_name = prepared(trace0, args)
        heads = trace.meta.get("heads", "lens")
        for lab, policy in policies_for(trace, profile_a, model_name, heads, args.dtype, args.gpu):
            if keep is not None and lab.split()[0] not in keep:
                continue
            runs = [emulate(trace, policy, model, graphs=model.device.type == "cuda")
                    for _ in range(max(args.repeats, 1))]
            run = runs[0]  # counters and tally: every run has the replay's
            rep = replay(trace, policy).counters.totals()
            assert all(r.counters == rep and r.output_matches_trace for r in runs), (lab, run.counters, rep)
            row = {"trace": Path(trace0.path).name, "model": model_name, "depth_mapped": trace.L != trace0.L,
                   "policy": lab, **run.counters, "emulated_s": float(np.mean([r.seconds(args.clock) for r in runs])),
                   "emulated_runs_s": [r.seconds(args.clock) for r in runs],
                   "emulated_wall_s": float(np.mean([r.wall_s for r in runs])),
                   "emulated_cpu_s": float(np.mean([r.cpu_s for r in runs]))}
            roof_m, roof_hw = priced_on(trace, model_name, heads, args.dtype, args.gpu, None)
            row["roofline_s"] = pricing.price(run.tally, roof_m, roof_hw)["sim_seconds"]
            rated = cost.Hardware(replace(roof_hw.gpu, **rates), tp=1, pp=1, batch=1)
            row["roofline_rated_s"] = pricing.price(run.tally, roof_m, rated)["sim_seconds"]
            prof_m, prof_hw = priced_on(trace, model_name, heads, args.dtype, args.gpu, profile_a)
            priced = pricing.price(run.tally, prof_m, prof_hw)
            row["profile_a_s"], row["profile_extrapolated"] = priced["sim_seconds"], priced["extrapolated"]
            rows.append(row)
            print(f"{row['trace']:<40} {lab:<60} emulated {row['emulated_s']:8.3f} s  roofline "
                  f"{row['roofline_s']:8.3f}  profile {row['profile_a_s']:8.3f}", file=sys.stderr)
    loads["after emulation"] = uptime()
    prof_b = run_profile(args, out / "profile-b.json")
    loads["after profile B"] = uptime()
    profile_b = load_profile(prof_b["path"])
    # price again with profile B (the same tallies: re-emulating is not needed, the counters are the replay's)
    by_trace = {}
    for trace0 in traces:
        trace, model_name = prepared(trace0, args)
        by_trace[Path(trace0.path).name] = (trace, model_name, trace.meta.get("heads", "lens"))
    tallies = {}
    for row in rows:
        trace, model_name, heads = by_trace[row["trace"]]
        if (row["trace"], row["policy"]) not in tallies:
            pol = next(p for lab, p in policies_for(trace, profile_a, model_name, heads, args.dtype, args.gpu)
                       if lab == row["policy"])
            tallies[row["trace"], row["policy"]] = pricing.tally_of(replay(trace, pol))
        m, hw = priced_on(trace, model_name, heads, args.dtype, args.gpu, profile_b)
        row["profile_b_s"] = pricing.price(tallies[row["trace"], row["policy"]], m, hw)["sim_seconds"]
        for k in KINDS:
            row[f"{k}_err"] = row[f"{k}_s"] / row["emulated_s"] - 1
    rankings = {}
    for t in by_trace:  # a row whose schedule another row already has (oracle-select's pick) is not ranked twice
        sub = list({tuple(r[c] for c in COUNTERS): r for r in reversed([r for r in rows if r["trace"] == t])}.values())
        measured = [r["policy"] for r in sorted(sub, key=lambda r: r["emulated_s"])]
        rankings[t] = {"measured": measured, **{k: [r["policy"] for r in sorted(sub, key=lambda r: r[f"{k}_s"])] == measured
                                                for k in KINDS}}
    a, b = (json.loads(Path(x["path"]).read_text()) for x in (prof_a, prof_b))
    result = {"clock": args.clock, "command": " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"device": a["device"], "host": a["host"]}, "shape": shape, "dtype": args.dtype,
              "loads": loads, "profiles": [prof_a, prof_b], "profile_spread": spread(a, b),
              "rows": rows, "rankings": rankings}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


def table(result: dict) -> str:
    lines = ["| trace | policy | tokens | rounds | weight loads | head evals | emulated s | roofline s (err) | "
             "roofline, rates of A (err) | profile A s (err) | profile B s (err) |", "|" + "---|" * 11]
    for r in result["rows"]:
        cells = [f"{r[f'{k}_s']:.3f} ({r[f'{k}_err']:+.1%})" for k in KINDS]
        lines.append(f"| {r['trace']} | {r['policy']} | {r['tokens']} | {r['rounds']} | {r['weight_loads']} | "
                     f"{r['head_evals']} | {r['emulated_s']:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    for t, rk in result["rankings"].items():
        lines.append(f"- {t}: measured order {' < '.join(rk['measured'])}; same order: "
                     + ", ".join(f"{k} {rk[k]}" for k in KINDS))
    errs = {k: np.abs([r[f"{k}_err"] for r in result["rows"]]) for k in KINDS}
    lines.append("- |error| max / median: " + "; ".join(f"{k} {v.max():.1%} / {np.median(v):.1%}" for k, v in errs.items()))
    lines.append(f"- rows within 10% (profile A / B): {sum(errs['profile_a'] <= 0.1)} / {sum(errs['profile_b'] <= 0.1)} "
                 f"of {len(result['rows'])}; within 20% (roofline / with A's rates): {sum(errs['roofline'] <= 0.2)} / "
                 f"{sum(errs['roofline_rated'] <= 0.2)}")
    lines.append(f"- profile spread (B vs A): {json.dumps(result['profile_spread'])}")
    lines.append(f"- load averages: {json.dumps(result['loads'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
