"""Core regressions found by the reference engine (pure dexsim, no torch): a collapse must never bring
back a discarded node. `Lattice.commit` grows the kept subtree over every slot, and a dead slot past
`n` keeps a stale parent index (remapped by the previous compaction); when that index points at a
kept node, the dead node came back, at a position that is not one below its parent. In the engine
that node then attended with wrong positions and could be committed: dex's tokens differed from AR's
(tests/test_dexref_engine.py caught it on tiny models)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from dexsim.core import lattice as core
from dexsim.replay.executor import ReplayExecutor
from dexsim.core.registry import make_policy
from dexsim.traces.format import load_trace

TRACE = os.path.join(os.path.dirname(__file__), "..", "..", "traces", "smollm2-135m-lens-humaneval-raw.npz")


class Checked(ReplayExecutor):
    """A replay that checks, before every computation, that each live node sits one position below
    its parent (the path invariant of DESIGN.md section 3)."""

    broken = 0

    def compute(self, lat, s, j, layers):
        for si in range(lat.S):
            n = lat.n[si]
            if (lat.pos[si, 1:n] != lat.pos[si, lat.parent[si, 1:n]] + 1).any():
                self.broken += 1
        return super().compute(lat, s, j, layers)


@pytest.mark.parametrize("k,buffer", [(4, 8), (16, 16)])
def test_collapse_never_resurrects_a_discarded_node(k, buffer):
    if not os.path.isfile(TRACE):
        pytest.skip("real trace not bundled")
    trace = load_trace(TRACE)
    policy = make_policy("dex", trace.L, explorers=k, buffer=buffer)
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=np.diff(trace.seq_offsets))
    ex = Checked(trace, 0)
    core.run(lat, policy, ex)
    assert ex.broken == 0
