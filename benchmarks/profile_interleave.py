"""Why a profile, timing each part alone, prices an emulation too fast: one layer step (and one exit
head) timed call by call, back to back as `dexref profile` times them, and with other work between
the calls (untimed) as an emulation interleaves them: a host round's Python, 4 MB or 64 MB of memory
touched (more than the L2, more than the L3), an exit head (before a layer), a layer sweep (before a head).

    python benchmarks/profile_interleave.py            # this CPU, random SmolLM2-135M weights, fp32, 1 thread

Prints milliseconds per call (CPU clock, best of --repeats) and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _python_round():
    """Work like a core round's bookkeeping: a dict of slots, a few small numpy operations."""
    d = {i: (i, i + 1) for i in range(300)}
    a = np.arange(64)
    for _ in range(20):
        a = np.where(a > 3, a, 0) + 1
    return d, a


def main(argv=None) -> int:
    import torch

    from dexref.engine import TorchExecutor
    from dexref.load import load_shape
    from dexref.model import head
    from dexref.profile import _rows_at

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-135m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="1,4")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"load average before: {_load()}")
    model, _ = load_shape(argparse.Namespace(shape=args.shape, model=None, device="cpu", dtype=args.dtype,
                                             threads=args.threads), args.context + 64)
    torch.set_grad_enabled(False)
    L, D = model.args.n_layer, model.args.dim
    rows_grid = [int(r) for r in args.rows.split(",")]
    ex = TorchExecutor(model, [[0]], max(rows_grid) + 1, args.context + 8)
    l2, l3 = np.ones(2**20, np.float32), np.ones(16 * 2**20, np.float32)  # 4 MB, 64 MB
    x1 = torch.randn(1, D, dtype=model.dtype)
    between = {"back to back (as the profile times it)": None, "a host round's Python": _python_round,
               "4 MB touched (L2 evicted)": l2.sum, "64 MB touched (L3 evicted)": l3.sum,
               "one exit head of 1 row": lambda: head(model, x1)}

    def best_per_call(call, before, n):
        best = float("inf")
        for _ in range(args.repeats):
            total = 0.0
            for i in range(n):
                if before is not None:
                    before()
                t = time.process_time()
                call(i)
                total += time.process_time() - t
            best = min(best, total / n)
        return best

    for rows in rows_grid:
        lat = _rows_at(ex, rows, args.context)
        s, j = np.zeros(rows, np.int64), np.arange(rows)
        def layer(i, lat=lat, s=s, j=j, rows=rows):
            ex._round(lat, s, j, np.full(rows, i % L))
        base = None
        for label, before in between.items():
            t = best_per_call(layer, before, L)
            base = t if base is None else base
            print(f"layer step, {rows:2d} rows, context {args.context}: {label:<40} {t * 1e3:7.3f} ms ({t / base - 1:+6.1%})",
                  flush=True)
    lat1 = _rows_at(ex, 1, args.context)
    one = (np.zeros(1, np.int64), np.arange(1))

    def sweep():
        for i in range(L):
            ex._round(lat1, *one, np.full(1, i))
    base = None
    for label, before in (("back to back (as the profile times it)", None), ("after a sweep of the layers", sweep),
                          ("64 MB touched (L3 evicted)", l3.sum)):
        t = best_per_call(lambda i: head(model, x1), before, 4)
        base = t if base is None else base
        print(f"exit head, 1 row: {label:<40} {t * 1e3:7.3f} ms ({t / base - 1:+6.1%})", flush=True)
    print(f"load average after: {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
