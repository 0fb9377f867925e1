"""The first replay on a machine compiles the whole core, one function at a time, on one core (about
11 CPU-s). The commit and expand transitions (a third of it) do not depend on the rest until the replay
loop links them, so a forked process compiles them into numba's disk cache while this one compiles
the rest, and the loop then loads them from there. When the cache is warm the forked process only
loads them (a fraction of a second, on the other core); if it is late, this process compiles them
itself: nothing waits on it, and the machine code is the same either way. `DEXSIM_COMPILE_AHEAD=0`
turns it off (benchmarks/first_run.py measures both)."""
from __future__ import annotations

import multiprocessing
import os
import threading

import numba
from numba import types

from dexsim import config
from dexsim.core import lattice as core

_started = False


def compile_ahead(st, pol) -> None:
    """Start compiling what `_replay_rounds(st, pol, ...)` will call, once per process, if there is a
    second CPU and forking is safe and allowed (one thread: a fork copies a lock another thread may
    hold; a daemonic process, such as a multiprocessing pool's worker, may not have children)."""
    global _started
    if _started or os.environ.get("DEXSIM_COMPILE_AHEAD") == "0" or numba.config.DISABLE_JIT \
            or config.usable_cpus() < 2 or threading.active_count() > 1 \
            or multiprocessing.current_process().daemon or "fork" not in multiprocessing.get_all_start_methods():
        return
    _started = True
    multiprocessing.get_context("fork").Process(target=_compile, args=(signatures(st, pol),), daemon=True).start()


def signatures(st, pol) -> list:
    """(dispatcher, argument types) as the replay loop calls them: s a sequence, the requests int64
    slices, B and evict from the policy's parameters; expand first, as the loop's compile meets it first."""
    st_t, pol_t = numba.typeof(st), numba.typeof(pol)
    arr = types.Array(types.int64, 1, "C")
    return [(core.expand_seq, (st_t, types.int64, arr, arr, pol_t.types[2], pol_t.types[6])),
            (core.commit_seq, (st_t, types.int64))]


def _compile(sigs) -> None:
    for fn, sig in sigs:
        fn.compile(sig)
