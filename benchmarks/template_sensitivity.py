"""Does the gain depend on the prompt template? Every bundled pair of traces of the same prompts, one
recorded raw and one with the chat template, side by side: depth statistics and tuned best speedups.

    python benchmarks/template_sensitivity.py [--trials 100] [--seeds 0,1,2] [--settings 'pp4 des,1 GPU lockstep']
        [--traces 'traces/*-raw.npz'] [--out results/template_sensitivity]

A pair is `X-raw.npz` and `X-chat.npz` in the same folder; both must hold the same prompt ids (checked:
`meta.recorder.params.prompt_ids`). For each template: `analyze` at the depths both files recorded
(`analyze.compare`: mean EAD, ceiling L / mean EAD, mean stable EAD, match rate per depth), and, per
hardware setting and seed, `tune` (dexsim/sweep/tune.py, `--trials` trials): DEX's best and the best
single-depth family's (LayerSkip or adaptive, chosen in-sample), each as a speedup over AR on the half
of the sequences the search saw and on the held-out half. The seed draws the halves (and the sampler):
the table shows the mean over seeds and, for held-out figures, their range, so a difference between
templates can be read against the spread that the split alone makes. Writes OUT/template_sensitivity.json (a run
that is stopped continues where it left: finished rows are kept) and prints a markdown table.
"""
import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dexsim.hardware.pricing import HardwareConfig  # noqa: E402
from dexsim.sweep import tune as tuning  # noqa: E402
from dexsim.sweep.grid import loaded  # noqa: E402
from dexsim.sweep.store import replace_file  # noqa: E402
from dexsim.traces.analyze import compare  # noqa: E402

SETTINGS = {"pp4 des": ({"gpu": "a100-sxm4-80gb", "pp": 4}, "des"),
            "1 GPU lockstep": ({"gpu": "a100-sxm4-80gb"}, "lockstep")}
TEMPLATES = ("raw", "chat")


def fail(message: str):
    """Bad input: one line on stderr, exit status 2."""
    print(message, file=sys.stderr)
    sys.exit(2)


def pairs(patterns: str) -> list[tuple[str, str]]:
    """(raw file, chat file) for every X-raw.npz matched whose X-chat.npz exists beside it."""
    out = []
    for raw in dict.fromkeys(p for pattern in patterns.split(",") for p in sorted(glob.glob(pattern))):
        if raw.endswith("-raw.npz") and os.path.exists(raw[:-len("-raw.npz")] + "-chat.npz"):
            out.append((raw, raw[:-len("-raw.npz")] + "-chat.npz"))
    return out


def prompt_ids(path: str, template: str) -> list:
    """The prompt ids a recorded file holds, checked to be recorded with `template`."""
    meta = loaded(path).meta
    if meta.get("template") != template:
        fail(f"{path}: meta.template is {meta.get('template')!r}, not {template!r}")
    ids = meta.get("recorder", {}).get("params", {}).get("prompt_ids")
    if not ids:
        fail(f"{path}: no meta.recorder.params.prompt_ids (not a recorded trace)")
    return ids


def depth_figures(raw: str, chat: str) -> dict:
    """Per template, the analyze figures at the depths both files recorded."""
    if prompt_ids(raw, "raw") != prompt_ids(chat, "chat"):
        fail(f"{chat}: its prompt ids differ from {raw}'s; not a template pair")
    r = compare(loaded(raw), loaded(chat))
    keep = ("heads", "synthetic", "n_seqs", "n_tokens", "mean_ead", "ceiling_ead", "mean_stable_ead",
            "ceiling_stable_ead", "match_rate")
    return {"depths": r["depths"], "same_final": r["same_final"],
            **{t: {k: r[side][k] for k in keep} for t, side in zip(TEMPLATES, "ab")}}


def tune_once(path: str, label: str, trials: int, seed: int, policies: str, out: Path) -> list[dict]:
    """best.json's per-family entries of one tune of `policies`."""
    hw, sched = SETTINGS[label]
    cfg = tuning.TuneConfig(trace=path, policies=policies, scheduler=sched, trials=trials, seed=seed, out=str(out))
    return tuning.tune(tuning.resolve(cfg.checked(), HardwareConfig(**hw)))["best"]


def best_of(entries: list[dict], single_depth: bool) -> dict | None:
    """DEX's entry, or the best single-depth family's (chosen in-sample), if the tune completed one."""
    found = [e for e in entries if e["single_depth"] == single_depth]
    return max(found, key=lambda e: e["in_sample"]["value"]) if found else None


def tuned(path: str, label: str, trials: int, seed: int, out: Path) -> dict:
    """DEX's and the best single-depth family's tuned speedups over AR, in-sample and held out. One tune
    searches every family; where it completed no trial of one side (the median pruner stops every DEX
    trial when DEX loses to AR everywhere, as on one device), a tune of that side alone, same seed and
    so the same halves, gives its best."""
    t0, load = time.perf_counter(), os.getloadavg()[0]
    entries = tune_once(path, label, trials, seed, ",".join(tuning.families()), out)
    picked, alone = {}, []
    for side, single, policies in (("dex", False, "dex"), ("single", True, "layerskip,adaptive")):
        picked[side] = best_of(entries, single)
        if picked[side] is None:
            picked[side] = best_of(tune_once(path, label, trials, seed, policies, Path(f"{out}-{side}")), single)
            alone.append(side)
    ratio = {p: picked["dex"][p]["tokens_per_s"] / picked["single"][p]["tokens_per_s"]
             for p in ("in_sample", "held_out")}
    return {side: {"configuration": e["configuration"], "tuned_alone": side in alone,
                   **{p: {"speedup_vs_ar": e[p]["speedup_vs_ar"], "tokens_per_s": e[p]["tokens_per_s"],
                          **({"vs_single": ratio[p]} if side == "dex" else {})} for p in ("in_sample", "held_out")}}
            for side, e in picked.items()} | {"tune_s": time.perf_counter() - t0, "load": load}


