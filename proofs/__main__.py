"""`python -m proofs [--json] [--quiet] [--workers N]`: run every obligation, one line each.

Each line: verdict, seconds, group, name. Verdicts that pass: `proved` (an obligation, or a bounded
check, for which Z3 found no counterexample), `sat` (a vacuity witness exists), `refuted` (a mutant:
Z3 found a counterexample trace, printed under it). Anything else (`counterexample`, `unknown`,
`vacuous`, `survived`, `error`) is a failure, printed with its details. Exit status 0 only if every
line passes.
"""
from __future__ import annotations

import json
import os
import sys
import time

from dexsim import config
from dexsim.errors import UserError

from .run import run_all


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise UserError(f"--workers {text!r}: expected a positive integer") from None
    cpus = os.cpu_count() or 1
    if not 1 <= n <= cpus:
        raise UserError(f"--workers {n}: must be in [1, {cpus}] (this machine's CPUs: each worker is a process)")
    return n


def build_parser() -> config.Parser:
    ap = config.Parser(prog="python -m proofs", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON array of results instead of lines")
    ap.add_argument("--quiet", action="store_true", help="do not print the mutants' counterexample traces")
    ap.add_argument("--workers", type=_workers, default=2, help="worker processes (default 2)")
    ap.set_defaults(func=run)
    return ap


def main(argv=None) -> int:
    """Bad flags: one line on stderr and exit status 2, as in every CLI here (dexsim.config.run)."""
    return config.run(build_parser, argv)


def run(args) -> int:
    t = time.perf_counter()

    def show(r):
        if args.json:
            return
        print(r.line(), flush=True)
        if r.detail and (not r.ok or (r.group == "mutant" and not args.quiet)):
            print(r.detail, flush=True)

    results = run_all(args.workers, show)
    total = time.perf_counter() - t
    bad = [r for r in results if not r.ok]
    if args.json:
        json.dump(dict(ok=not bad, seconds=round(total, 2), results=[r.as_json() for r in results]), sys.stdout,
                  indent=1)
        print()
    else:
        print(f"{len(results) - len(bad)}/{len(results)} as expected, {len(bad)} failed, {total:.1f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
