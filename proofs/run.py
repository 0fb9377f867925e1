"""Everything `python -m proofs` checks, as a list of jobs, and the runner (two worker processes)."""
from __future__ import annotations

import multiprocessing as mp
import time

from .kernel import Result

SAMPLINGS = ("greedy", "gumbel")


def _theorems(sampling: str) -> list[Result]:
    from . import obligations as ob
    out = []
    for thm in ob.THEOREMS:
        out.append(ob.init_obligation(thm, sampling))
        for kind in ob.TRANSITIONS:
            out.append(ob.step_obligation(thm, kind, sampling))
        for kind, (t, _, _) in ob.STEP_PROPERTIES.items():
            if t == thm:
                out.append(ob.property_obligation(kind, sampling))
    return out


def _lemmas() -> list[Result]:
    from .obligations import lemma_obligations
    return lemma_obligations()


def _vacuity(sampling: str) -> list[Result]:
    from . import bmc
    return [bmc.enabled(k, sampling) for k in bmc.ENABLED_BOUNDS]


def _mutant(name: str) -> list[Result]:
    from . import bmc
    return [bmc.refute(name)]


def _bounded() -> list[Result]:
    from . import bmc
    return [bmc.bounded_check(**cfg) for cfg in bmc.BOUNDED_CHECKS]


def jobs() -> list[tuple]:
    """(section, function, args) in the order results are printed."""
    from .fsm import MUTANTS
    out = [("lemmas", _lemmas, ())]
    out += [("theorems", _theorems, (s,)) for s in SAMPLINGS]
    out += [("vacuity", _vacuity, (s,)) for s in SAMPLINGS]
    out += [("mutants", _mutant, (m,)) for m in MUTANTS]
    out += [("bmc", _bounded, ())]
    out += [("code", fn, args) for fn, args in _code_jobs()]
    return out


def _code_jobs() -> list[tuple]:
    from .code import jobs as code_jobs
    return code_jobs()


def _call(job):
    section, fn, args = job
    t = time.perf_counter()
    try:
        res = fn(*args)
    except Exception as e:  # a crash is a failure with its message, never a silent pass
        import traceback
        res = [Result(section, f"{fn.__name__}{args}", "-", "error", time.perf_counter() - t,
                      "".join(traceback.format_exception(e)))]
    return res


def run_all(workers: int = 2, on_result=None) -> list[Result]:
    """Run every job; `on_result(result)` is called in print order as results become available."""
    js = jobs()
    if workers <= 1:
        results = []
        for j in js:
            for r in _call(j):
                results.append(r)
                if on_result:
                    on_result(r)
        return results
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pending = [pool.apply_async(_call, (j,)) for j in js]
        results = []
        for p in pending:
            for r in p.get():
                results.append(r)
                if on_result:
                    on_result(r)
    return results
