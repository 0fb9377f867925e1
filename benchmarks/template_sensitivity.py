"""Does the gain depend on the prompt template? Every bundled pair of traces of the same prompts, one
recorded raw and one with the chat template, side by side: depth statistics and tuned best speedups.

    python benchmarks/template_sensitivity.py [--trials 100] [--settings 'pp4 des,1 GPU lockstep']
        [--traces 'traces/*-raw.npz'] [--out results/template_sensitivity]

A pair is `X-raw.npz` and `X-chat.npz` in the same folder; both must hold the same prompt ids (checked:
`meta.recorder.params.prompt_ids`). For each template: `analyze` at the depths both files recorded
(`analyze.compare`: mean EAD, ceiling L / mean EAD, mean stable EAD, match rate per depth), and, per
hardware setting, `tune` (dexsim/sweep/tune.py, `--trials` trials, seed 0): DEX's best and the best
single-depth family's (LayerSkip or adaptive, chosen in-sample), each as a speedup over AR on the half
of the sequences the search saw and on the held-out half. Writes OUT/template_sensitivity.json (a run
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

SETTINGS = {"pp4 des": (dict(gpu="a100-sxm4-80gb", pp=4), "des"),
            "1 GPU lockstep": (dict(gpu="a100-sxm4-80gb"), "lockstep")}
TEMPLATES = ("raw", "chat")


def pairs(patterns: str) -> list[tuple[str, str]]:
    """(raw file, chat file) for every X-raw.npz matched whose X-chat.npz exists beside it."""
    out = []
    for raw in dict.fromkeys(p for pattern in patterns.split(",") for p in sorted(glob.glob(pattern))):
        if raw.endswith("-raw.npz") and os.path.exists(raw[:-len("-raw.npz")] + "-chat.npz"):
            out.append((raw, raw[:-len("-raw.npz")] + "-chat.npz"))
    return out


def prompt_ids(path: str) -> list:
    return loaded(path).meta["recorder"]["params"]["prompt_ids"]


def depth_figures(raw: str, chat: str) -> dict:
    """Per template, the analyze figures at the depths both files recorded."""
    if prompt_ids(raw) != prompt_ids(chat):
        sys.exit(f"{chat}: its prompt ids differ from {raw}'s; not a template pair")
    r = compare(loaded(raw), loaded(chat))
    keep = ("heads", "synthetic", "n_seqs", "n_tokens", "mean_ead", "ceiling_ead", "mean_stable_ead",
            "ceiling_stable_ead", "match_rate")
    return {"depths": r["depths"], "same_final": r["same_final"],
            **{t: {k: r[side][k] for k in keep} for t, side in zip(TEMPLATES, "ab")}}


def tuned(path: str, label: str, trials: int, out: Path) -> dict:
    """DEX's and the best single-depth family's tuned speedups over AR, in-sample and held out."""
    hw, sched = SETTINGS[label]
    cfg = tuning.TuneConfig(trace=path, scheduler=sched, trials=trials, out=str(out))
    s = tuning.resolve(cfg.checked(), HardwareConfig(**hw))
    t0, load = time.perf_counter(), os.getloadavg()[0]
    best = tuning.tune(s)["best"]
    singles = [e for e in best if e["single_depth"]]
    dex = next(e for e in best if e["policy"] == "dex")
    single = max(singles, key=lambda e: e["in_sample"]["value"])
    pick = ("speedup_vs_ar", "vs_single")
    return {"dex": {"configuration": dex["configuration"], **{p: {k: dex[p][k] for k in pick}
                                                              for p in ("in_sample", "held_out")}},
            "single": {"configuration": single["configuration"],
                       **{p: {"speedup_vs_ar": single[p]["speedup_vs_ar"]} for p in ("in_sample", "held_out")}},
            "tune_s": time.perf_counter() - t0, "load": load}


def table(rows: list[dict]) -> str:
    head = ("| prompts, heads | template | tokens | mean EAD | L / mean EAD | setting | DEX in-sample | held-out "
            "| best single-depth in-sample | held-out | DEX / single (held-out) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        f, t = r["figures"], r["tuned"]
        lines.append(f"| {r['pair']}, {f['heads']} | {r['template']} | {f['n_tokens']:,} | {f['mean_ead']:.2f} "
                     f"| {f['ceiling_ead']:.3f}x | {r['setting']} | {t['dex']['in_sample']['speedup_vs_ar']:.3f}x "
                     f"| {t['dex']['held_out']['speedup_vs_ar']:.3f}x "
                     f"| {t['single']['in_sample']['speedup_vs_ar']:.3f}x ({t['single']['configuration']}) "
                     f"| {t['single']['held_out']['speedup_vs_ar']:.3f}x | {t['dex']['held_out']['vs_single']:.3f} |")
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
    ap.add_argument("--traces", default=str(ROOT / "traces/*-raw.npz"), help="comma-separated globs of X-raw.npz")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="results/template_sensitivity")
    args = ap.parse_args()
    labels = args.settings.split(",")
    for label in labels:
        if label not in SETTINGS:
            sys.exit(f"--settings: {label!r} is not one of {', '.join(SETTINGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = out / "template_sensitivity.json"
    rows = json.loads(result.read_text()) if result.exists() else []
    seen = {(r["trace"], r["setting"], r["trials"]) for r in rows}
    found = pairs(args.traces)
    if not found:
        sys.exit(f"--traces {args.traces}: no X-raw.npz with an X-chat.npz beside it")
    for raw, chat in found:
        figures = depth_figures(raw, chat)
        pair = Path(raw).name[:-len("-raw.npz")]
        for template, path in zip(TEMPLATES, (raw, chat)):
            for label in labels:
                if (Path(path).name, label, args.trials) in seen:
                    continue
                folder = out / f"{Path(path).stem}-{label.replace(' ', '_')}"
                row = {"pair": pair, "template": template, "trace": Path(path).name,
                       "trace_sha256": loaded(path).meta["sha256"], "setting": label, "trials": args.trials,
                       "depths": figures["depths"], "figures": figures[template],
                       "tuned": tuned(path, label, args.trials, folder)}
                rows.append(row)
                replace_file(result, json.dumps(rows, indent=1) + "\n")
                t = row["tuned"]
                print(f"{row['trace']:48s} {label:15s} DEX {t['dex']['in_sample']['speedup_vs_ar']:.3f}x "
                      f"(held-out {t['dex']['held_out']['speedup_vs_ar']:.3f}x)  single "
                      f"{t['single']['in_sample']['speedup_vs_ar']:.3f}x (held-out "
                      f"{t['single']['held_out']['speedup_vs_ar']:.3f}x)  {t['tune_s']:.0f} s, load {t['load']:.1f}",
                      flush=True)
    order = {(Path(r).name, Path(c).name): i for i, (r, c) in enumerate(found)}
    shown = [r for r in rows if r["trials"] == args.trials and r["setting"] in labels
             and any(r["trace"] in k for k in order)]
    shown.sort(key=lambda r: (labels.index(r["setting"]), r["pair"], TEMPLATES.index(r["template"])))
    print(table(shown))
    print()
    print(match_table(shown))


if __name__ == "__main__":
    main()
