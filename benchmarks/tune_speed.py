"""Speed of `python -m dexsim tune`: N trials on the ShareGPT trace, wall clock of the whole command
(compilation cached), with the machine's load beside it.

    python benchmarks/tune_speed.py [--trials 500] [--trace traces/smollm2-135m-lens-sharegpt-chat.npz]
        [--gpu a100-sxm4-80gb] [--jobs 1] [-- more tune flags]

The issue's goal: 500 trials in under 2 minutes on this 2-core machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--trace", default=str(ROOT / "traces/smollm2-135m-lens-sharegpt-chat.npz"))
    ap.add_argument("--gpu", default="a100-sxm4-80gb")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="more `dexsim tune` flags (after --)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-m", "dexsim", "tune", "--trace", args.trace, "--gpu", args.gpu, "--trials",
                str(args.trials), "--jobs", str(args.jobs), "--out", out, *args.extra]
        # a warm-up that compiles (or loads) the core, not timed
        subprocess.run([*argv[:-2], "--out", f"{out}/warm", "--trials", "2"], env=env, check=True,
                       capture_output=True)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        best = json.loads(Path(out, "best.json").read_text())
    t, r = best["trials"], best["replays"]
    print(f"{args.trials} trials ({t['pruned']} pruned) on {Path(args.trace).name}, {args.gpu}, --jobs {args.jobs}: "
          f"{wall:.1f} s wall, {r['search']} replays in the search; load before {load:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    for e in best["best"]:
        print(f"  {e['configuration']}: {e['in_sample']['speedup_vs_ar']:.3f}x vs ar in-sample, "
              f"{e['held_out']['speedup_vs_ar']:.3f}x held-out")


if __name__ == "__main__":
    main()
