"""Do two revisions give the same results? For refactorings, which must not change any.

    python benchmarks/same_results.py --base REV [--head DIR] [--quick]

Checks out REV in a temporary git worktree and runs, in it and in --head (default: this working tree),
each through its own `python -m ...` (the current directory comes first on the import path):

- the default sweep (`python -m dexsim sweep`): sweep.csv and sweep.json, byte for byte;
- `replay --json` for every policy on every bundled trace, unpriced, priced on a 4-stage pipeline, and
  (on the small traces) under the DES with a closed and a Poisson load;
- `replay --events` for every policy on two traces: the event log arrays and their metadata;
- `python -m proofs --json`: every check's verdict (Z3's counterexample traces and the seconds vary
  from run to run, so they are not compared).

Prints one line per differing output and `same: N outputs` or `differ: N of M outputs`; exit status 1
if anything differs. The figures of a run sit in OUT/base and OUT/head (--keep).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("ar", "layerskip", "adaptive", "oracle-select", "dex")
POLICY_FLAGS = {"dex": ["-k", "4", "--buffer", "8", "--priority", "deep"], "adaptive": ["--threshold", "0.8"]}
EXIT_STRIDE = {"dex": 2, "adaptive": 1, "oracle-select": 1}  # every n-th recorded depth (and L), named explicitly
SMALL = ("smollm2-135m-lens-humaneval-raw.npz", "smollm2-135m-trained-humaneval-raw.npz",
         "synth-smollm2-135m-lens.npz")
EVENT_TRACES = ("smollm2-135m-lens-humaneval-raw.npz", "synth-llama2-7b-eetrained-every4.npz")


def commands(tree: Path, quick: bool) -> dict[str, list[str]]:
    """name -> argv, every output to compare."""
    traces = sorted(p.name for p in (tree / "traces").glob("*.npz"))
    out = {"sweep": ["-m", "dexsim", "sweep", "--out", "{out}/sweep", "--jobs", "2"]}
    for t in traces:
        if quick and t not in SMALL:
            continue
        with np.load(tree / "traces" / t) as z:
            depths = z["depths"].tolist()
        for pol in POLICIES:
            base = ["-m", "dexsim", "replay", "--trace", f"traces/{t}", "--policy", pol, "--json",
                    *POLICY_FLAGS.get(pol, [])]
            if pol in EXIT_STRIDE:  # depths the trace recorded (some traces record a few only)
                base += ["--exits", ",".join(map(str, sorted(set(depths[::EXIT_STRIDE[pol]]) | {depths[-1]})))]
            out[f"replay {t} {pol}"] = base
            out[f"replay {t} {pol} a100 pp4"] = base + ["--gpu", "a100-sxm4-80gb", "--pp", "4"]
            if t in SMALL:
                out[f"replay {t} {pol} des closed"] = base + ["--gpu", "h100-sxm5-80gb", "--pp", "4",
                                                              "--scheduler", "des", "--batch", "4"]
                out[f"replay {t} {pol} des poisson"] = base + ["--gpu", "l4-24gb", "--pp", "2", "--scheduler",
                                                               "des", "--arrival", "poisson:20", "--batch", "8"]
            if t in EVENT_TRACES and pol != "oracle-select":
                out[f"events {t} {pol}"] = base + ["--events", f"{{out}}/events-{t}-{pol}.npz"]
    out["proofs"] = ["-m", "proofs", "--json", "--quiet"]
    return out


def run_all(tree: Path, out: Path, quick: bool) -> dict[str, str]:
    """name -> a canonical text of that output, run in `tree`."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    texts = {}
    for name, argv in commands(tree, quick).items():
        argv = [a.replace("{out}", str(out)) for a in argv]
        r = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            texts[name] = f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
            continue
        if name == "sweep":
            texts[name] = "".join((out / "sweep" / f).read_text() for f in ("sweep.csv", "sweep.json"))
        elif name == "proofs":
            texts[name] = r.stdout
        elif name.startswith("events"):
            texts[name] = _events_text(Path(argv[argv.index("--events") + 1]), tree) + r.stdout
        else:
            texts[name] = r.stdout
        (out / (name.replace(" ", "_").replace("/", "_") + ".txt")).write_text(texts[name])
    return texts


def canonical(name: str, text: str | None):
    """What must not change of an output: all of it, but of the proofs only each check's verdict (Z3's
    counterexamples and timings vary from run to run)."""
    if name != "proofs" or text is None or text.startswith("exit "):
        return text
    return [(r["group"], r["name"], r["verdict"], r["ok"]) for r in json.loads(text)["results"]]


def _events_text(path: Path, tree: Path) -> str:
    with np.load(path) as z:
        ev, meta = z["events"], json.loads(str(z["meta"]))
    return json.dumps(meta, sort_keys=True) + "\n" + "\n".join(map(str, ev.tolist()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the revision to compare against (e.g. a commit before the change)")
    ap.add_argument("--head", default=str(ROOT), help="the tree to check (default: this working tree)")
    ap.add_argument("--quick", action="store_true", help="replays on the small traces only")
    ap.add_argument("--keep", default=None, help="keep the outputs in this folder")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="same-results-"))
    base_tree = work / "base-tree"
    if base_tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
                   check=True, capture_output=True)
    try:
        saved = work / "base" / "outputs.json"  # a kept base run of the same revision is reused
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.base], capture_output=True, text=True).stdout
        if saved.is_file() and json.loads(saved.read_text()).get("rev") == rev:
            base = json.loads(saved.read_text())["outputs"]
        else:
            base = run_all(base_tree, work / "base", args.quick)
            saved.write_text(json.dumps({"rev": rev, "outputs": base}))
        head = run_all(Path(args.head), work / "head", args.quick)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    names = list(dict.fromkeys([*base, *head]))
    bad = [n for n in names if canonical(n, base.get(n)) != canonical(n, head.get(n))]
    for n in bad:
        print(f"differs: {n}")
    print(f"same: {len(names)} outputs" if not bad else f"differ: {len(bad)} of {len(names)} outputs")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
