"""Where the gains vanish under load: throughput and p50/p99 token latency of AR, the best single-depth
method and the best DEX against batch size and Poisson arrival rate, on one device and on a pipeline.

    python benchmarks/load_curves.py [--traces T1,T2] [--trials 100] [--batches 1,2,4,8,16,32]
        [--rates 0.01,0.02,0.05,...,1.5] [--poisson-batch 32] [--out results/load_curves]
    python -m viz load results/load_curves/load_curves.json

For each trace and setting (one A100; a 4-stage A100 pipeline), all under the DES:

1. `dexsim tune` at batch 1, closed loop, picks each family's best configuration on the tuning half of
   the sequences; the best single-depth family (the registry's `single_depth`: LayerSkip, adaptive)
   and DEX's winner are kept.
2. AR and the two winners are replayed once each on the held-out half (`rows.run_job`) and timed by
   the DES (`rows.make_rows`, the sweep's rows): closed loop at every batch size (as many clients as
   the batch), then Poisson arrivals at the batch cap `--poisson-batch`, at rates that are multiples
   (`--rates`) of AR's saturation rate: AR's closed-loop tokens/s at that cap over the tokens of a
   request. Every point decodes the same `--requests` requests.
3. Crossovers: for each metric, DEX's advantage over AR and over the single-depth winner (their
   difference over the larger of the two, positive where DEX is better) along each axis; the first point where a positive advantage reaches
   zero is interpolated linearly in log(x) between the two points around it.

Writes OUT/load_curves.json (the setting, machine, date and command; every point; the crossovers),
OUT/load_curves.csv (the points) and the tunes under OUT/tune/.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dexsim.core import registry  # noqa: E402
from dexsim.hardware.pricing import HardwareConfig  # noqa: E402
from dexsim.sweep import tune as tuning  # noqa: E402
from dexsim.sweep.rows import make_rows, run_job  # noqa: E402
from dexsim.sweep.store import replace_file  # noqa: E402
from dexsim.traces.format import load_trace  # noqa: E402

TRACES = ("traces/smollm2-135m-trained-mix-humaneval100-raw.npz", "traces/synth-llama2-7b-eetrained.npz")
GPU = "a100-sxm4-80gb"
SETTINGS = {"1 device": 1, "4-stage pipeline": 4}  # label -> pipeline stages
BATCHES = (1, 2, 4, 8, 16, 32)
RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.75, 1.0, 1.25, 1.5)  # x AR's saturation rate: near idle to overload
METRICS = {"tokens_per_s": True, "p50_token_latency_s": False, "p99_token_latency_s": False}  # higher is better?
METHODS = ("ar", "single", "dex")
# An advantage smaller than this at the first point is none: under Poisson arrivals every method's
# throughput is the offered load (to within the sampling of the arrivals) until it saturates.
MIN_ADVANTAGE = 0.01
POINT_COLUMNS = ("trace", "setting", "axis", "x", "method", "configuration", "batch", "arrival", "requests",
                 "tokens", *METRICS, "speedup_vs_ar")


# One search each: a search over all three families stops proposing DEX once its first trials are
# pruned (on one device), leaving DEX without a winner.
FAMILIES = {"single": "layerskip,adaptive", "dex": "dex"}


def winners(path: str, pp: int, trials: int, folder: Path, max_tokens: int, seed: int) -> tuple:
    """(setting, method -> (policy, params)): AR, the best single-depth family (the registry's
    `single_depth`) and the best DEX, each search on the tuning half at batch 1, closed loop."""
    methods, s = {"ar": ("ar", {})}, None
    for method, policies in FAMILIES.items():
        cfg = tuning.TuneConfig(trace=path, policies=policies, scheduler="des", trials=trials,
                                out=str(folder / method), max_tokens=max_tokens, seed=seed)
        s = tuning.resolve(cfg.checked(), HardwareConfig(gpu=GPU, pp=pp))
        best = [e for e in tuning.tune(s)["best"] if method == "dex" or e["single_depth"]]
        if not best:
            raise SystemExit(f"{path}: the {method} tune finished no trial on all its sequences; raise --trials")
        methods[method] = _params(max(best, key=lambda e: e["in_sample"]["value"]))
    return s, methods


def _params(entry: dict) -> tuple:
    p = dict(entry["params"])
    if "exits" in p:
        p["exits"] = tuple(int(d) for d in str(p["exits"]).split(","))
    return entry["policy"], p


def replayed(specs: list) -> dict:
    """Every job the row specs need, replayed once (the AR baseline serves all of them)."""
    done = {}
    for spec in specs:
        for job in (spec.ar, *spec.jobs):
            if job not in done:
                done[job] = run_job(job)
    return done


def _point(row: dict, label: str, axis: str, x: float, method: str, config: str, trace: str) -> dict:
    out = {"trace": trace, "setting": label, "axis": axis, "x": x, "method": method, "configuration": config}
    out.update({k: row[k] for k in ("batch", "arrival", "requests", "tokens", *METRICS, "speedup_vs_ar")})
    return out


def curves(s, methods: dict, label: str, batches, rates, requests: int, poisson_batch: int) -> tuple[list, float]:
    """The points of one trace and setting: every method closed-loop at each batch size, then Poisson at
    `rates` x AR's saturation rate (returned too, requests/s) with at most `poisson_batch` in flight."""
    seqs = s.halves[1]
    trace = os.path.basename(s.cfg.trace)
    base = {m: tuning.row_spec(s, *methods[m], seqs) for m in METHODS}
    hw_at = {b: replace(s.hw, batch=b) for b in (*batches, poisson_batch)}
    closed = {m: replace(spec, hardware=[(s.model, hw_at[b]) for b in batches], schedules=[("des", "closed")],
                         requests=requests) for m, spec in base.items()}
    done = replayed(list(closed.values()))
    cache, points = {}, []
    config = {m: registry.describe({"policy": methods[m][0], **_shown(methods[m][1])}) for m in METHODS}
    for m in METHODS:
        for b, row in zip(batches, make_rows(closed[m], done, set(), cache)):
            points.append(_point(row, label, "batch", b, m, config[m], trace))
    cap = replace(closed["ar"], hardware=[(s.model, hw_at[poisson_batch])])
    ar = make_rows(cap, done, set(), cache)[0]
    saturation = ar["tokens_per_s"] / (ar["tokens"] / ar["requests"])  # requests/s AR sustains at the cap
    specs = [f"poisson:{float(f'{f * saturation:.4g}'):g}" for f in rates]
    for m in METHODS:
        spec = replace(closed[m], hardware=[(s.model, hw_at[poisson_batch])], schedules=[("des", a) for a in specs])
        for arr, row in zip(specs, make_rows(spec, done, set(), cache)):
            points.append(_point(row, label, "rate", float(arr.partition(":")[2]), m, config[m], trace))
    return points, saturation


