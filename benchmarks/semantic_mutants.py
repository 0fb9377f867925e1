"""Semantic mutants: hand-written plausible bugs in the core, planted one at a time, and who kills them.

    python benchmarks/semantic_mutants.py [--jobs 1] [--only NAME,...] [--out results/semantic_mutants.json]

Each mutant is one text replacement in dexsim/core/lattice.py, dexsim/core/policies.py or
dexsim/replay/executor.py (a bug a developer could write: an off-by-one, the wrong node, a check
dropped, a rate or a rank gone wrong). For each, in a scratch copy of the project (.mutants/NAME/,
its compiled numba caches cleared so the mutant is what runs), the core's suites run under
`HYPOTHESIS_PROFILE=ci` (`SUITE`, in that order, stopping at the first failure), and then the code
group of `python -m proofs` (`proofs.code`: the real core checked against the proved rules; the
other groups never import dexsim, so a core mutant cannot change their verdicts). Verdicts:
`killed` (a test failed; the test and its error type are recorded: every kill should be an
assertion, not a crash), `survived`, `crashed`, `timeout`; `equivalent` mutants (argued in README)
are run all the same, and surviving is what they must do. Results go to a JSON file and a markdown
table, written after every mutant (a killed run keeps what it had; a new run resumes from them).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.path.join(ROOT, ".mutants")
SUITE = ["tests/core/test_core_properties.py", "tests/core/test_lattice.py", "tests/core/test_core_regression.py",
         "tests/core/test_lattice_stateful.py", "tests/core/test_registry.py",
         "tests/proofs/test_proofs_conformance.py"]
LAT, POL, REP = "dexsim/core/lattice.py", "dexsim/core/policies.py", "dexsim/replay/executor.py"
LIMIT_S = 900

# name, file, old text, new text, what the bug is, and (for an equivalent mutant) why it changes nothing
MUTANTS = [
    ("child_passes_stalled_parent", POL, "(p < 0 or pd > d or (pd == d and chosen[p]))", "(p < 0 or pd >= d)",
     "deep/confident: a child at its parent's depth moves although the parent does not (issue 20)", None),
    ("anchor_children_unchecked", POL, "(p < 0 or pd > d", "(p < 1 or pd > d",
     "the dependency check skipped for the anchor's children (issue 20's known survivor)", None),
    ("deep_ranked_like_confident", POL, "(st.spawn_depth[s, j] if deep else st.spawn_conf[s, j])",
     "st.spawn_conf[s, j]", "deep ranks branches by spawn confidence (issue 20's known survivor)", None),
    ("rank_ties_newest_first", POL, "while i > 0 and key[order[i - 1]] < key[j]:",
     "while i > 0 and key[order[i - 1]] <= key[j]:", "deep/confident break ties newest first", None),
    ("spawn_conf_from_child", LAT, "st.spawn_conf[s, c] = st.exit_conf[s, j]", "st.spawn_conf[s, c] = st.exit_conf[s, c]",
     "a child's spawn confidence read from the wrong node (0): confident becomes oldest-first (issue 20)", None),
    ("spawn_depth_from_child", LAT, "st.spawn_depth[s, c] = st.depth[s, j]", "st.spawn_depth[s, c] = st.depth[s, c]",
     "a child's spawn depth read from the wrong node", None),
    ("off_path_conf_zero", REP, "return tok, rx.exit_conf[row, c]", "return tok, np.float32(0.0)",
     "every off-path exit confidence 0: the replay leaks the truth (issue 20)", None),
    ("off_path_reads_the_truth", REP, "if st.tag[s, j] == ON_PATH and r < rx.length[s]:", "if r < rx.length[s]:",
     "off-path nodes read the true path's tokens and confidences (issue 20)", None),
    ("off_path_conf_wrong_depth", REP, "return tok, rx.exit_conf[row, c]", "return tok, rx.exit_conf[row, 0]",
     "off-path confidences drawn from the first recorded depth's distribution", None),
    ("off_path_changes_every_depth", REP, "if prev == NO_TOKEN or _uniform(h, 1) >= stay:", "if True:",
     "off-path tokens change at every exit depth, not at the true path's rate", None),
    ("on_path_child_wrong_row", REP, "on = st.token[s, j] == rx.final[rx.offset[s] + prow]",
     "on = st.token[s, j] == rx.final[rx.offset[s] + prow + 1]", "a spawn is judged on the true path by the wrong row",
     None),
    ("load_per_node_layer", LAT, "# one weight load per distinct layer in a round; its rows share it\n"
     "        if chosen[j] and _first_at_depth(st, s, chosen, j):",
     "# one weight load per distinct layer in a round; its rows share it\n        if chosen[j]:",
     "a weight load counted per node-layer, not per shared layer (issue 20)", None),
    ("context_off_by_one", LAT, "st.context[0] += (st.pos[s, j] + 1) * m", "st.context[0] += st.pos[s, j] * m",
     "a row's context length off by one (issue 20)", None),
    ("rounds_not_jumped", LAT, "st.rounds[s] += m\n", "st.rounds[s] += 1\n",
     "a jump of m rounds counted as one", None),
    ("head_rows_by_heads", LAT, "st.head_rows[k] += 1", "st.head_rows[k] += k",
     "the head-read histogram counts heads, not rounds", None),
    ("waste_off_by_one", LAT, "st.wasted_node_layers[s] += st.depth[s, j]",
     "st.wasted_node_layers[s] += st.depth[s, j] + 1", "a discarded node's waste counted one layer high", None),
    ("eos_ignored", LAT, "if st.tokens[s] >= st.max_tokens[s] or (st.eos != NO_TOKEN and y == st.eos):",
     "if st.tokens[s] >= st.max_tokens[s]:", "EOS does not stop a sequence (it runs to its limit) (issue 20)", None),
    ("buffer_not_enforced", LAT, "served[r] = n - 1 + r < buffer", "served[r] = n + r < buffer + 2",
     "the live-branch buffer B allows one more branch: overruns the compiled arrays (issue 20)", None),
    ("evict_deepest_leaf", LAT, "while i > 0 and st.spawn_depth[s, leaves[i - 1]] > st.spawn_depth[s, c]:",
     "while i > 0 and st.spawn_depth[s, leaves[i - 1]] < st.spawn_depth[s, c]:",
     "eviction takes the deepest-spawned leaf", None),
    ("evict_not_strict", LAT, "st.spawn_depth[s, leaves[nth]] < st.depth[s, js[r]]",
     "st.spawn_depth[s, leaves[nth]] <= st.depth[s, js[r]]", "eviction for a guess no deeper than the leaf", None),
    ("duplicate_sibling_kept", LAT, "if st.parent[s, c] == js[r] and st.token[s, c] == toks[r]:",
     "if st.parent[s, c] == js[r] and st.token[s, c] == toks[r] and c >= n:",
     "a guess equal to a live sibling's token is not dropped", None),
    ("collapse_to_first_child", LAT, "if st.parent[s, c] == 0 and st.token[s, c] == y:", "if st.parent[s, c] == 0:",
     "collapse keeps the anchor's first child, whatever its token", None),
    ("collapse_drops_grandchildren", LAT, "keep[c] = keep[st.parent[s, c]]", "keep[c] = False",
     "collapse keeps the matching child but discards its subtree", None),
    ("fallback_same_position", LAT, "_reset_root(st, s, y, old_pos + 1)", "_reset_root(st, s, y, old_pos)",
     "a fallback anchor at the old anchor's position", None),
    ("child_same_position", LAT, "st.pos[s, c] = st.pos[s, j] + 1", "st.pos[s, c] = st.pos[s, j]",
     "a child at its parent's position", None),
    ("commit_below_L", LAT, "while st.active[s] and st.depth[s, 0] == st.L:",
     "while st.active[s] and st.depth[s, 0] >= st.L - 1:", "the anchor commits one layer early", None),
    ("align_holds_too_long", POL, "return 1 if left_out else max(rest - dmin, 1)", "return max(rest - dmin, 1)",
     "lowest-layer-first jumps while a node at the lowest layer is left out",
     "a node left out at the lowest layer dmin sets `rest` to dmin, so max(rest - dmin, 1) is 1: the same hold"),
    ("eager_holds_too_long", POL, "return FOREVER if moved == everyone else 1\n    return _legal_greedy",
     "return FOREVER\n    return _legal_greedy", "eager jumps although some movable node was left out",
     "eager's choice is the first k nodes below L in slot order; in a jump no chosen node passes an exit depth "
     "(L is one) and the others do not move, so every round of it would choose the same nodes: the jump is "
     "the rounds stepping would take"),
    ("adaptive_guesses_again", POL, "return not st.guessed[s, j] and (", "return (",
     "adaptive guesses at every confident exit, not once per node", None),
    ("dex_at_L_no_child", POL, "        return d < L or j > 0", "        return d < L",
     "dex never expands a branch that reaches L (more fallbacks, still lossless; found held out, after "
     "the first run)", None),
    ("layerskip_guesses_deeper", POL, "return d == exit and exit < L", "return d >= exit and exit < L",
     "layerskip also guesses past its exit depth",
     "its exits are {e, L}, so the new guesses are at L; drafting stops only when the buffer is full, and then "
     "the anchor and every draft move layer-aligned to L together: a branch reads L with B branches live "
     "(LayerSkip never evicts) and its guess is refused; with B = 0 there are no branches"),
    ("replay_jumps_past_exits", REP, "m = min(m, st.next_exit[st.depth[s, j]] - st.depth[s, j])",
     "m = min(m, st.L - st.depth[s, j])", "the compiled replay jumps to L, past exit depths", None),
    ("replay_wants_unstored_conf", REP, "if wants_node(st, s, j, tok, st.exit_conf[s, j], pol):",
     "if wants_node(st, s, j, tok, conf, pol):", "the compiled replay asks the policy with the read's own "
     "confidence instead of the stored one",
     "read_node returns a float32 and store_exit stores it in a float32 array unchanged: the two values are "
     "the same number"),
]


def _copy(dst: str) -> None:
    """The project's tracked and untracked-but-not-ignored files (what git would commit), into dst."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    if os.path.exists(dst):
        shutil.rmtree(dst)
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
            shutil.copyfile(os.path.join(ROOT, f), os.path.join(dst, f))


