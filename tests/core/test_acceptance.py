"""The acceptance figures (README, "Reading the counters"): accepted tokens per verification, the share
of commits that reused a branch, the depth the new anchor already had, and waste per committed token.

Each hand-built trace below has L = 4, exits at depth 2 and 4; the expected counters come from
walking the policy's rounds by hand (the comments), and must hold exactly."""
import json

import numpy as np
from hypothesis import given, strategies as st
from eventcheck import check_event_log
from strategies import policies, tiny_trace, traces

from dexsim.cli.main import main
from dexsim.core.lattice import ACCEPTANCE, acceptance
from dexsim.core.policies import AR, DEX, Adaptive, LayerSkip
from dexsim.replay.executor import output_matches, replay, result
from dexsim.traces.format import save_trace
from dexsim.traces.synth import synth_trace


def run(trace, policy) -> dict:
    lat = replay(trace, policy, record_events=True)
    assert output_matches(trace, lat)
    check_event_log(lat.events(), lat)  # every counter, the new ones too, recounted from the event log
    return result(trace, lat, policy)


def counts(r: dict) -> tuple:
    return r["tokens"], r["commit_rounds"], r["fallbacks"], r["reused_depth"], r["wasted_node_layers"]


# Five tokens; the depth-2 guess is right at rows 0, 1, 3, 4 and wrong (99) at row 2.
DRAFTY = tiny_trace([10, 11, 12, 13, 14], [[10, 10], [11, 11], [99, 12], [13, 13], [14, 14]], [2, 4], [5], [1])


def test_layerskip_by_hand():
    """exit 2, draft 2. Verification 1: the anchor drafts 10 at depth 2, that draft drafts 11, that one
    drafts 99 (the buffer of 2 is full: refused); all three run 3..4 together, commit 10, 11 (both
    drafts were at 4: reused at depth 4) and 12, whose node has no child: a fallback. Verification 2:
    the fresh anchor drafts 13, which drafts 14, whose own draft is refused; all commit 13 and 14, the
    14-node (at 4) becomes the anchor as the sequence ends, and is discarded: 4 wasted node-layers."""
    r = run(DRAFTY, LayerSkip(4, exit=2, draft=2))
    assert counts(r) == (5, 2, 1, 4 + 4 + 0 + 4 + 4, 4)
    assert r["accepted_per_verification"] == 2.5 and r["branch_reuse_share"] == 4 / 5
    assert r["anchor_head_start"] == 16 / 5 and r["waste_per_token"] == 4 / 5


def test_adaptive_by_hand():
    """tau 0.5, buffer 2. Row 0 guesses 10 at depth 2 (conf 0.9: a child); the child, row 1, guesses 5
    at 0.2 (none); both run to 4, where the child, a branch at L, guesses its exact final token 11
    (a fresh grandchild). Verification 1 commits 10 (the child at 4: reused) and 11 (the grandchild
    at 0: reused at depth 0). Row 2 guesses at 0.2 (none), reaches 4 alone, commits 12: a fallback."""
    conf = [[0.9, 1], [0.2, 1], [0.2, 1]]
    trace = tiny_trace([10, 11, 12], [[10, 10], [5, 11], [7, 12]], [2, 4], [3], [1], conf)
    r = run(trace, Adaptive(4, np.array([2, 4]), threshold=0.5, buffer=2))
    assert counts(r) == (3, 2, 1, 4 + 0, 0)
    assert r["accepted_per_verification"] == 1.5 and r["branch_reuse_share"] == 2 / 3
    assert r["anchor_head_start"] == 4 / 3 and r["waste_per_token"] == 0.0


