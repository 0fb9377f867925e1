"""The Z3 proofs (`proofs/`): every obligation as expected, and the checks that they can fail."""
import json
import os
import subprocess
import sys

import z3

from dexsim.core.registry import names
from proofs import bmc, fsm, kernel
from proofs.code import bundled
from proofs import obligations as ob

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_python_m_proofs_is_all_as_expected():
    """`python -m proofs --json`: theorems 1-5 proved for every transition, the sequence lemmas proved,
    every vacuity check satisfiable, every mutant refuted with a trace, the bounded checks clean; exit 0.
    Any other verdict (counterexample, unknown, vacuous, survived, error) fails, with its details."""
    p = subprocess.run([sys.executable, "-m", "proofs", "--json"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    out = json.loads(p.stdout)
    bad = [r for r in out["results"] if not r["ok"]]
    assert not bad, "\n".join(f"{r['verdict']} {r['group']} {r['name']}\n{r['detail']}" for r in bad)
    assert p.returncode == 0 and out["ok"]
    res = out["results"]
    groups = {r["group"] for r in res}
    for thm in ("thm1", "thm2", "thm3", "thm4"):
        assert thm in groups and f"thm5/{thm}" in groups
        for kind in list(fsm.TRANSITIONS) + ["Init"]:
            assert any(r["group"] == thm and r["name"].split(": ")[-1].startswith(kind) for r in res)
    mutants = [r for r in res if r["group"] == "mutant"]
    assert len(mutants) >= 8 and all(r["verdict"] == "refuted" and "violated:" in r["detail"] for r in mutants)
    assert len(mutants) == len(fsm.MUTANTS)
    vac = [r for r in res if r["group"] == "vacuity"]
    assert len(vac) == 2 * len(bmc.ENABLED_BOUNDS) and all(r["verdict"] == "sat" for r in vac)
    assert all(r["verdict"] == "proved" for r in res if r["group"].startswith("thm") or r["group"] == "lemma")
    assert any(r["group"] == "bmc" for r in res)
    code = [r for r in res if r["group"] == "code"]  # the real core, checked against the rules
    assert code and all(r["verdict"] == "conforms" for r in code)
    for name in names(hindsight=False):
        assert any(f" {name} " in r["name"] for r in code if r["name"].startswith("replay random"))
        assert any(f" {name}" in r["name"] for r in code if r["name"].startswith("herbrand"))
    assert all(any(f in r["name"] for r in code) for f in bundled())


def test_a_wrong_rule_is_not_proved_and_gets_a_trace():
    """The same inductive obligation with a mutated rule: not proved (Z3 cannot refute the negation),
    and the failure carries a real execution that violates the theorem."""
    r = ob.step_obligation("thm1", "commit_match", "greedy", mut={"commit_below_L"})
    assert not r.ok and r.verdict != "proved"
    assert "violated: thm1" in r.detail
    r = ob.step_obligation("thm4", "advance", "greedy", mut={"skip_dependency"})
    assert not r.ok


def test_kernel_verdicts():
    x = z3.Int("x")
    assert kernel.prove("t", "true", [x > 1], z3.Not(x > 0)).verdict == "proved"
    r = kernel.prove("t", "false", [x > 1], z3.Not(x > 2), explain=lambda m: f"x = {m[x]}")
    assert r.verdict == "counterexample" and not r.ok and r.detail == "x = 2"
    f = z3.Function("f", z3.IntSort(), z3.IntSort())
    loop = [z3.ForAll([x], f(f(x)) > f(x), patterns=[f(x)])]  # a matching loop, and nothing to refute
    r = kernel.prove("t", "loops", loop, z3.Not(f(0) > 100), rlimit=200_000)
    assert r.verdict == "unknown" and not r.ok  # out of resources is a failure, never a pass
    never = lambda n: z3.BoolVal(False)  # noqa: E731
    assert kernel.search("t", "m", [], lambda: [], never, 2, expect="sat", mutant=True).verdict == "survived"
    assert kernel.search("t", "v", [], lambda: [], never, 2, expect="sat").verdict == "vacuous"
    assert kernel.search("t", "b", [], lambda: [], never, 2, expect="unsat").verdict == "proved"
    always = lambda n: z3.BoolVal(True)  # noqa: E731
    assert kernel.search("t", "b", [], lambda: [], always, 2, expect="unsat").verdict == "counterexample"


def test_prefix_axioms_are_theorems_of_z3_sequences():
    assert all(r.verdict == "proved" for r in ob.lemma_obligations())


def test_bmc_traces_are_readable():
    r = bmc.refute("commit_below_L")
    assert r.verdict == "refuted"
    assert "read_exit" in r.detail and "commit_" in r.detail and "violated: thm" in r.detail
