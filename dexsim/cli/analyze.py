"""`python -m dexsim analyze`: depth statistics of a trace (dexsim/traces/analyze.py)."""
from __future__ import annotations

import json

from dexsim.traces.analyze import analyze, compare, format_compare, format_table
from dexsim.traces.format import load_trace


def run(args) -> int:
    trace = load_trace(args.trace)
    if args.vs:
        result = compare(trace, load_trace(args.vs))
        print(json.dumps(result, indent=2) if args.json else format_compare(result))
        return 0
    result = analyze(trace)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def register(subparsers):
    p = subparsers.add_parser("analyze", help="depth statistics of a trace: match rates, EAD, speedup ceilings")
    p.add_argument("--trace", required=True, help="trace .npz")
    p.add_argument("--vs", default=None, help="a second trace of the same prompts (e.g. trained exit heads): "
                                              "both side by side at their common depths")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)
