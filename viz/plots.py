"""`python -m viz sweep DIR`: PNG plots of a sweep's results (`dexsim sweep`, dexsim/sweep/).

    python -m viz sweep results/ [--out results/plots] [--traces 'traces/*.npz']

`sweep_plots(results_dir)` is the function behind it (and behind `dexsim sweep --plots`). Per trace
(and model) it writes:

- `throughput_vs_explorers-<trace>.png`: DEX's simulated tokens/s against the explorer count k, one
  panel per GPU configuration, one line per (exit set, priority, buffer), with `ar` and the best
  single-depth policy (layerskip, adaptive, oracle-select) on the same hardware as reference lines;
- `speedup_heatmap-<trace>.png`: the best speedup over `ar` of each policy (rows) on each GPU
  configuration (columns);
- `ead-<trace>.png`: the trace's EAD and stable-EAD histograms, when the trace file can be found
  (beside the results, in ./traces, beside the package, or in --traces) with the checksum the rows name.

Rows are read from sweep.json, sweep.jsonl or sweep.csv, whichever is there first; columns other than
the ones used here are ignored, and only lossless rows (`output_matches_trace`) are plotted. Throughput
and p99 latency against load come with the discrete-event simulator's results: no such columns yet.
"""
from __future__ import annotations

import csv
import glob
import json
import re
import sys
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from dexsim.config import usable_cpus
from dexsim.core import registry
from dexsim.sweep.rows import column_types, field_problem
from dexsim.traces.analyze import analyze
from dexsim.errors import UserError
from dexsim.traces.format import load_trace

from .output import check_dir, new_figure, save_all

DPI = 110
PANEL_W, PANEL_H = 4.6, 3.6  # inches per throughput panel
RESULT_FILES = ("sweep.json", "sweep.jsonl", "sweep.csv")


# ---------------------------------------------------------------------------- reading results

