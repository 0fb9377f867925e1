"""`python -m viz trace PATH [PATH2]`: per-depth match rate and EAD histogram of one or two traces.

    python -m viz trace traces/synth-smollm2-135m-lens.npz [traces/other.npz] [--out depths.png]

Left: the fraction of tokens whose exit token at each recorded depth is already the final one.
Right: the EAD histogram (solid) and the stable-EAD histogram (outline), as fractions of tokens. Two
traces share both panels (say the logit lens against trained exit heads of one model); when their
models have different depths L, the x axis becomes the relative depth d / L so the curves compare.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dexsim.traces.analyze import analyze
from dexsim.traces.format import load_trace

from .output import check_out, new_figure, save_png

DPI = 110
FIGSIZE = (11.0, 4.2)


def _label(a: dict, path: str, others: list[dict]) -> str:
    label = f"{a['model']} heads={a['heads']}"
    if a["synthetic"]:
        label += " (synthetic)"
    if sum(o["model"] == a["model"] and o["heads"] == a["heads"] for o in others) > 1:
        label += f" [{Path(path).name}]"  # two traces alike: tell them apart by file
    return label


def trace_figure(paths: list[str]):
    stats = [analyze(load_trace(p)) for p in paths]
    relative = len({a["L"] for a in stats}) > 1
    fig = new_figure(*FIGSIZE, DPI)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.84, bottom=0.14, wspace=0.22)
    ax_match, ax_ead = fig.subplots(1, 2)
    for k, (a, path) in enumerate(zip(stats, paths)):
        color = f"C{k}"
        label = _label(a, path, stats)
        d = np.array(a["depths"], float)
        x = d / a["L"] if relative else d
        ax_match.plot(x, a["match_rate"], marker="o", ms=3, color=color, label=label)
        n = a["n_tokens"]
        ax_ead.step(x, np.array(a["ead_hist"]) / n, where="mid", color=color, lw=1.6,
                    label=f"EAD, mean {a['mean_ead']:.1f}" + (f" ({label})" if len(paths) > 1 else ""))
        ax_ead.step(x, np.array(a["stable_ead_hist"]) / n, where="mid", color=color, lw=1, ls="--",
                    label=f"stable EAD, mean {a['mean_stable_ead']:.1f}")
    xlabel = "relative depth d / L" if relative else f"exit depth d (layers, L = {stats[0]['L']})"
    ax_match.set_xlabel(xlabel)
    ax_match.set_ylabel("match rate (exit token = final token)")
    ax_match.set_ylim(0, 1.02)
    ax_match.set_title("per-depth match rate", fontsize=10)
    ax_match.legend(fontsize=7, frameon=False, loc="upper left")
    ax_ead.set_xlabel(xlabel)
    ax_ead.set_ylabel("fraction of tokens")
    ax_ead.set_title("earliest accurate depth (EAD) histogram", fontsize=10)
    ax_ead.legend(fontsize=7, frameon=False, loc="upper left")
    for ax in (ax_match, ax_ead):
        ax.grid(alpha=0.3)
    names = " vs ".join(Path(p).name for p in paths)
    fig.suptitle(f"{names}: {', '.join(str(a['n_tokens']) for a in stats)} tokens", fontsize=10)
    return fig


def default_out(paths: list[str]) -> str:
    return "-vs-".join(Path(p).stem for p in paths) + "-depths.png"


def cmd_trace(args) -> int:
    paths = [args.trace] + ([args.trace2] if args.trace2 else [])
    out = args.out or default_out(paths)
    check_out(out, (".png",))
    print(save_png(trace_figure(paths), out))
    return 0


def register(sub) -> None:
    p = sub.add_parser("trace", help="per-depth match rate and EAD histogram of a trace (two on one plot)")
    p.add_argument("trace", help="trace .npz")
    p.add_argument("trace2", nargs="?", default=None, help="a second trace on the same plot")
    p.add_argument("--out", default=None, help="PNG file (default: <trace>[-vs-<trace2>]-depths.png here)")
    p.set_defaults(func=cmd_trace)
