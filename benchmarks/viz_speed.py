"""Rendering speed of a lattice animation: a 40-round animation, end to end, as `viz animate` makes it.

    python benchmarks/viz_speed.py [--trace traces/synth-smollm2-135m-lens.npz] [--rounds 40] [--out DIR]

Times, for one panel (dex) and for three side by side (ar, layerskip, dex): the replay (the lattice
core until the rounds are done), rebuilding the frames from the event log, and rendering plus writing
the GIF (and the HTML player for the single panel). The issue's goal: under 20 s for 40 rounds.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dexsim.core.registry import make_policy  # noqa: E402
from dexsim.traces.format import load_trace  # noqa: E402
from viz import player, source  # noqa: E402
from viz.animate import lattice_figure  # noqa: E402
from viz.frames import build_frames  # noqa: E402
from viz.labels import TokenLabels  # noqa: E402


def bench(trace, names: list[str], rounds: int, out: str, ext: str) -> str:
    t0 = time.perf_counter()
    runs = []
    for name in names:
        policy = make_policy(name, trace.L)
        tokens = 1
        while True:  # enough tokens that the run lasts `rounds` rounds
            run = source.from_trace(trace, policy, 0, tokens)
            if run.lattice.round[0] >= rounds or tokens >= run.total_tokens:
                break
            tokens *= 2
        runs.append(run)
    t1 = time.perf_counter()
    frame_lists = [build_frames(r.events, trace.L, 0, rounds - 1) for r in runs]
    t2 = time.perf_counter()
    fig = lattice_figure(runs, frame_lists, TokenLabels(trace.vocab), title=f"{trace.path}  benchmark")
    player.write_animation(fig.render, fig.n_frames, fig.size, out, ext, fps=4)
    t3 = time.perf_counter()
    w, h = fig.size
    return (f"{'+'.join(names):>18} {ext:5} {fig.n_frames} frames {w}x{h}: {t3 - t0:6.2f} s "
            f"(replay {t1 - t0:.2f}, frames {t2 - t1:.3f}, render+write {t3 - t2:.2f}; "
            f"{(t3 - t2) / fig.n_frames * 1000:.0f} ms/frame) -> {os.path.getsize(out) / 1e6:.2f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_trace = Path(__file__).resolve().parent.parent / "traces" / "synth-smollm2-135m-lens.npz"
    ap.add_argument("--trace", default=str(default_trace))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", default=None, help="keep the files here (default: a temporary folder)")
    args = ap.parse_args()
    trace = load_trace(args.trace)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        print(f"{args.trace}: {args.rounds} rounds of sequence 0")
        print(bench(trace, ["dex"], args.rounds, str(out / "dex.gif"), ".gif"))
        print(bench(trace, ["dex"], args.rounds, str(out / "dex.html"), ".html"))
        print(bench(trace, ["ar", "layerskip", "dex"], args.rounds, str(out / "compare.gif"), ".gif"))


if __name__ == "__main__":
    main()
