"""Mutation score of the lattice core: the share of mutants the test suite kills.

    python benchmarks/mutation_score.py [--max-children N] [--sample N] [--seed S]

Runs mutmut (configured in pyproject.toml [tool.mutmut]: the whole core, dexsim/core/ and the replay
executor, against the core's suites: tests/core/, the proofs' conformance and the cost properties) with the
Hypothesis `mutation` profile (few, derandomized examples), then
prints the score and lists the surviving mutants (`mutmut show NAME` in .mutation/ prints one). All
mutants take hours on two cores; `--sample N` runs a uniform random sample of N of them (a score
estimate, with its standard error), on top of any already judged.

mutmut never mutates a decorated function, and the core's rules are all `@njit`: so it runs on a
copy of the project in .mutation/ whose rules are undecorated, with NUMBA_DISABLE_JIT=1 (under which
`njit` is the identity anyway: the same code, run as Python, and no compile per mutant).
"""
import argparse
import collections
import math
import os
import random
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, ".mutation")
RULES = ("dexsim/core/lattice.py", "dexsim/core/policies.py", "dexsim/replay/executor.py")


def _copy_project() -> None:
    """The tracked files into WORK (mutmut's state there is kept), the rules' @njit lines dropped."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        dst = os.path.join(WORK, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, f), dst)
    for f in RULES:
        path = os.path.join(WORK, f)
        with open(path) as fh:
            lines = [ln for ln in fh if ln.strip() != "@njit(cache=True)"]
        with open(path, "w") as fh:
            fh.writelines(lines)


def _mutmut(env, *args):
    subprocess.run(["mutmut", *args], cwd=WORK, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)


def _results(env) -> list[tuple[str, str]]:
    out = subprocess.run(["mutmut", "results", "--all", "true"], cwd=WORK, env=env, capture_output=True,
                         text=True).stdout
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^\s*(\S+): (\w[\w ]*)$", out, re.M)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sample", type=int, default=0, help="run only this many randomly chosen mutants")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    _copy_project()
    # The hash's uint64 multiplies warn as they wrap, as plain Python.
    env = {**os.environ, "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "mutation"),
           "NUMBA_DISABLE_JIT": "1", "PYTHONWARNINGS": "ignore::RuntimeWarning"}
    names = []
    if args.sample:
        # `mutmut run` with a name that matches nothing generates the mutants and runs none
        _mutmut(env, "run", "--max-children", "1", "none-such-mutant")
        pending = [n for n, st in _results(env) if st == "not checked"]
        names = random.Random(args.seed).sample(pending, min(args.sample, len(pending)))
    _mutmut(env, "run", "--max-children", str(args.max_children), *names)
    results = _results(env)
    status = collections.Counter(st for _, st in results)
    survivors = [n for n, st in results if st == "survived"]
    judged = status["killed"] + status["survived"] + status["timeout"]
    if not judged:
        sys.exit(f"no mutants judged (run `mutmut run` in {WORK} to see why)")
    killed = status["killed"] + status["timeout"]
    p = killed / judged
    print(f"mutants: {dict(status)}")
    print(f"mutation score: {killed}/{judged} = {p:.1%} killed (timeouts count as killed; "
          f"standard error {math.sqrt(p * (1 - p) / judged):.1%} if these are a sample)")
    for name in survivors:
        print(f"survived: {name}")


if __name__ == "__main__":
    main()
