"""Running a sweep: its replays in this process, a pool of local processes (fork) or on a dask cluster
(`--dask ADDRESS`, dexsim/sweep/pool.py), its rows written as they are ready (the same rows and
resume semantics whichever runs them)."""
from __future__ import annotations

import itertools
import sys
from contextlib import contextmanager

from tqdm import tqdm

from dexsim.core import registry
from dexsim.sweep.grid import Grid, Job
from dexsim.sweep.pool import Pool
from dexsim.sweep.rows import make_rows, run_job, spec_keys, spec_rows
from dexsim.sweep.store import RowStore


@contextmanager
def _replays(jobs: list[Job], n_procs: int, dask: str | None = None):
    """An iterator of (job, (result, tally, log)) as replays finish: in this process, in a pool of
    processes, all of them started on entry (before the caller starts any thread, e.g. a progress bar),
    or on a dask cluster."""
    if dask is None and (n_procs <= 1 or len(jobs) <= 1):
        yield ((job, run_job(job)) for job in jobs)
        return
    # local workers are forked from here: replay the first job (a baseline) here first, so that they
    # inherit the compiled core instead of each compiling it (a cold numba cache: 20 CPU-s apiece)
    first = [] if dask else [(jobs[0], run_job(jobs[0]))]
    rest = jobs[len(first):]
    with Pool(min(n_procs, len(rest)), dask) as pool:
        for job in rest:
            pool.submit(run_job, job, job)
        yield itertools.chain(first, (pool.next() for _ in rest))


def _effort(job: Job) -> tuple:
    """The spec's rough relative cost of a replay, to start the slow ones first (finishing order never
    changes results)."""
    return registry.get(job.policy).effort(dict(job.params))


def sweep(grid: Grid, out: str, *, resume: bool = False, jobs: int = 1, force: bool = False,
          on_start=None, dask: str | None = None, notes: list | None = None) -> list[dict]:
    """Run what `grid` still lacks in the folder `out` (locked meanwhile); returns the grid's rows, in grid
    order. Resumed rows of another grid are refused unless `force` keeps them. `on_start()` is called
    once the folder is locked and its rows checked, before the first replay. `dask`: a scheduler's
    address to replay on instead of `jobs` local processes. `notes` gathers what rows priced from a
    profile priced beyond its grid (of the rows made in this run)."""
    named = {k: f for s in grid.specs for k, f in spec_rows(s).items()}
    order = list(named)
    store = RowStore(out, resume, named, force)
    try:
        if on_start is not None:
            on_start()
        return _run(grid, store, order, jobs, dask, notes)
    finally:
        store.close()


def _run(grid: Grid, store: RowStore, order: list[str], n_procs: int, dask: str | None,
         notes: list | None) -> list[dict]:
    pending = [s for s in grid.specs if any(k not in store.rows for k in spec_keys(s))]
    jobs = list(dict.fromkeys([s.ar for s in pending]))  # the baselines first: every row needs one
    jobs += sorted(dict.fromkeys(j for s in pending for j in s.jobs if j not in jobs), key=_effort, reverse=True)
    waiting = {j: [] for j in jobs}
    for s in pending:
        for j in {*s.jobs, s.ar}:
            waiting[j].append(s)
    missing = {id(s): len({*s.jobs, s.ar}) for s in pending}
    done, cache = {}, {}
    # the pool starts (forks) before tqdm starts its monitor thread
    with (_replays(jobs, n_procs, dask) as results,
          tqdm(total=len(jobs), desc="sweep", unit="replay", file=sys.stderr, mininterval=0.5) as bar):
        for job, out in results:
            done[job] = out
            for s in waiting[job]:
                missing[id(s)] -= 1
                if missing[id(s)] == 0:
                    store.append(make_rows(s, done, store.rows.keys(), cache, notes))
            bar.update()
    rows = store.finish(order)
    in_grid = set(order)
    return [r for r in rows if r["key"] in in_grid]
