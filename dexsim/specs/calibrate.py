"""Measure this machine for the `cpu-local` device: a short numpy microbenchmark (a few seconds).

Achieved memory bandwidth (large array copy and sum), fp32 matmul FLOP/s (numpy has no bf16 path) and
the dispatch time of one tiny op (the fixed cost of each op in an eager layer), with efficiencies of 1
(the rates are achieved, not peak). The result is a measured profile (`dex-profile/1`,
dexsim/specs/profile.py) holding these `rates` only; `python -m dexref profile` writes the same
format with the rates and its measured tables. `catalog.gpus()` overlays the profile in the user
cache (either kind) on the bundled `cpu-local` entry.
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dexsim.config import physical_memory, write_atomically
from dexsim.errors import UserError
from dexsim.specs.catalog import cpu_profile_path
from dexsim.specs.profile import FORMAT

# Large enough to defeat every cache level of a server CPU, small enough to allocate quickly.
_STREAM_BYTES = 256 * 2**20
_MATMUL_N = 1024
_TINY_N = 64


def _best_rate(work, amount: float, budget_s: float, min_reps: int = 3) -> float:
    """Best amount/second of `work()` over repetitions until the budget is spent (the best run is least disturbed)."""
    best, start, reps = 0.0, time.perf_counter(), 0
    while reps < min_reps or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        work()
        best = max(best, amount / max(time.perf_counter() - t0, 1e-12))
        reps += 1
    return best


def memory_bandwidth(budget_s: float) -> float:
    """Achieved B/s: the better of a copy (read + write) and a sum (read) over a large array."""
    src = np.ones(_STREAM_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy = _best_rate(lambda: np.copyto(dst, src), 2 * src.nbytes, budget_s / 2)
    read = _best_rate(lambda: src.sum(), src.nbytes, budget_s / 2)
    return max(copy, read)


def matmul_flops(budget_s: float) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((_MATMUL_N, _MATMUL_N), dtype=np.float32)
    b = rng.standard_normal((_MATMUL_N, _MATMUL_N), dtype=np.float32)
    return _best_rate(lambda: a @ b, 2 * _MATMUL_N**3, budget_s)


def op_overhead(budget_s: float) -> float:
    """Seconds of one tiny op (a 1-row matmul): the per-op cost that does not scale with bytes."""
    x = np.ones((1, _TINY_N), dtype=np.float32)
    w = np.ones((_TINY_N, _TINY_N), dtype=np.float32)
    batch = 1000

    def run():
        for _ in range(batch):
            x @ w
    return 1.0 / _best_rate(run, batch, budget_s)


def measure(seconds: float = 3.0) -> dict:
    """The `cpu-local` entry for gpus.json, measured within about `seconds`."""
    bw = memory_bandwidth(0.4 * seconds)
    flops = matmul_flops(0.4 * seconds)
    overhead = op_overhead(0.2 * seconds)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return {
        "peak_flops": flops, "memory_bandwidth": bw, "memory_bytes": float(physical_memory()),
        "kernel_overhead_s": overhead, "bandwidth_efficiency": 1.0, "compute_efficiency": 1.0,
        "calibration": "cpu-measured",
        "interconnect": {"kind": "none", "bandwidth": 0.0, "latency_s": 0.0},
        "source": (f"measured by `python -m dexsim calibrate` on {when}: {os.cpu_count()} CPUs "
                   f"({platform.machine()}, {platform.processor() or 'unknown'}), numpy {np.__version__}; "
                   f"bandwidth = best of copy/sum over {_STREAM_BYTES >> 20} MiB, flops = fp32 "
                   f"{_MATMUL_N}x{_MATMUL_N} matmul, kernel overhead = one 1x{_TINY_N} matmul"),
    }


def rates_profile(rates: dict) -> dict:
    """The measured rates as a profile of this machine (no tables)."""
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m dexsim calibrate", "catalog_gpu": "cpu-local",
            "device": {"kind": "cpu", "name": platform.processor() or platform.machine(), "driver": None},
            "rates": {k: rates[k] for k in ("peak_flops", "memory_bandwidth", "kernel_overhead_s", "memory_bytes")},
            "rates_source": rates["source"]}


def write_profile(profile: dict, path: Path | None = None) -> Path:
    flag = "--out" if path else "calibrate"
    path = Path(path) if path else cpu_profile_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None
    write_atomically(path, lambda f: f.write((json.dumps(profile, indent=2) + "\n").encode()), flag)
    return path