def _plant(work: str, path: str, old: str, new: str) -> None:
    p = os.path.join(work, path)
    with open(p) as fh:
        text = fh.read()
    if text.count(old) != 1:
        raise SystemExit(f"mutant text found {text.count(old)} times in {path} (must be once): {old!r}")
    with open(p, "w") as fh:
        fh.write(text.replace(old, new))
    for cache in ("dexsim/__pycache__", "dexsim/core/__pycache__", "dexsim/replay/__pycache__"):
        shutil.rmtree(os.path.join(work, cache), ignore_errors=True)


def _env(work: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")}
    return {**env, "PYTHONPATH": work, "HYPOTHESIS_PROFILE": "ci", "PYTHONDONTWRITEBYTECODE": "1",
            "COLUMNS": "500"}  # wide enough that pytest's summary line keeps the error's type


PROOFS_CODE = """
import sys
from proofs.run import _call
from proofs.code import jobs
# up to the first failing run (which clause a mutant breaks, not how often); every policy first
for fn, args in sorted(jobs(), key=lambda job: not str(job[1][0]).startswith(("random", "1"))):
    bad = [r for r in _call(("code", fn, args)) if not r.ok]
    if bad:
        print("FAIL", bad[0].name)
        sys.exit(1)
"""


def run_one(m) -> dict:
    name, path, old, new, what, equivalent = m
    work = os.path.join(SCRATCH, name)
    _copy(work)
    _plant(work, path, old, new)
    env = _env(work)
    t = time.perf_counter()
    out = dict(name=name, file=path, what=what, equivalent=equivalent)
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", *SUITE],
                           cwd=work, env=env, capture_output=True, text=True, timeout=LIMIT_S)
        text = r.stdout + r.stderr
        failed = re.search(r"^FAILED (\S+)(?: - (\w+))?", text, re.M)
        if r.returncode == 0:
            out.update(verdict="survived", killed_by=None)
        elif failed:
            out.update(verdict="killed", killed_by=failed.group(1), error=failed.group(2))
        else:
            out.update(verdict="crashed", killed_by=None, tail=text[-1500:])
    except subprocess.TimeoutExpired:
        out.update(verdict="timeout", killed_by=None)
    out["suite_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", PROOFS_CODE], cwd=work, env=env, capture_output=True, text=True,
                           timeout=LIMIT_S)
        fails = [ln[5:] for ln in r.stdout.splitlines() if ln.startswith("FAIL ")]
        out["proofs"] = "killed" if r.returncode else "survived"
        out["proofs_first"] = fails[0] if fails else (None if r.returncode == 0 else r.stderr[-500:])
    except subprocess.TimeoutExpired:
        out["proofs"] = "timeout"
    out["proofs_s"] = round(time.perf_counter() - t, 1)
    shutil.rmtree(work, ignore_errors=True)
    return out


