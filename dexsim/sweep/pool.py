"""Where a sweep's or a tune's replays run: in this process, in local worker processes (fork), or on a
dask.distributed cluster (`--dask ADDRESS`). Work goes in with `submit(fn, arg, tag)` and comes back
with `next()` as it finishes, whichever the backend: the callers (the sweep's rows, the tune's
trials) are the same code for all three, so rows and resume work the same everywhere.

dask is optional (`pip install -e '.[dask]'`) and imported only when `--dask` is given.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from dexsim.errors import UserError

CONNECT_TIMEOUT_S = 3  # an unreachable scheduler is one line after this long, not a hang


def connect(address: str):
    """A dask.distributed Client of the scheduler at `address`; one line naming --dask when dask is
    missing or the scheduler cannot be reached."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--dask: needs dask.distributed (pip install -e '.[dask]')") from None
    try:
        return Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")  # the default client: distributed.wait needs one
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"--dask {address}: cannot connect ({why[:200]})") from None


class Pool:
    """`procs` local processes (1: this process) or, with `dask`, the cluster at that address."""

    def __init__(self, procs: int = 1, dask: str | None = None):
        self._client = connect(dask) if dask else None
        self._procs = procs
        self._executor = None
        self._running = {}  # future -> tag
        self._ready = deque()  # (tag, result) computed in this process

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def width(self) -> int:
        """How many pieces of work run at once."""
        if self._client is not None:
            return max(1, sum(w.get("nthreads", 1) for w in self._client.scheduler_info()["workers"].values()))
        return self._procs

    @property
    def pending(self) -> int:
        return len(self._running) + len(self._ready)

    def submit(self, fn, arg, tag) -> None:
        if self._client is not None:
            self._running[self._client.submit(fn, arg, pure=False)] = tag
        elif self._procs <= 1:
            self._ready.append((tag, fn(arg)))
        else:
            if self._executor is None:
                # fork: children inherit the loaded traces, and `python -m dexsim` would rerun the CLI under spawn
                self._executor = ProcessPoolExecutor(self._procs, mp_context=multiprocessing.get_context("fork"))
            self._running[self._executor.submit(fn, arg)] = tag

    def next(self):
        """(tag, result) of a piece of work that has finished (blocks until one has)."""
        if self._ready:
            return self._ready.popleft()
        if not self._running:
            raise RuntimeError("nothing submitted")
        if self._client is not None:
            from distributed import wait as dask_wait
            done = dask_wait(list(self._running), return_when="FIRST_COMPLETED").done
        else:
            done = wait(list(self._running), return_when=FIRST_COMPLETED).done
        future = next(iter(done))
        tag = self._running.pop(future)
        return tag, future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._client is not None:
            for f in self._running:
                f.cancel()
            self._client.close()
            self._client = None
        self._running.clear()
