"""The newcomer's first minute: `python -m dexsim sweep` on a machine that has never compiled the core.

    python benchmarks/first_run.py [--repeats 2] [--out results/first_run]

Each repeat runs the default sweep with an empty numba cache (a fresh NUMBA_CACHE_DIR): once as
shipped, once without the compile-ahead process (DEXSIM_COMPILE_AHEAD=0) and once without plots;
then the shipped sweep again on the now warm cache. Reports wall-clock and CPU seconds (this process's
children: the sweep, its workers, its compile-ahead process and its plotter), best of the repeats,
the machine and its load. Writes OUT/first_run.json.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dexsim.config import write_atomically  # noqa: E402

VARIANTS = {  # name -> (extra environment, extra flags)
    "cold": ({}, []),
    "cold, no compile-ahead": ({"DEXSIM_COMPILE_AHEAD": "0"}, []),
    "cold, no plots": ({}, ["--no-plots"]),
}


def timed(env: dict, flags: list, out: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dexsim", "sweep", "--out", out, *flags], env={**os.environ, **env},
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="results/first_run")
    args = ap.parse_args()
    runs = {name: [] for name in [*VARIANTS, "warm"]}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, (env, flags) in VARIANTS.items():
                cache = tempfile.mkdtemp(dir=tmp)
                runs[name].append(timed({**env, "NUMBA_CACHE_DIR": cache}, flags, f"{tmp}/sweep-{r}-{len(runs[name])}"))
                if name == "cold":
                    warm = cache
            runs["warm"].append(timed({"NUMBA_CACHE_DIR": warm}, [], f"{tmp}/warm-{r}"))
    best = {name: min(rs, key=lambda x: x["wall_s"]) for name, rs in runs.items()}
    for name, b in best.items():
        print(f"{name:24s} {b['wall_s']:6.2f} s wall  {b['cpu_s']:6.2f} CPU-s  (load {b['load']:.2f}; "
              f"all: {', '.join(str(x['wall_s']) for x in runs[name])})")
    result = {"command": " ".join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()})",
              "best": best, "runs": runs}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(args.out) / "first_run.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
