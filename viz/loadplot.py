"""`python -m viz load RESULTS.json`: where the gains vanish under load (benchmarks/load_curves.py).

One PNG per trace and setting, `load-<trace>-<setting>.png`: throughput, p50 and p99 token latency
(columns) against batch size (closed loop) and Poisson arrival rate (rows), for AR, the best
single-depth method and the best DEX; the crossovers (where DEX's advantage over AR or over the
single-depth method reaches zero) as vertical lines on their panel.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from dexsim.errors import UserError

from .output import check_dir, new_figure, save_png

DPI = 100
PANEL_W, PANEL_H = 4.2, 3.2  # inches per panel
METRICS = (("tokens_per_s", "simulated tokens/s", 1.0), ("p50_token_latency_s", "p50 token latency (ms)", 1e3),
           ("p99_token_latency_s", "p99 token latency (ms)", 1e3))
AXES = (("batch", "batch size (closed loop, as many clients)"), ("rate", "Poisson arrivals (requests/s)"))
STYLE = {"ar": ("0.2", "o"), "single": ("tab:blue", "s"), "dex": ("tab:red", "^")}
VERSUS = {"ar": ("0.2", "--"), "single": ("tab:blue", ":")}
_NUMBER = (int, float)
POINT_FIELDS = {"trace": (str,), "setting": (str,), "axis": (str,), "x": _NUMBER, "method": (str,),
                "configuration": (str,), **{m: _NUMBER for m, _, _ in METRICS}}
CROSS_FIELDS = {"trace": (str,), "setting": (str,), "axis": (str,), "metric": (str,), "versus": (str,),
                "x": _NUMBER + (type(None),), "note": (str,)}


def _check(items, fields: dict, where: str) -> list[dict]:
    if not isinstance(items, list):
        raise UserError(f"{where}: not a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{where}[{i}]: not a JSON object")
        for name, types in fields.items():
            v = item.get(name, ...)
            if v is ... or not isinstance(v, types) or isinstance(v, bool):
                raise UserError(f"{where}[{i}]: field {name}: missing or not {'a number' if types[0] is int else 'text'}")
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"{where}[{i}]: field {name}: {v} is not a result")
        if item["axis"] not in dict(AXES):
            raise UserError(f"{where}[{i}]: field axis: {item['axis']!r} is not batch or rate")
    return items


def load_results(path: str) -> dict:
    """A load_curves.json, checked: one line naming the file and field when it is missing or bad."""
    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError:
        raise UserError(f"{path}: not JSON (expected benchmarks/load_curves.py's load_curves.json)") from None
    if not isinstance(data, dict) or "points" not in data:
        raise UserError(f"{path}: no points (expected benchmarks/load_curves.py's load_curves.json)")
    points = _check(data["points"], POINT_FIELDS, f"{path}: points")
    if not points:
        raise UserError(f"{path}: points: empty")
    for i, pt in enumerate(points):
        if pt["method"] not in STYLE:
            raise UserError(f"{path}: points[{i}]: field method: {pt['method']!r} is not one of {', '.join(STYLE)}")
        if pt["x"] <= 0:
            raise UserError(f"{path}: points[{i}]: field x: {pt['x']} must be > 0 (a batch size or a rate)")
    _check(data.get("crossovers", []), CROSS_FIELDS, f"{path}: crossovers")
    if not isinstance(data.get("traces", {}), dict):
        raise UserError(f"{path}: traces: not a JSON object")
    return data


def _kind(info) -> str:
    if not isinstance(info, dict):
        return ""
    return "synthetic" if info.get("synthetic") else f"real, {info.get('heads', 'lens')} heads"


def load_figure(data: dict, trace: str, setting: str):
    points = [p for p in data["points"] if (p["trace"], p["setting"]) == (trace, setting)]
    cross = [c for c in data.get("crossovers", []) if (c["trace"], c["setting"]) == (trace, setting)]
    fig = new_figure(PANEL_W * len(METRICS), PANEL_H * len(AXES) + 0.8, DPI)
    for r, (axis, xlabel) in enumerate(AXES):
        for c, (metric, ylabel, scale) in enumerate(METRICS):
            ax = fig.add_subplot(len(AXES), len(METRICS), r * len(METRICS) + c + 1)
            for method, (color, marker) in STYLE.items():
                pts = sorted((p for p in points if p["axis"] == axis and p["method"] == method), key=lambda p: p["x"])
                if pts:
                    ax.plot([p["x"] for p in pts], [p[metric] * scale for p in pts], color=color, marker=marker,
                            ms=4, lw=1.4, label=_label(method, pts, data))
            for x in cross:
                if x["axis"] == axis and x["metric"] == metric and x["x"] is not None and x["versus"] in VERSUS:
                    color, style = VERSUS[x["versus"]]
                    ax.axvline(x["x"], color=color, ls=style, lw=1.1, label=f"DEX = {x['versus']} at {x['x']:.3g}")
            ax.set_xscale("log", base=2 if axis == "batch" else 10)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=5.5)
    kind = _kind(data.get("traces", {}).get(trace))
    best = "re-tuned at each point" if data.get("retuned_trials") else "tuned at batch 1"
    fig.suptitle(f"{trace} ({kind})\non {setting}, {data.get('gpu', '')}: AR, best single-depth, best DEX ({best})"
                 if kind else f"{trace} on {setting}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def _label(method: str, pts: list, data: dict) -> str:
    """A method's legend entry: its configuration, or, re-tuned, that it is one per point (and metric)."""
    configs = {p["configuration"] for p in pts}
    if len(configs) > 1 or (data.get("retuned_trials") and method != "ar"):
        return f"{method}: re-tuned at each point ({len(configs)} configurations)"
    return f"{method}: {pts[0]['configuration']}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def load_plots(results: str, out: str | None = None) -> list[str]:
    data = load_results(results)
    folder = check_dir(out or str(Path(results).parent / "plots"), "--out")
    paths = []
    for trace, setting in dict.fromkeys((p["trace"], p["setting"]) for p in data["points"]):
        name = f"load-{_slug(Path(trace).stem)}-{_slug(setting)}.png"
        paths.append(save_png(load_figure(data, trace, setting), folder / name))
    return paths


def cmd_load(args) -> int:
    for path in load_plots(args.results, args.out):
        print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("load", help="throughput and p50/p99 latency against batch and arrival rate "
                                    "(benchmarks/load_curves.py)")
    p.add_argument("results", help="a load_curves.json")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: plots/ beside RESULTS)")
    p.set_defaults(func=cmd_load)
