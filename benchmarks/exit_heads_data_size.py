"""Does the depth headroom of trained exit heads keep growing with their training data?

Trains SmolLM2's rank-64 exit adapters (`python -m dexref train-exits`) on nested mixes of HumanEval
(raw), MT-bench and ShareGPT (chat) prompts of about 2.5k, 5k and 10k+ self-generated tokens, the
same steps each, and measures every run on the same held-out prompts (ones the traces of
traces/README.md record: the recorder refuses prompts an adapter set was trained on). The largest
run is the committed `traces/adapters/smollm2-135m-exits-r64-mix`; the others go to --out-dir. A run
whose held-out evaluation exists is not repeated, so a killed run resumes; the table is printed from
the `.eval.json` files.

    python benchmarks/exit_heads_data_size.py [--sizes 2.5k,5k,10k] [--out-dir .runs/curve]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "traces" / "adapters" / "smollm2-135m-exits-r64-mix.json"
# nested prefixes of the training split: HumanEval/100..163, MT-bench 60..79, ShareGPT 300..389
SIZES = {
    "2.5k": "humaneval[100:116],mtbench[60:65]@chat,sharegpt[300:322]@chat",
    "5k": "humaneval[100:132],mtbench[60:70]@chat,sharegpt[300:345]@chat",
    "10k": "humaneval[100:164],mtbench[60:80]@chat,sharegpt[300:390]@chat",
}
EVAL = "humaneval[0:12],mtbench[0:8]@chat,sharegpt[0:12]@chat"  # held out: recorded prompts
STEPS = 300


def command(data: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "dexref", "train-exits", "--model", "smollm2-135m", "--data", data,
            "--eval", EVAL, "--steps", str(STEPS), "--threads", "1", "--out", str(out)]


def out_path(size: str, out_dir: Path) -> Path:
    return COMMITTED if size == "10k" else out_dir / f"smollm2-135m-exits-r64-mix-{size}.json"


def table(sizes: list[str], out_dir: Path) -> str:
    rows = ["| training data | tokens | mean EAD: lens | trained | ceiling L / EAD: lens | trained "
            "| mean stable EAD: lens | trained | match at 9 / 18 / 24 / 27: lens | trained |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    held = None
    for size in sizes:
        man = out_path(size, out_dir)
        ev = json.loads(man.with_suffix(".eval.json").read_text())
        tokens = json.loads(man.read_text())["training"]["tokens"]
        lens, tr = ev["lens_at_trained"], ev["trained"]  # both at the trained depths and L
        held = tr["tokens"]
        at = lambda r: " / ".join(f"{dict(zip(r['depths'], r['match_rate']))[d]:.3f}" for d in (9, 18, 24, 27))  # noqa: E731
        rows.append(f"| {size}: `{SIZES[size]}` | {tokens:,} | {lens['mean_ead']:.2f} | {tr['mean_ead']:.2f} | "
                    f"{lens['ceiling_ead']:.3f}x | {tr['ceiling_ead']:.3f}x | {lens['mean_stable_ead']:.2f} | "
                    f"{tr['mean_stable_ead']:.2f} | {at(lens)} | {at(tr)} |")
    return "\n".join(rows) + f"\n\nHeld out: `{EVAL}`, {held:,} tokens; {STEPS} steps of 128 positions each."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help="which of " + ", ".join(SIZES))
    ap.add_argument("--out-dir", default=".runs/curve", help="where the runs other than the committed one go")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        man = out_path(size, out_dir)
        if man.with_suffix(".eval.json").is_file():
            continue
        cmd = command(SIZES[size], man)
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(table(sizes, out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
