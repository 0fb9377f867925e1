"""The trusted core: what it means for an obligation to be proved, refuted or satisfiable.

Everything else in `proofs/` only *builds* formulas; this module is the one place that asks Z3 and
turns its answer into a verdict. Its rules are small on purpose:

- An obligation is `hypotheses => goal`. It is **proved** only if Z3 answers `unsat` for
  `hypotheses & not goal`. `sat` is a counterexample, returned (never swallowed) with the model
  rendered by the obligation's own `explain` function. `unknown` (including hitting the resource
  limit) is a failure, never a pass.
- A **vacuity check** (an enabledness check) passes only on `sat`, with its witness.
- A **mutant** passes (is **refuted**) only on `sat`: the model checker found a counterexample trace
  for the deliberately wrong rule. An `unsat` (no counterexample within the bound) is a failure.
- A **bounded check** of the correct rules passes (`proved`, for executions within its bound) only
  on `unsat`; a `sat` is a counterexample trace.

`prove` and `Prover` (one set of hypotheses, each goal in its own push/pop scope) check proof
obligations; `search` runs a bounded model-checking query (vacuity witnesses, mutants, bounded
checks).

Solver effort is bounded by Z3's deterministic `rlimit` (not wall-clock time), so the same query gets
the same answer on any machine. The E-matching settings are fixed here: model-based quantifier
instantiation is off for proofs (only the explicit patterns instantiate quantifiers).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import z3

PROOF_RLIMIT = 30_000_000
SEARCH_RLIMIT = 200_000_000

@dataclass
class Result:
    group: str  # "lemma", "thm1".."thm4", "thm5/thm1".., "vacuity", "mutant", "bmc"
    name: str
    expect: str  # "unsat" (a proof, a bounded check), "sat" (a vacuity witness, a mutant's trace)
    verdict: str  # proved | refuted | sat | counterexample | unknown | vacuous | survived
    seconds: float
    detail: str = ""  # counterexample / witness, readable
    data: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The expected verdict: proved where unsat was expected, sat/refuted where sat was."""
        return (self.expect, self.verdict) in (("unsat", "proved"), ("sat", "sat"), ("sat", "refuted"),
                                               ("conforms", "conforms"))

    def line(self) -> str:
        return f"{self.verdict:<14} {self.seconds:6.2f}s  {self.group:<16} {self.name}"

    def as_json(self) -> dict:
        return dict(group=self.group, name=self.name, verdict=self.verdict, ok=self.ok,
                    seconds=round(self.seconds, 3), detail=self.detail, **self.data)


def _solver(rlimit: int, quantified: bool) -> z3.Solver:
    s = z3.Solver()
    s.set("rlimit", rlimit)
    if quantified:
        s.set("mbqi", False)
    return s


def prove(group: str, name: str, hypotheses: list, goal_negation, *, explain: Callable | None = None,
          rlimit: int = PROOF_RLIMIT) -> Result:
    """`hypotheses => goal`, given `not goal` (already skolemized by the caller)."""
    return Prover(hypotheses, rlimit).prove(group, name, goal_negation, explain=explain)


class Prover:
    """One set of hypotheses, several goals: each goal is checked in its own push/pop scope, so the
    hypotheses are built and internalized once. Same verdict rules as `prove`."""

    def __init__(self, hypotheses: list, rlimit: int = PROOF_RLIMIT):
        self.s = _solver(rlimit, True)
        self.s.add(*hypotheses)

    def prove(self, group: str, name: str, goal_negation, *, explain: Callable | None = None) -> Result:
        t = time.perf_counter()
        s = self.s
        s.push()
        try:
            s.add(goal_negation)
            r = s.check()
            dt = time.perf_counter() - t
            if r == z3.unsat:
                return Result(group, name, "unsat", "proved", dt)
            if r == z3.sat:
                detail = explain(s.model()) if explain else str(s.model())
                return Result(group, name, "unsat", "counterexample", dt, detail)
            return Result(group, name, "unsat", "unknown", dt, s.reason_unknown())
        finally:
            s.pop()


def search(group: str, name: str, start: list, extend: Callable[[], list], goal_at: Callable[[int], object],
           max_steps: int, *, expect: str, mutant: bool = False, explain: Callable | None = None,
           rlimit: int = SEARCH_RLIMIT) -> Result:
    """Bounded search over executions: the least n <= max_steps such that
    start & (n transitions, `extend` adds one) & goal_at(n) is satisfiable.

    expect="sat"   (a vacuity/enabledness witness, or a mutant's counterexample): found -> sat/refuted;
                   none within the bound -> vacuous/survived (a failure).
    expect="unsat" (bounded check of the correct rules, goal = some theorem violated): none within the
                   bound -> proved (for executions of at most max_steps transitions); found ->
                   counterexample (a failure, with the trace)."""
    t = time.perf_counter()
    s = z3.Solver()
    s.set("rlimit", rlimit)
    s.add(*start)
    for n in range(max_steps + 1):
        if n:
            s.add(*extend())
        s.push()
        s.add(goal_at(n))
        r = s.check()
        if r == z3.sat:
            detail = explain(s.model(), n) if explain else ""
            verdict = ("refuted" if mutant else "sat") if expect == "sat" else "counterexample"
            return Result(group, name, expect, verdict, time.perf_counter() - t, detail, {"steps": n})
        if r == z3.unknown:
            return Result(group, name, expect, "unknown", time.perf_counter() - t, s.reason_unknown(), {"steps": n})
        s.pop()
    dt = time.perf_counter() - t
    if expect == "sat":
        return Result(group, name, expect, "survived" if mutant else "vacuous", dt, "", {"steps": max_steps})
    return Result(group, name, expect, "proved", dt, "", {"steps": max_steps})
