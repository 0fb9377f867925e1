"""`python -m dexsim tune`: search every policy family for the best configuration on one trace and one
machine (dexsim/sweep/tune.py); prints each family's winner, in-sample and on the held-out half."""
from __future__ import annotations

import importlib.util
import sys
from functools import partial
from pathlib import Path

from tqdm import tqdm

from dexsim import config
from dexsim.core.params import PARAMS
from dexsim.hardware.pricing import HardwareConfig
from dexsim.sweep import tune as tuning
from dexsim.cli.sweep import plots_of


def cmd_tune(args) -> int:
    axes = {n: getattr(args, n) for n in tuning.axis_flags() if getattr(args, n) is not None}
    cfg = config.from_args(tuning.TuneConfig, args, axes=axes).checked()
    tuning.optuna_module()  # before any work: one line if optuna is missing
    setting = tuning.resolve(cfg, config.from_args(HardwareConfig, args))
    bar = partial(tqdm, desc="tune", unit="trial", file=sys.stderr, mininterval=0.5)
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        print("note: no best-so-far plot: matplotlib is not installed (pip install -e '.[viz]')", file=sys.stderr)
    with plots_of(cfg.out, "tune", plots):
        result = tuning.tune(setting, bar_factory=bar)
        out = Path(cfg.out)
        t, r = result["trials"], result["replays"]
        print(f"{t['complete'] + t['pruned']} trials ({t['pruned']} pruned) in {out / tuning.TRIALS_CSV} "
              f"(and {tuning.TRIALS_JSON}); {r['search']} replays in the search, {r['held_out']} on the held-out half")
        print(f"tuned on {len(result['halves']['tune'])} sequences, held out {len(result['halves']['held_out'])} "
              f"(--seed {cfg.seed}); objective {cfg.objective}")
        print(best_table(result["best"], cfg.objective))
        print(f"best per family in {out / tuning.BEST_JSON}")
    return 0


def best_table(entries: list[dict], objective: str) -> str:
    """Each family's winner: its objective and its speedups (tokens/s) over AR and over the best
    single-depth family, in-sample and on the held-out half."""
    head = ("policy", "best configuration", f"in-sample {objective}", f"held-out {objective}", "in-sample vs ar",
            "held-out vs ar", "in-sample vs single", "held-out vs single")
    lines = [head]
    for e in entries:
        i, h = e["in_sample"], e["held_out"]
        lines.append((e["policy"], e["configuration"], f"{i['value']:.6g}", f"{h['value']:.6g}",
                      f"{i['speedup_vs_ar']:.3f}x", f"{h['speedup_vs_ar']:.3f}x",
                      f"{i['vs_single']:.3f}x" if "vs_single" in i else "-",
                      f"{h['vs_single']:.3f}x" if "vs_single" in h else "-"))
    widths = [max(len(line[k]) for line in lines) for k in range(len(head))]
    fmt = lambda line: "  ".join(c.rjust(w) if k >= 2 else c.ljust(w) for k, (c, w) in enumerate(zip(line, widths)))
    single = next((e["single_reference"] for e in entries if "single_reference" in e), None)
    foot = [f"single: {single} (the best single-depth family in-sample)"] if single else []
    return "\n".join([fmt(head).rstrip(), "  ".join("-" * w for w in widths), *(fmt(x).rstrip() for x in lines[1:]),
                      *foot])


def register(sub) -> None:
    p = sub.add_parser("tune", help="search every policy family for the best configuration on a trace and a GPU")
    config.add_flags(p, tuning.TuneConfig)
    config.add_flags(p, HardwareConfig)
    for name, flag in tuning.axis_flags().items():
        param = PARAMS[name]
        p.add_argument(flag, dest=name, default=None,
                       help=f"search only these values of: {param.help}, comma-separated (default: all)")
    p.set_defaults(func=cmd_tune)