def spread(values: list[float]) -> str:
    """Mean over seeds, with the range when there are several."""
    mean = sum(values) / len(values)
    return f"{mean:.3f}x" if len(values) == 1 else f"{mean:.3f}x ({min(values):.3f}-{max(values):.3f})"


def alone(tuned: list[dict], side: str) -> str:
    """A mark where some seed's figure came from a tune of that side alone (see `tuned`)."""
    n = sum(t[side].get("tuned_alone", False) for t in tuned)
    return f" [{n} of {len(tuned)} tuned alone]" if n else ""


def table(rows: list[dict]) -> str:
    """One line per trace and setting: its depth figures, and its tuned speedups over the seeds."""
    head = ("| prompts | heads | template | tokens | mean EAD | L / mean EAD | setting | DEX in-sample | DEX held-out "
            "| best single-depth in-sample | single held-out | DEX / single, held-out |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    groups = {}
    for r in rows:
        groups.setdefault((r["trace"], r["setting"]), []).append(r)
    for group in groups.values():
        r, f = group[0], group[0]["figures"]
        t = [g["tuned"] for g in group]
        lines.append(f"| {r['pair']} | {f['heads'].split(':')[0]} | {r['template']} | {f['n_tokens']:,} "
                     f"| {f['mean_ead']:.2f} | {f['ceiling_ead']:.3f}x | {r['setting']} "
                     f"| {spread([g['dex']['in_sample']['speedup_vs_ar'] for g in t])}{alone(t, 'dex')} "
                     f"| {spread([g['dex']['held_out']['speedup_vs_ar'] for g in t])} "
                     f"| {spread([g['single']['in_sample']['speedup_vs_ar'] for g in t])}{alone(t, 'single')} "
                     f"| {spread([g['single']['held_out']['speedup_vs_ar'] for g in t])} "
                     f"| {spread([g['dex']['held_out']['vs_single'] for g in t])} |")
    return "\n".join(lines)


def match_table(rows: list[dict]) -> str:
    """Match rate per depth (the exit token already the final one), each trace once."""
    once = list({r["trace"]: r for r in rows}.values())
    if not once:
        return ""
    depths = once[0]["depths"][:-1]
    lines = ["| match at depth | " + " | ".join(map(str, depths)) + " |", "|---|" + "---|" * len(depths)]
    for r in once:
        rates = r["figures"]["match_rate"][:len(depths)]
        lines.append(f"| {r['pair']}, {r['template']} | " + " | ".join(f"{m:.3f}" for m in rates) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated tune seeds (each draws its own halves)")
    ap.add_argument("--traces", default=str(ROOT / "traces/*-raw.npz"), help="comma-separated globs of X-raw.npz")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="results/template_sensitivity")
    args = ap.parse_args()
    labels = args.settings.split(",")
    for label in labels:
        if label not in SETTINGS:
            fail(f"--settings: {label!r} is not one of {', '.join(SETTINGS)}")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        fail(f"--seeds {args.seeds!r}: must be comma-separated integers")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = out / "template_sensitivity.json"
    rows = json.loads(result.read_text()) if result.exists() else []
    seen = {(r["trace"], r["trace_sha256"], r["setting"], r["trials"], r["seed"]) for r in rows}
    found = pairs(args.traces)
    if not found:
        fail(f"--traces {args.traces}: no X-raw.npz with an X-chat.npz beside it")
    for raw, chat in found:
        figures = depth_figures(raw, chat)
        pair = Path(raw).name[:-len("-raw.npz")]
        for template, path in zip(TEMPLATES, (raw, chat)):
            sha = loaded(path).meta["sha256"]
            for label in labels:
                for seed in seeds:
                    if (Path(path).name, sha, label, args.trials, seed) in seen:
                        continue
                    folder = out / f"{Path(path).stem}-{label.replace(' ', '_')}-seed{seed}"
                    row = {"pair": pair, "template": template, "trace": Path(path).name, "trace_sha256": sha,
                           "setting": label, "trials": args.trials, "seed": seed, "depths": figures["depths"],
                           "same_final_across_templates": figures["same_final"], "figures": figures[template],
                           "tuned": tuned(path, label, args.trials, seed, folder)}
                    rows.append(row)
                    replace_file(result, json.dumps(rows, indent=1) + "\n")
                    t = row["tuned"]
                    print(f"{row['trace']:48s} {label:15s} seed {seed}  DEX {t['dex']['in_sample']['speedup_vs_ar']:.3f}x "
                          f"(held-out {t['dex']['held_out']['speedup_vs_ar']:.3f}x, {t['dex']['configuration']})  "
                          f"single {t['single']['in_sample']['speedup_vs_ar']:.3f}x (held-out "
                          f"{t['single']['held_out']['speedup_vs_ar']:.3f}x, {t['single']['configuration']})  "
                          f"{t['tune_s']:.0f} s, load {t['load']:.1f}", flush=True)
    paths = {Path(p).name: p for both in found for p in both}
    shown = [r for r in rows if r["trials"] == args.trials and r["setting"] in labels and r["seed"] in seeds
             and r["trace"] in paths and r["trace_sha256"] == loaded(paths[r["trace"]]).meta["sha256"]]
    shown.sort(key=lambda r: (labels.index(r["setting"]), r["pair"], TEMPLATES.index(r["template"]), r["seed"]))
    print(table(shown))
    print()
    print(match_table(shown))


if __name__ == "__main__":
    main()