def test_dex_by_hand():
    """k 2, buffer 2, eager. The anchor guesses 10 at depth 2 (a child); anchor and child move
    together, the anchor to 4, the child to 2, where it guesses 3 (a grandchild). Commit 10: the
    child, at depth 2, is the new anchor (reused at 2). It and the grandchild move: it reaches 4, the
    grandchild 2 (it may guess again, at depth 0 of its own child). Commit 11: the grandchild's token 3
    is wrong: discarded with its 2 layers (its child has none), a fallback, and the sequence ends."""
    trace = tiny_trace([10, 11], [[10, 10], [3, 11]], [2, 4], [2], [1])
    r = run(trace, DEX(4, np.array([2, 4]), explorers=2, buffer=2))
    assert counts(r) == (2, 2, 1, 2, 2)
    assert r["accepted_per_verification"] == 1.0 and r["branch_reuse_share"] == 0.5
    assert r["anchor_head_start"] == 1.0 and r["waste_per_token"] == 1.0


def test_ar_commits_one_token_per_verification_and_never_reuses():
    r = run(DRAFTY, AR(4))
    assert counts(r) == (5, 5, 5, 0, 0)
    assert [r[k] for k in ACCEPTANCE] == [1.0, 0.0, 0.0, 0.0]


def test_sums_over_sequences_before_dividing():
    """Two sequences: the figures are ratios of totals, not means of per-sequence ratios."""
    two = tiny_trace([10, 11, 12, 13, 14, 10, 11], [[10, 10], [11, 11], [99, 12], [13, 13], [14, 14], [10, 10],
                                                    [11, 11]], [2, 4], [5, 2], [1, 3])
    r = run(two, LayerSkip(4, exit=2, draft=2))
    # the second sequence: 10 drafts 11, whose draft (off the trace's end) is refused; one verification
    # commits 10 and 11, the 11-node (at 4) is the anchor as it ends: discarded
    assert counts(r) == (7, 3, 1, 16 + 4 + 4, 4 + 4)
    assert r["accepted_per_verification"] == 7 / 3 and r["anchor_head_start"] == 24 / 7


def test_nothing_committed_has_no_figures():
    zero = dict.fromkeys(("tokens", "commit_rounds", "fallbacks", "reused_depth", "wasted_node_layers"), 0)
    assert acceptance(zero) == dict.fromkeys(ACCEPTANCE)


@st.composite
def trace_and_policy(draw):
    trace = draw(traces())
    return trace, draw(policies(trace))


@given(trace_and_policy())
def test_figures_are_bounded_and_agree_with_the_event_log(case):
    """On random tiny traces and policies: each verification commits 1 to B + 1 tokens (the anchor and
    a chain of branches already at L); a fallback ends a verification; a reused anchor has at most L
    layers; AR never reuses. (`run` recounts commit_rounds and reused_depth from the event log.)"""
    trace, policy = case
    r = run(trace, policy)
    n, v, f, reused, _ = counts(r)
    assert f <= v <= n <= v * (policy.buffer + 1) and v <= r["rounds"]
    assert 0 <= reused <= trace.L * (n - f)
    assert 1.0 <= r["accepted_per_verification"] <= policy.buffer + 1
    assert 0.0 <= r["branch_reuse_share"] <= 1.0 and 0.0 <= r["anchor_head_start"] <= trace.L
    assert r == {**r, **acceptance(r)}
    if policy.name == "ar":
        assert [r[k] for k in ACCEPTANCE] == [1.0, 0.0, 0.0, 0.0]


def test_replay_json_carries_the_figures(tmp_path, capsys):
    path = tmp_path / "small.npz"
    trace = synth_trace("smollm2-135m", 3, 20, seed=1)
    save_trace(trace, path)
    flags = ["--policy", "dex", "-k", "3", "--buffer", "4", "--exits", "every:5"]
    assert main(["replay", "--trace", str(path), "--json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    dex = DEX(30, np.arange(5, 31, 5), explorers=3, buffer=4)
    direct = result(trace, replay(trace, dex), dex)
    assert {k: out[k] for k in ACCEPTANCE} == {k: direct[k] for k in ACCEPTANCE} == acceptance(out)
    assert 0 < out["branch_reuse_share"] < 1 and out["anchor_head_start"] > 0
