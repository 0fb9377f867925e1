"""The static-shape steps of dexref/graphs.py (CUDA graphs on a GPU), run eagerly on the CPU: the same
shapes, bucket padding, scratch slot and device-side masks a GPU replays. Every policy still gives
AR's tokens (float64), the committed cache is AR's up to rounding, rows beyond the largest bucket
fall back to the batched call, and a sliding window (Gemma 3) is honoured."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dexref import graphs  # noqa: E402
from dexref.engine import generate  # noqa: E402
from dexref.model import from_state, random_state  # noqa: E402
from dexref.testing import random_prompts, tiny_model  # noqa: E402
from one_thread import one_thread  # noqa: E402, F401  (autouse fixture)
from dexsim.core.registry import make_policy  # noqa: E402

NEW = 16


def test_buckets():
    assert [graphs.bucket(r) for r in (1, 2, 3, 5, 8, 9, 16, 17)] == [1, 2, 4, 8, 8, 16, 16, None]


@pytest.fixture
def calls(monkeypatch):
    """Every static step's bucket, and the fallbacks (more rows than the largest bucket)."""
    seen = {"buckets": [], "fallback": 0}
    run = graphs.StaticSteps.run

    def counting(self, lat, layer, j):
        b = graphs.bucket(len(j))
        seen["buckets" if b else "fallback"] += [b] if b else 1
        return run(self, lat, layer, j)

    monkeypatch.setattr(graphs.StaticSteps, "run", counting)
    return seen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_policy_gives_ar_tokens_through_static_steps(seed, calls):
    model, _, a = tiny_model(seed, n_layer=5)
    L = a.n_layer
    prompt = random_prompts(seed, a.vocab, (7,))
    ar = generate(model, prompt, make_policy("ar", L), NEW)
    for policy in (make_policy("dex", L, explorers=4, buffer=8), make_policy("dex", L, explorers=3, buffer=6,
                                                                             priority="deep"),
                   make_policy("layerskip", L, exit=1, draft=4), make_policy("adaptive", L, threshold=0.3, buffer=5)):
        run = generate(model, prompt, policy, NEW, graphs=True)
        assert run.executor.static is not None and run.executor.slots == policy.buffer + 2
        assert run.outputs == ar.outputs, policy
        assert all(sorted(f) == list(range(policy.buffer + 1)) for f in run.executor.free)  # never the scratch slot
        for got, want in zip(run.executor.committed_cache(0), ar.executor.committed_cache(0)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert {1, 2, 4} <= set(calls["buckets"])  # padded buckets were used (3 rows -> 4, ...)


def test_more_rows_than_the_largest_bucket_fall_back(calls, monkeypatch):
    monkeypatch.setattr(graphs, "BUCKETS", (1, 2))
    model, _, a = tiny_model(1, n_layer=6)
    prompt = random_prompts(1, a.vocab, (6,))
    ar = generate(model, prompt, make_policy("ar", a.n_layer), NEW).outputs
    assert generate(model, prompt, make_policy("dex", a.n_layer, explorers=8, buffer=8), NEW, graphs=True).outputs == ar
    assert calls["fallback"] > 0 and set(calls["buckets"]) == {1, 2}


def test_sliding_window_through_static_steps():
    from test_dexref_gemma3 import TINY

    model = from_state(TINY, random_state(TINY, seed=3), torch.float64)
    prompt = [[2] + list(range(3, 14))]  # longer than the window
    ar = generate(model, prompt, make_policy("ar", 4), 10).outputs
    for policy in (make_policy("dex", 4, exits=np.array([1, 2, 3, 4]), explorers=4, buffer=6),
                   make_policy("layerskip", 4, exit=2, draft=3)):
        assert generate(model, prompt, policy, 10, graphs=True).outputs == ar


def test_static_steps_only_where_they_apply():
    model, _, a = tiny_model(0)
    prompts = random_prompts(0, a.vocab, (3, 4))
    policy = make_policy("dex", a.n_layer)
    assert generate(model, prompts, policy, 4, graphs=True).executor.static is None  # two sequences
    assert generate(model, prompts[:1], policy, 4, graphs=True, batch_invariant=True).executor.static is None