def table(rows) -> str:
    lines = ["| mutant | file | verdict | killed by | python -m proofs |", "|---|---|---|---|---|"]
    for r in rows:
        v = "equivalent (" + r["verdict"] + ")" if r.get("equivalent") else r["verdict"]
        by = f"{r['killed_by']} ({r.get('error')})" if r.get("killed_by") else "-"
        pf = r.get("proofs", "-")
        if pf == "killed":
            pf += ": " + str(r.get("proofs_first", "")).split(": ", 1)[-1][:120]
        lines.append(f"| {r['name']} | {r['file']} | {v} | {by} | {pf} |")
    return "\n".join(lines)


def save(rows, out: str) -> None:
    """The verdicts as JSON (replaced atomically) and as a markdown table beside it."""
    with open(out + ".tmp", "w") as fh:
        json.dump(rows, fh, indent=1)
    os.replace(out + ".tmp", out)
    with open(os.path.splitext(out)[0] + ".md", "w") as fh:
        fh.write(table(rows) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument("--only", default=None, help="comma-separated mutant names")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "semantic_mutants.json"))
    ap.add_argument("--fresh", action="store_true", help="judge the chosen mutants again (default: keep the "
                    "verdicts already in --out)")
    args = ap.parse_args()
    if args.jobs < 1:
        sys.exit("--jobs: must be >= 1")
    chosen = MUTANTS
    if args.only:
        want = args.only.split(",")
        unknown = sorted(set(want) - {m[0] for m in MUTANTS})
        if unknown:
            print(f"--only: unknown mutant {unknown[0]} (known: {', '.join(m[0] for m in MUTANTS)})", file=sys.stderr)
            sys.exit(2)
        chosen = [m for m in MUTANTS if m[0] in want]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = []  # resume: keep the verdicts recorded (those of the chosen mutants too, unless --fresh)
    if os.path.exists(args.out):
        with open(args.out) as fh:
            known = {m[0]: m for m in MUTANTS}
            redo = {m[0] for m in chosen} if args.fresh else set()
            rows = [r for r in json.load(fh) if r["name"] in known and r["name"] not in redo]
        for r in rows:  # what a mutant is and whether it is equivalent: as this file says now
            r["what"], r["equivalent"] = known[r["name"]][4], known[r["name"]][5]
        chosen = [m for m in chosen if m[0] not in {r["name"] for r in rows}]
    order = {m[0]: i for i, m in enumerate(MUTANTS)}
    t = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(run_one, chosen):
            rows = sorted(rows + [row], key=lambda r: order[r["name"]])
            print(f"{row['name']:<32} {row['verdict']:<9} {row.get('killed_by') or '-'}  proofs: {row.get('proofs')}"
                  f"  ({row['suite_s']}s + {row['proofs_s']}s)", flush=True)
            save(rows, args.out)
    save(rows, args.out)
    bad = [r for r in rows if (r["verdict"] != "killed") != bool(r.get("equivalent"))]
    print(f"{len(rows)} mutants, {sum(r['verdict'] == 'killed' for r in rows)} killed by an assertion or error, "
          f"{sum(r.get('proofs') == 'killed' for r in rows)} by python -m proofs, "
          f"{len(bad)} not as expected, {time.perf_counter() - t:.0f}s")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