def _convert(text: str):
    """A CSV cell as the JSON files would hold it."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_rows(results: str) -> tuple[list[dict], Path]:
    """The result rows of a sweep folder (or of one results file) and the file they came from."""
    p = Path(results)
    if p.is_dir():
        found = [p / f for f in RESULT_FILES if (p / f).is_file()]
        if not found:
            raise UserError(f"{results}: no sweep results here (expected one of {', '.join(RESULT_FILES)})")
        p = found[0]
    elif not p.is_file():
        raise UserError(f"{results}: no such folder or file")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{p}: line {line}: not UTF-8 text") from None
    try:
        if p.suffix == ".json":
            rows = json.loads(text)
        elif p.suffix == ".jsonl":
            # a sweep killed mid-write may leave a torn last line: the sweep drops it too
            rows = [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]
        elif p.suffix == ".csv":
            rows = [{k: _convert(v) for k, v in r.items()} for r in csv.DictReader(text.splitlines())]
        else:
            raise UserError(f"{p}: expected a .json, .jsonl or .csv results file")
    except ValueError as e:
        raise UserError(f"{p}: not valid {p.suffix[1:]} ({e})") from None
    except RecursionError:
        raise UserError(f"{p}: not valid {p.suffix[1:]} (nested too deeply)") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{p}: expected a list of result rows")
    need = {"trace", "policy", "gpu", "tokens_per_s", "speedup_vs_ar"}
    if rows and not need <= rows[0].keys():
        missing = ", ".join(sorted(need - rows[0].keys()))
        raise UserError(f"{p}: result rows lack column(s) {missing}")
    _check_types(rows, p)
    return rows, p


def _check_types(rows: list[dict], p: Path) -> None:
    """Every known column a row holds has a sweep row's type (null allowed: plots skip unpriced rows),
    as a CSV can hold it (text that reads as a number, a list as its text)."""
    types = {k: t + ((int, float) if str in t else ()) + ((str,) if list in t else ())
             for k, t in column_types().items()}
    for i, r in enumerate(rows):
        for name, value in r.items():
            problem = name in types and value is not None and field_problem(name, value, types[name])
            if problem:
                raise UserError(f"{p}: row {i + 1}: {problem}")


def _usable(rows: list[dict]) -> list[dict]:
    """Priced, lossless rows."""
    return [r for r in rows if r.get("tokens_per_s") is not None and r.get("speedup_vs_ar") is not None
            and r.get("output_matches_trace", True) is not False]


def hw_label(r: dict) -> str:
    extra = [f"{k}{r[k]}" for k in ("tp", "pp", "batch") if r.get(k) not in (None, 1)]
    return " ".join([str(r["gpu"]), *extra])


def _groups(rows: list[dict]) -> dict:
    """Rows by (trace, model), keeping the order of first appearance."""
    out: dict[tuple, list] = {}
    for r in rows:
        out.setdefault((r["trace"], r.get("model")), []).append(r)
    return out


def _slug(trace: str, model, unique_traces: bool) -> str:
    name = re.sub(r"\.npz$", "", str(trace))
    if not unique_traces and model:
        name += f"-{model}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _series_label(r: dict) -> str:
    parts = [f"E={r.get('exits')}"]
    if r.get("priority"):
        parts.append(str(r["priority"]))
    if r.get("buffer") is not None:
        parts.append(f"B={r['buffer']}")
    return " ".join(parts)


# ---------------------------------------------------------------------------- the plots

def throughput_vs_explorers(rows: list[dict], title: str):
    """One panel per GPU configuration: dex tokens/s against k; ar and best single-depth as lines."""
    configs = list(dict.fromkeys(hw_label(r) for r in rows))
    dex = [r for r in rows if r["policy"] == "dex" and r.get("explorers") is not None]
    if not dex:
        return None
    is_dex = {id(r) for r in dex}
    n = len(configs)
    fig = new_figure(PANEL_W * n, PANEL_H + 0.9, DPI)
    fig.subplots_adjust(left=0.75 / (PANEL_W * n), right=1 - 0.15 / (PANEL_W * n), wspace=0.35,
                        top=1 - 0.55 / (PANEL_H + 0.9), bottom=1.0 / (PANEL_H + 0.9))
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.suptitle(title, fontsize=10)
    for ax, cfg in zip(axes, configs):
        here = [r for r in rows if hw_label(r) == cfg]
        series: dict[str, list] = {}
        for r in (r for r in here if id(r) in is_dex):
            series.setdefault(_series_label(r), []).append((r["explorers"], r["tokens_per_s"]))
        for label, pts in series.items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, lw=1.2, label=f"dex {label}")
        ar = [r["tokens_per_s"] for r in here if r["policy"] == "ar"]
        if ar:
            ax.axhline(max(ar), color="black", lw=1, ls="--", label="ar")
        single = [r for r in here if r["policy"] in registry.REGISTRY and registry.get(r["policy"]).single_depth]
        if single:
            best = max(single, key=lambda r: r["tokens_per_s"])
            ax.axhline(best["tokens_per_s"], color="#d62728", lw=1, ls=":",
                       label=f"best single-depth ({best['policy']})")
        ks = sorted({r["explorers"] for r in here if id(r) in is_dex})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("explorers k")
        ax.set_ylabel("simulated tokens/s")
        ax.set_title(cfg, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    return fig


def speedup_heatmap(rows: list[dict], title: str):
    """Best speedup over ar per policy (rows) and GPU configuration (columns)."""
    configs = list(dict.fromkeys(hw_label(r) for r in rows))
    policies = [p for p in registry.names() if any(r["policy"] == p for r in rows)]
    policies += sorted({r["policy"] for r in rows} - set(policies))
    grid = np.full((len(policies), len(configs)), np.nan)
    best_of = {}
    for r in rows:
        key = (policies.index(r["policy"]), configs.index(hw_label(r)))
        if key not in best_of or r["tokens_per_s"] > best_of[key]["tokens_per_s"]:
            best_of[key] = r
    for (i, j), r in best_of.items():
        grid[i, j] = r["speedup_vs_ar"]
    w, h = 1.6 + 1.35 * len(configs), 1.3 + 0.45 * len(policies)
    fig = new_figure(w, h, DPI)
    fig.subplots_adjust(left=1.3 / w, right=1 - 0.9 / w, top=1 - 0.55 / h, bottom=0.65 / h)
    ax = fig.subplots()
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    # diverging around 1x: blue faster than ar, red slower
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 0.999), vmax=max(hi, 1.001))
    im = ax.imshow(grid, cmap="RdBu", norm=norm, aspect="auto")
    ax.set_xticks(range(len(configs)), configs, fontsize=8, rotation=15)
    ax.set_yticks(range(len(policies)), policies, fontsize=8)
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}x", ha="center", va="center", fontsize=8,
                    color="white" if abs(norm(v) - 0.5) > 0.35 else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
    cb.set_label("speedup vs ar (x)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("GPU configuration", fontsize=8)
    return fig


def ead_histograms(trace, title: str):
    """EAD and stable-EAD histograms of a trace, as fractions of its tokens per recorded depth."""
    a = analyze(trace)
    depths = np.array(a["depths"])
    n = a["n_tokens"]
    fig = new_figure(7.5, 4.0, DPI)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.86, bottom=0.14)
    ax = fig.subplots()
    width = 0.4 * (np.min(np.diff(depths)) if len(depths) > 1 else 1)
    ax.bar(depths - width / 2, np.array(a["ead_hist"]) / n, width, label=f"EAD (mean {a['mean_ead']:.1f})")
    ax.bar(depths + width / 2, np.array(a["stable_ead_hist"]) / n, width,
           label=f"stable EAD (mean {a['mean_stable_ead']:.1f})")
    ax.set_xlabel(f"exit depth (layers, L = {a['L']})")
    ax.set_ylabel("fraction of tokens")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return fig


# ---------------------------------------------------------------------------- finding traces

def _trace_candidates(results_file: Path, extra: list[str]) -> list[Path]:
    here = results_file.parent
    dirs = [here, here.parent, Path("traces"), Path(__file__).resolve().parent.parent / "traces"]
    paths = [Path(p) for pattern in extra for p in sorted(glob.glob(pattern))]
    for d in dirs:
        if d.is_dir():
            paths += sorted(d.glob("*.npz"))
    return list(dict.fromkeys(p.resolve() for p in paths))


def find_trace(name: str, sha256, candidates: list[Path]):
    """The trace file a row names (by base name), with the checksum the row carries if it carries one."""
    for p in candidates:
        if p.name != name:
            continue
        try:
            t = load_trace(str(p))
        except UserError:
            continue
        if sha256 is None or t.meta.get("sha256") == sha256:
            return t
    return None


# ---------------------------------------------------------------------------- the entry point

def sweep_plots(results_dir, out=None, *, traces: list[str] | None = None, notes: list | None = None,
                procs: int = 1) -> list[str]:
    """Write the plots of a sweep folder (or results file) to `out` (default: <results folder>/plots).
    Returns the paths written; `notes`, if given, collects one line per plot that could not be made;
    `procs` processes draw them."""
    notes = [] if notes is None else notes
    rows, src = load_rows(str(results_dir))
    out_dir = check_dir(str(out) if out is not None else str(src.parent / "plots"), "--out")
    usable = _usable(rows)
    if not usable:
        notes.append(f"{src}: no priced, lossless rows to plot")
        return []
    groups = _groups(usable)
    unique_traces = len({t for t, _ in groups}) == len(groups)
    candidates = _trace_candidates(src, traces or [])
    figures, why_not = [], []  # (path, make) and the note if make() draws nothing
    for (trace, model), rs in groups.items():
        slug = _slug(trace, model, unique_traces)
        name = f"{str(trace).removesuffix('.npz')} ({model})"
        figures.append((out_dir / f"throughput_vs_explorers-{slug}.png", partial(
            throughput_vs_explorers, rs, f"{name}: DEX throughput vs explorers (lockstep, simulated)")))
        why_not.append(f"{name}: no dex rows, no throughput-vs-explorers plot")
        figures.append((out_dir / f"speedup_heatmap-{slug}.png",
                        partial(speedup_heatmap, rs, f"{name}: best speedup vs ar per policy and GPU")))
        why_not.append(None)
    for trace in dict.fromkeys(t for t, _ in groups):
        sha = next((r.get("trace_sha256") for r in usable if r["trace"] == trace), None)
        t = find_trace(str(trace), sha, candidates)
        if t is None:
            notes.append(f"{trace}: trace file not found (with the sweep's checksum); no EAD histogram "
                         f"(pass --traces GLOB)")
            continue
        kind = "synthetic" if t.meta.get("synthetic") else "recorded"
        title = f"{str(trace).removesuffix('.npz')}: EAD and stable EAD ({t.meta.get('model')}, " \
                f"heads {t.meta.get('heads')}, {kind}, {t.n_tokens} tokens)"
        figures.append((out_dir / f"ead-{_slug(trace, None, True)}.png", partial(ead_histograms, t, title)))
        why_not.append(None)
    paths = save_all(figures, procs)
    notes.extend(note for path, note in zip(paths, why_not) if path is None)
    return [p for p in paths if p is not None]


def cmd_sweep(args) -> int:
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    notes: list[str] = []
    paths = sweep_plots(args.results, args.out, traces=args.traces.split(",") if args.traces else None,
                        notes=notes, procs=args.jobs)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for p in paths:
        print(p)
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="PNG plots of a sweep's results folder")
    p.add_argument("results", help="a `dexsim sweep --out` folder (or its sweep.json/.jsonl/.csv)")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: RESULTS/plots)")
    p.add_argument("--traces", default=None,
                   help="comma-separated globs of the swept trace files, for the EAD histograms "
                        "(default: looked for beside the results, in ./traces and beside the package)")
    p.add_argument("--jobs", type=int, default=usable_cpus(),
                   help="processes drawing the plots (default: the usable CPUs)")
    p.set_defaults(func=cmd_sweep)