def _shown(params: dict) -> dict:
    return {k: (",".join(map(str, v)) if k == "exits" else v) for k, v in params.items()}


def advantage(dex: float, other: float, higher_better: bool) -> float:
    """DEX's advantage, the difference over the larger of the two: positive where DEX is better, in
    [-1, 1] and defined where a latency is 0 (a method that commits tokens in bursts has gaps of 0)."""
    top = max(dex, other)
    if top == 0:
        return 0.0
    return (dex - other) / top if higher_better else (other - dex) / top


def crossover(xs: list, adv: list, least: float = MIN_ADVANTAGE) -> dict:
    """Where DEX's advantage, above `least` at the first point, first reaches zero along xs (increasing,
    positive), interpolated in log x."""
    if adv[0] <= least:
        return {"x": None, "note": f"none: no advantage at the first point ({adv[0]:+.1%})"}
    for (x0, a0), (x1, a1) in zip(zip(xs, adv), zip(xs[1:], adv[1:])):
        if a1 <= 0:
            t = a0 / (a0 - a1)
            return {"x": math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0))),
                    "note": f"between {x0:g} ({a0:+.1%}) and {x1:g} ({a1:+.1%})"}
    return {"x": None, "note": f"none in range ({xs[0]:g}-{xs[-1]:g}; {adv[-1]:+.1%} at {xs[-1]:g})"}


def crossovers(points: list) -> list[dict]:
    """DEX against AR and against the single-depth winner, per trace, setting, axis and metric."""
    out = []
    groups = dict.fromkeys((p["trace"], p["setting"], p["axis"]) for p in points)
    for trace, label, axis in groups:
        at = {(p["method"], p["x"]): p for p in points if (p["trace"], p["setting"], p["axis"]) == (trace, label, axis)}
        xs = sorted({x for _, x in at})
        for metric, higher in METRICS.items():
            for other in ("ar", "single"):
                adv = [advantage(at["dex", x][metric], at[other, x][metric], higher) for x in xs]
                out.append({"trace": trace, "setting": label, "axis": axis, "metric": metric, "versus": other,
                            "advantage": adv, **crossover(xs, adv)})
    return out


