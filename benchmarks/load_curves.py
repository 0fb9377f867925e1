"""Where the gains vanish under load: throughput and p50/p99 token latency of AR, the best single-depth
method and the best DEX against batch size and Poisson arrival rate, on one device and on a pipeline.

    python benchmarks/load_curves.py [--traces T1,T2] [--trials 100] [--batches 1,2,4,8,16,32]
        [--rates 0.01,0.02,0.05,...,1.5] [--poisson-batch 32] [--synth-seqs 128]
        [--retune [--retune-trials 12] [--retune-batches 1,2,4] [--retune-rates 0.01,0.1]] [--out results/load_curves]
    python -m viz load results/load_curves/load_curves.json [results/load_curves/retuned/load_curves.json]

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

A synthetic trace of fewer than `--synth-seqs` sequences (the bundled ones hold 16) is first replaced
by one of that many drawn from the same distribution (its own `dexsim synth` arguments, from its meta)
under the next seed, written to OUT/traces/ (`grown`): otherwise its held-out half is 8 sequences,
cycled to make a point's requests.

`--retune` (`retuned`): the batch-1 winners of step 1 may not be the best under load, so at every
load point the single-depth and DEX searches run again under that point's batch and arrivals, once
per metric with it as the objective (`--retune-trials` trials each: 12 cover each family's first
guesses and a few sampled ones; the batch-1 winner is kept where it does better on the tuning half
under that load); each winner's held-out value is that point's metric (`--retune-batches`,
`--retune-rates`: at some of the points only). The rate
points' tokens/s is not searched: under Poisson arrivals it is the offered load until a method
saturates, then its closed-loop rate at the cap, so it comes from the closed-loop search at the
cap. The re-tuned curves and crossovers go to OUT/retuned/load_curves.json (the same fields, plus
every winner), and a table sets each crossover beside the batch-1 winners' one. Every search
resumes from its folder under OUT/tune/, so a killed run loses only the search under way.

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
from dexsim.errors import UserError  # noqa: E402
from dexsim.hardware.pricing import HardwareConfig  # noqa: E402
from dexsim.sweep import tune as tuning  # noqa: E402
from dexsim.sweep.rows import make_rows, run_job  # noqa: E402
from dexsim.sweep.store import replace_file  # noqa: E402
from dexsim.traces.format import load_trace, save_trace  # noqa: E402
from dexsim.traces.synth import synth_trace  # noqa: E402

TRACES = ("traces/smollm2-135m-trained-mix-humaneval100-raw.npz", "traces/synth-llama2-7b-eetrained.npz")
GPU = "a100-sxm4-80gb"
SETTINGS = {"1 device": 1, "4-stage pipeline": 4}  # label -> pipeline stages
BATCHES = (1, 2, 4, 8, 16, 32)
SYNTH_SEQS = 128  # a synthetic trace's sequences: 64 held out, so the 64 requests of a point are all different
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
OBJECTIVE = {"tokens_per_s": "tokens_per_s", "p50_token_latency_s": "p50", "p99_token_latency_s": "p99"}  # metric -> tune's
SHORT = {"tokens_per_s": "tok/s", "p50_token_latency_s": "p50", "p99_token_latency_s": "p99"}


def winners(path: str, pp: int, trials: int, folder: Path, max_tokens: int, seed: int) -> tuple:
    """(setting, method -> (policy, params)): AR, the best single-depth family (the registry's
    `single_depth`) and the best DEX, each search on the tuning half at batch 1, closed loop."""
    methods, s = {"ar": ("ar", {})}, None
    for method in FAMILIES:
        s, methods[method], _ = winner(path, HardwareConfig(gpu=GPU, pp=pp), method, trials, folder / method,
                                       max_tokens, seed)
    return s, methods


def winner(path: str, hw: HardwareConfig, method: str, trials: int, folder: Path, max_tokens: int, seed: int,
           arrival: str = "closed", requests: int | None = None, objective: str = "tokens_per_s") -> tuple:
    """(setting, (policy, params), its entry of the tune's best.json): the best configuration of `method`
    ("single": the best single-depth family; "dex") that a search on the tuning half finds under this load
    and objective; the entry holds its objective on the held-out half (`held_out.value`)."""
    cfg = tuning.TuneConfig(trace=path, policies=FAMILIES[method], scheduler="des", arrival=arrival,
                            requests=requests, objective=objective, trials=trials, out=str(folder),
                            max_tokens=max_tokens, seed=seed, resume=True)  # a killed run's searches continue
    s = tuning.resolve(cfg.checked(), hw)
    best = [e for e in tuning.tune(s)["best"] if method == "dex" or e["single_depth"]]
    if not best:
        raise SystemExit(f"{path}: the {method} tune finished no trial on all its sequences; raise --trials")
    sign = 1 if tuning.OBJECTIVES[objective][1] == "maximize" else -1
    entry = max(best, key=lambda e: sign * e["in_sample"]["value"])
    return s, _params(entry), entry


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
    specs = [arrival for axis, _, _, arrival in load_points(batches, rates, saturation, poisson_batch) if axis == "rate"]
    for m in METHODS:
        spec = replace(closed[m], hardware=[(s.model, hw_at[poisson_batch])], schedules=[("des", a) for a in specs])
        for arr, row in zip(specs, make_rows(spec, done, set(), cache)):
            points.append(_point(row, label, "rate", float(arr.partition(":")[2]), m, config[m], trace))
    return points, saturation


def load_points(batches, rates, saturation: float, poisson_batch: int) -> list[tuple]:
    """(axis, x, batch, arrival) of every point of a curve: closed loop at each batch size, then Poisson
    at each multiple of AR's saturation rate (requests/s, 4 significant digits) with `poisson_batch` in flight."""
    out = [("batch", b, b, "closed") for b in batches]
    for f in rates:
        qps = float(f"{f * saturation:.4g}")
        out.append(("rate", qps, poisson_batch, f"poisson:{qps:g}"))
    return out


def retuned(path: str, s, label: str, ar_points: list, saturation: float, batches, rates, requests: int,
            poisson_batch: int, trials: int, folder: Path, max_tokens: int, seed: int, first: dict) -> tuple[list, list]:
    """The curves of one trace and setting with the single-depth and DEX winners searched again at every
    load point, once per metric with that metric as the objective, on the tuning half under that point's
    batch and arrivals; a point's metric is its own winner's on the held-out half (the tune replays
    each winner there, under the same load: the best each method reaches at that load for that metric).
    Tokens/s under Poisson arrivals is the offered load until a method saturates, and then its
    closed-loop rate at the cap, so the rate points take their tokens/s winner from the closed-loop
    search at `poisson_batch` rather than search it at every rate. A short search may miss what the
    batch-1 search found (`first`: method -> its winner), so that winner is timed on the tuning half
    under the point's load too and kept where it does better there. AR's points are `ar_points`: only
    their load points are re-tuned (all, or a subset). Returns (points, winners)."""
    trace = os.path.basename(path)
    points, found = list(ar_points), []
    ar = {(p["axis"], p["x"]): p for p in ar_points}
    capped = {}  # method -> (policy, params) of the closed-loop tokens/s search at the cap
    for axis, x, batch, arrival in load_points(sorted({*batches, poisson_batch}), rates, saturation, poisson_batch):
        if (axis, x) not in ar and not (axis == "batch" and x == poisson_batch):
            continue
        hw = HardwareConfig(gpu=GPU, pp=s.hw.pp, batch=batch)
        for method in FAMILIES:
            point = {**ar[axis, x], "method": method} if (axis, x) in ar else None
            config, rows = {}, []  # rows: the batch-1 winner timed on both halves under this load, once
            for metric, objective in OBJECTIVE.items():
                where = folder / f"{axis}-{x:g}" / f"{method}-{objective}"
                if axis == "rate" and objective == "tokens_per_s":
                    (policy, params), row = capped[method], timed(path, hw, where, arrival, requests, max_tokens, seed,
                                                                   *capped[method])
                    entry = {"held_out": {"value": row["tokens_per_s"], "speedup_vs_ar": row["speedup_vs_ar"]}}
                else:
                    _, (policy, params), entry = winner(path, hw, method, trials, where, max_tokens, seed, arrival,
                                                        requests, objective)
                    if tuning.config_key(*first[method]) != tuning.config_key(policy, params):
                        rows = rows or [timed(path, hw, where, arrival, requests, max_tokens, seed, *first[method],
                                              half=h) for h in (0, 1)]
                        sign = 1 if tuning.OBJECTIVES[objective][1] == "maximize" else -1
                        if sign * rows[0][metric] > sign * entry["in_sample"]["value"]:
                            (policy, params), entry = first[method], {"held_out": {
                                "value": rows[1][metric], "speedup_vs_ar": rows[1]["speedup_vs_ar"]}, "batch1": True}
                if axis == "batch" and x == poisson_batch and objective == "tokens_per_s":
                    capped[method] = (policy, params)
                config[metric] = registry.describe({"policy": policy, **_shown(params)})
                found.append({"trace": trace, "setting": label, "axis": axis, "x": x, "method": method,
                              "objective": objective, "policy": policy, "params": _shown(params),
                              "configuration": config[metric], "held_out": entry["held_out"]["value"],
                              "batch1_winner": entry.get("batch1", False)})
                if point is not None:
                    point[metric] = entry["held_out"]["value"]
                    if objective == "tokens_per_s":
                        point["speedup_vs_ar"] = entry["held_out"]["speedup_vs_ar"]
            if point is not None:
                point["configuration"] = config["tokens_per_s"] if len(set(config.values())) == 1 else "; ".join(
                    f"{SHORT[m]}: {c}" for m, c in config.items())
                points.append(point)
    return points, found


def timed(path: str, hw: HardwareConfig, folder: Path, arrival: str, requests: int, max_tokens: int, seed: int,
          policy: str, params: dict, half: int = 1) -> dict:
    """The sweep row of one configuration on the held-out half (`half` 1; 0: the tuning half) under this
    load, as a tune times its trials and winners."""
    cfg = tuning.TuneConfig(trace=path, scheduler="des", arrival=arrival, requests=requests, max_tokens=max_tokens,
                            seed=seed, out=str(folder))
    s = tuning.resolve(cfg.checked(), hw)
    spec = tuning.row_spec(s, policy, params, s.halves[half])
    return make_rows(spec, replayed([spec]), set(), {})[0]


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
    head = ["trace", "setting", "DEX vs"] + [f"{a} {SHORT[m]}" for a, m in cols]
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
    if "retuned" in result:
        write(out / "retuned", retuned_result(result))


def grown(path: str, seqs: int, folder: Path) -> str:
    """A synthetic trace with fewer than `seqs` sequences -> one of `seqs` sequences drawn from the same
    distribution (its `dexsim synth` arguments, from its meta) under the next seed, so the held-out
    half is not a few sequences cycled; written to `folder` once. Any other trace: `path` itself."""
    meta = load_trace(path).meta
    params = dict(meta.get("recorder", {}).get("params") or {})
    if not meta.get("synthetic") or "ead" not in params or params["n_seqs"] >= seqs:
        return path
    params.update(n_seqs=seqs, seed=params["seed"] + 1)
    out = folder / f"{Path(path).stem}-{seqs}seqs-seed{params['seed']}.npz"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        n, tokens = params.pop("n_seqs"), params.pop("tokens_per_seq")
        save_trace(synth_trace(meta["model"], n, tokens, heads=meta.get("heads", "lens"), **params), out)
    return str(out)


def run(traces, trials: int, batches, rates, requests: int | None, poisson_batch: int, out: Path,
        max_tokens: int = 32, seed: int = 0, log=print, retune_trials: int = 0, synth_seqs: int = 0,
        retune_batches=None, retune_rates=None) -> dict:
    """Every trace and setting's curves; with `retune_trials` > 0 also the curves re-tuned at every load
    point (`retuned`; only at `retune_batches` and `retune_rates`, subsets of the others, where given),
    under the result's "retuned" key; with `synth_seqs` a synthetic trace of fewer
    sequences is replaced by a larger one of the same distribution (`grown`)."""
    points, settings, kinds, again, found = [], [], {}, [], []
    for given in traces:
        path = grown(given, synth_seqs, out / "traces") if synth_seqs else given
        t = load_trace(path)
        kinds[os.path.basename(path)] = {"synthetic": bool(t.meta.get("synthetic")), "model": t.meta.get("model"),
                                         "heads": t.meta.get("heads", "lens"), "sequences": t.n_seqs,
                                         "sha256": t.meta["sha256"], "from": os.path.basename(given),
                                         "synth_params": t.meta.get("recorder", {}).get("params") if t.meta.get("synthetic") else None}
        for label, pp in SETTINGS.items():
            t0, load0 = time.perf_counter(), os.getloadavg()[0]
            folder = out / "tune" / f"{Path(path).stem}-pp{pp}"
            s, methods = winners(path, pp, trials, folder, max_tokens, seed)
            n = requests or max(len(s.halves[1]), 2 * max(batches))
            got, saturation = curves(s, methods, label, batches, rates, n, poisson_batch)
            points += got
            settings.append({"trace": os.path.basename(path), "setting": label, "gpu": GPU, "pp": pp,
                             "requests": n, "poisson_batch": poisson_batch, "ar_saturation_qps": saturation,
                             "held_out_sequences": len(s.halves[1]),
                             "methods": {m: {"policy": p, "params": _shown(q)} for m, (p, q) in methods.items()},
                             "seconds": time.perf_counter() - t0, "load": load0})
            log(f"{os.path.basename(path)} {label}: single {methods['single']}, dex {methods['dex']}, AR saturation {saturation:.3g} req/s, {time.perf_counter() - t0:.0f} s, load {load0:.1f}")
            if retune_trials:
                t1 = time.perf_counter()
                at = {(a, x) for a, x, _, _ in load_points(batches if retune_batches is None else retune_batches,
                                                           rates if retune_rates is None else retune_rates,
                                                           saturation, poisson_batch)}
                ar = [p for p in got if p["method"] == "ar" and (p["axis"], p["x"]) in at]
                pts, won = retuned(path, s, label, ar, saturation, batches, rates, n, poisson_batch, retune_trials,
                                   folder / "retune", max_tokens, seed, methods)
                again += pts
                found += won
                settings[-1]["retune_seconds"] = time.perf_counter() - t1
                log(f"{os.path.basename(path)} {label}: re-tuned at {len(pts) // 3} points, {time.perf_counter() - t1:.0f} s")
    result = {"gpu": GPU, "batches": list(batches), "rate_factors": list(rates), "max_tokens": max_tokens,
              "trials": trials, "seed": seed, "traces": kinds, "settings": settings, "points": points,
              "crossovers": crossovers(points)}
    if retune_trials:
        result["retuned"] = {"trials": retune_trials, "points": again, "crossovers": crossovers(again),
                             "winners": found, "batches": list(batches if retune_batches is None else retune_batches),
                             "rate_factors": list(rates if retune_rates is None else retune_rates)}
    return result


def retuned_result(result: dict) -> dict:
    """The re-tuned curves as a results file of their own (the same fields: `python -m viz load` plots it)."""
    r = result["retuned"]
    return {**{k: v for k, v in result.items() if k != "retuned"}, "points": r["points"],
            "crossovers": r["crossovers"], "winners": r["winners"], "retuned_trials": r["trials"]}


def compare(result: dict) -> str:
    """Each crossover with the batch-1 winners against the one re-tuned at every point, as a Markdown table."""
    again = {(c["trace"], c["setting"], c["versus"], c["axis"], c["metric"]): c for c in result["retuned"]["crossovers"]}
    lines = ["| trace | setting | DEX vs | axis | metric | batch-1 winners | re-tuned per point |", "|" + "---|" * 7]
    for c in result["crossovers"]:
        k = (c["trace"], c["setting"], c["versus"], c["axis"], c["metric"])
        cells = [_cell(c), _cell(again[k]) if k in again else "not re-tuned"]
        lines.append("| " + " | ".join([c["trace"].removesuffix(".npz"), c["setting"], c["versus"], c["axis"],
                                        SHORT[c["metric"]], *cells]) + " |")
    return "\n".join(lines)


def _cell(c: dict) -> str:
    if c["x"] is None:
        return "none in range" if "in range" in c["note"] else f"no gain ({c['advantage'][0]:+.0%})"
    return f"{c['x']:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=",".join(str(ROOT / t) for t in TRACES))
    ap.add_argument("--trials", type=int, default=100, help="trials of each search (single-depth; DEX)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="multiples of AR's saturation rate")
    ap.add_argument("--poisson-batch", type=int, default=max(BATCHES), help="most requests in flight under Poisson")
    ap.add_argument("--requests", type=int, default=None, help="requests per point (default: max(held-out "
                                                                 "sequences, 2 x the largest batch))")
    ap.add_argument("--retune", action="store_true", help="also search the single-depth and DEX winners again at "
                    "every load point, once per metric (written to OUT/retuned/)")
    ap.add_argument("--retune-trials", type=int, default=12, help="trials of each search at each load point")
    ap.add_argument("--retune-batches", default=None, help="re-tune at these batch sizes only (some of --batches)")
    ap.add_argument("--retune-rates", default=None, help="re-tune at these rates only (some of --rates)")
    ap.add_argument("--synth-seqs", type=int, default=SYNTH_SEQS, help="replace a synthetic trace of fewer sequences "
                    "by one of this many from the same distribution, next seed (0: use it as given)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default="results/load_curves")
    args = ap.parse_args()
    for flag, v, low in (("--retune-trials", args.retune_trials, 1), ("--synth-seqs", args.synth_seqs, 0)):
        if v < low:
            print(f"error: {flag} {v}: must be >= {low}", file=sys.stderr)
            raise SystemExit(2)
    batches, rates = [int(b) for b in args.batches.split(",")], [float(r) for r in args.rates.split(",")]
    subsets = {}
    for flag, text, full, kind in (("--retune-batches", args.retune_batches, batches, int),
                                   ("--retune-rates", args.retune_rates, rates, float)):
        try:
            vals = None if text is None else [kind(v) for v in text.split(",")]
        except ValueError:
            vals = []
        if vals is not None and (not vals or not set(vals) <= set(full)):
            print(f"error: {flag} {text}: must be some of {','.join(map(str, full))}", file=sys.stderr)
            raise SystemExit(2)
        subsets[flag[2:].replace("-", "_")] = vals
    out = Path(args.out)
    t0 = time.time()
    try:
        result = run(args.traces.split(","), args.trials, batches, rates, args.requests, args.poisson_batch, out,
                     args.max_tokens, retune_trials=args.retune_trials if args.retune else 0,
                     synth_seqs=args.synth_seqs, **subsets)
    except UserError as e:  # a bad trace, or an --out holding another setting's searches
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    result.update(command=" ".join(["python", *sys.argv]), machine=f"{platform.node()} ({os.cpu_count()} cores, "
                  f"{platform.processor() or platform.machine()})", date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
                  wall_s=time.time() - t0)
    write(out, result)
    for c in result["crossovers"]:
        print(f"{c['trace']:45s} {c['setting']:17s} {c['axis']:5s} {c['metric']:20s} vs {c['versus']:6s} "
              f"{'-' if c['x'] is None else format(c['x'], '.3g'):>7s}  {c['note']}")
    print(table(result))
    if "retuned" in result:
        print(table(retuned_result(result)))
        print(compare(result))
    print(out / "load_curves.json")


if __name__ == "__main__":
    main()
