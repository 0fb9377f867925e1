"""`python -m viz tune OUT`: a tune's best-so-far plot (OUT/tune_best.png): the best in-sample objective
after each trial, overall and per policy family, with the pruned trials marked."""
from __future__ import annotations

import json
from pathlib import Path

from dexsim.errors import UserError

from .output import check_dir, new_figure, save_png


def load_trials(folder: str) -> tuple[list[dict], dict]:
    """The trials and best.json of a tune folder; one line naming the file when one is missing or bad."""
    out = []
    for name in ("trials.json", "best.json"):
        path = Path(folder) / name
        try:
            out.append(json.loads(path.read_text()))
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror})") from None
        except ValueError:
            raise UserError(f"{path}: not JSON") from None
    trials, best = out
    if not isinstance(trials, list) or not all(isinstance(t, dict) and "number" in t and "value" in t for t in trials):
        raise UserError(f"{Path(folder) / 'trials.json'}: not a list of trials with number and value")
    return trials, best


def best_so_far(trials: list[dict], maximize: bool, title: str, ylabel: str):
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    trials = sorted((t for t in trials if t["value"] is not None), key=lambda t: t["number"])
    better = max if maximize else min
    for family in [None, *dict.fromkeys(t["policy"] for t in trials)]:
        xs, ys, best = [], [], None
        for t in trials:
            if t["state"] != "complete" or (family is not None and t["policy"] != family):
                continue
            best = t["value"] if best is None else better(best, t["value"])
            xs.append(t["number"])
            ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", lw=2.5 if family is None else 1.2, label=family or "all families")
    pruned = [t for t in trials if t["state"] == "pruned"]
    if pruned:
        ax.scatter([t["number"] for t in pruned], [t["value"] for t in pruned], s=8, c="0.6",
                   label="pruned (value on a prefix)")
    done = [t for t in trials if t["state"] == "complete"]
    ax.scatter([t["number"] for t in done], [t["value"] for t in done], s=8, c="0.2", label="complete")
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def tune_plot(folder: str) -> str:
    trials, best = load_trials(folder)
    setting = best.get("setting", {})
    objective = setting.get("objective", "tokens_per_s")
    maximize = objective == "tokens_per_s"
    title = (f"{setting.get('trace')} on {setting.get('gpu')} tp{setting.get('tp')} pp{setting.get('pp')} "
             f"b{setting.get('batch')} {setting.get('scheduler')}: best {objective} so far (in-sample)")
    ylabel = "simulated tokens/s" if maximize else f"{objective} token latency (s)"
    out = check_dir(folder, "RESULTS")
    return save_png(best_so_far(trials, maximize, title, ylabel), out / "tune_best.png")


def cmd_tune(args) -> int:
    print(tune_plot(args.results))
    return 0


def register(sub) -> None:
    p = sub.add_parser("tune", help="best-so-far plot of a `dexsim tune --out` folder")
    p.add_argument("results", help="a `dexsim tune --out` folder")
    p.set_defaults(func=cmd_tune)