def table(result: dict) -> str:
    """The crossovers as a Markdown table: a row per trace, setting and rival; the batch size and the
    arrival rate (requests/s, and as a multiple of AR's saturation rate) where each advantage vanishes."""
    sat = {(s["trace"], s["setting"]): s["ar_saturation_qps"] for s in result["settings"]}
    cols = [("batch", m) for m in METRICS] + [("rate", m) for m in METRICS]
    short = {"tokens_per_s": "tok/s", "p50_token_latency_s": "p50", "p99_token_latency_s": "p99"}
    head = ["trace", "setting", "DEX vs"] + [f"{a} {short[m]}" for a, m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(c["trace"], c["setting"], c["versus"], c["axis"], c["metric"]): c for c in result["crossovers"]}
    for trace, label in sat:
        for versus in ("ar", "single"):
            cells = []
            for axis, metric in cols:
                c = by[trace, label, versus, axis, metric]
                if c["x"] is None:
                    cells.append("none in range" if "in range" in c["note"] else f"no gain ({c['advantage'][0]:+.0%})")
                elif axis == "rate":
                    cells.append(f"{c['x']:.3g} ({c['x'] / sat[trace, label]:.2g}x)")
                else:
                    cells.append(f"{c['x']:.2g}")
            lines.append("| " + " | ".join([trace.removesuffix(".npz"), label, versus, *cells]) + " |")
    return "\n".join(lines)


def write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=POINT_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(result["points"])
    replace_file(out / "load_curves.csv", buf.getvalue())
    replace_file(out / "load_curves.json", json.dumps(result, indent=1) + "\n")


def run(traces, trials: int, batches, rates, requests: int | None, poisson_batch: int, out: Path,
        max_tokens: int = 32, seed: int = 0, log=print) -> dict:
    points, settings, kinds = [], [], {}
    for path in traces:
        t = load_trace(path)
        kinds[os.path.basename(path)] = {"synthetic": bool(t.meta.get("synthetic")), "model": t.meta.get("model"),
                                         "heads": t.meta.get("heads", "lens"), "sequences": t.n_seqs}
        for label, pp in SETTINGS.items():
            t0, load0 = time.perf_counter(), os.getloadavg()[0]
            s, methods = winners(path, pp, trials, out / "tune" / f"{Path(path).stem}-pp{pp}", max_tokens, seed)
            n = requests or max(len(s.halves[1]), 2 * max(batches))
            got, saturation = curves(s, methods, label, batches, rates, n, poisson_batch)
            points += got
            settings.append({"trace": os.path.basename(path), "setting": label, "gpu": GPU, "pp": pp,
                             "requests": n, "poisson_batch": poisson_batch, "ar_saturation_qps": saturation,
                             "held_out_sequences": len(s.halves[1]),
                             "methods": {m: {"policy": p, "params": _shown(q)} for m, (p, q) in methods.items()},
                             "seconds": time.perf_counter() - t0, "load": load0})
            log(f"{os.path.basename(path)} {label}: single {methods['single']}, dex {methods['dex']}, AR saturation {saturation:.3g} req/s, {time.perf_counter() - t0:.0f} s, load {load0:.1f}")
    return {"gpu": GPU, "batches": list(batches), "rate_factors": list(rates), "max_tokens": max_tokens,
            "trials": trials, "seed": seed, "traces": kinds, "settings": settings, "points": points,
            "crossovers": crossovers(points)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=",".join(str(ROOT / t) for t in TRACES))
    ap.add_argument("--trials", type=int, default=100, help="trials of each search (single-depth; DEX)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="multiples of AR's saturation rate")
    ap.add_argument("--poisson-batch", type=int, default=max(BATCHES), help="most requests in flight under Poisson")
    ap.add_argument("--requests", type=int, default=None, help="requests per point (default: max(held-out "
                                                                 "sequences, 2 x the largest batch))")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default="results/load_curves")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    result = run(args.traces.split(","), args.trials, [int(b) for b in args.batches.split(",")],
                 [float(r) for r in args.rates.split(",")], args.requests, args.poisson_batch, out, args.max_tokens)
    result.update(command=" ".join(["python", *sys.argv]), machine=f"{platform.node()} ({os.cpu_count()} cores, "
                  f"{platform.processor() or platform.machine()})", date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
                  wall_s=time.time() - t0)
    write(out, result)
    for c in result["crossovers"]:
        print(f"{c['trace']:45s} {c['setting']:17s} {c['axis']:5s} {c['metric']:20s} vs {c['versus']:6s} "
              f"{'-' if c['x'] is None else format(c['x'], '.3g'):>7s}  {c['note']}")
    print(table(result))
    print(out / "load_curves.json")


if __name__ == "__main__":
    main()
