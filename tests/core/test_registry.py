"""The policy registry: a policy added by one spec (and its rule) is a policy everywhere: replay and
sweep flags, rows and labels; the built-in specs agree with the policy objects they build."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dexsim.cli.main import main
from dexsim.core import registry
from dexsim.core.params import PARAMS
from dexsim.core.registry import PolicySpec, make_policy

TRACES = Path(__file__).resolve().parents[2] / "traces"
SMALL = str(TRACES / "smollm2-135m-lens-humaneval-raw.npz")


@dataclass
class FirstExit:
    """A toy policy in plain Python (no compiled rule): one guess per node, at the first exit depth
    below L, and up to k nodes advanced a round in slot order (parents before children)."""

    L: int
    exits: np.ndarray
    explorers: int
    buffer: int
    name = "first-exit"

    def select(self, lat, s):
        chosen = np.zeros((len(s), lat.M), bool)
        for i, q in enumerate(s):
            movable = np.flatnonzero(lat.live()[q] & (lat.depth[q] < self.L))
            chosen[i, movable[: self.explorers]] = True
        return chosen, np.ones(len(s), np.int64)

    def wants(self, lat, s, j, tok, conf):
        first = int(self.exits[0])
        return (lat.depth[s, j] == first) & (first < self.L)


@pytest.fixture
def toy():
    spec = registry.register(PolicySpec(
        "first-exit", "toy: one guess per node at the first exit", params=("exits", "explorers", "buffer"),
        build=lambda L, exits, depths, p: FirstExit(L, exits, p["explorers"], p["buffer"]),
        describe=lambda r: f"first-exit k={r['explorers']} E={r['exits']}"))
    yield spec
    del registry.REGISTRY[spec.name]


def test_a_policy_added_by_one_spec_replays_losslessly(toy, capsys):
    assert main(["replay", "--trace", SMALL, "--policy", "first-exit", "-k", "2", "--exits", "20,30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == "first-exit" and out["explorers"] == 2 and out["exits"] == "20,30"
    assert out["output_matches_trace"] and out["fallbacks"] < out["tokens"]  # some guesses at 20 were right


def test_a_policy_added_by_one_spec_is_swept_and_labelled(toy, tmp_path):
    assert main(["sweep", "--traces", SMALL, "--out", str(tmp_path), "--policies", "ar,first-exit",
                 "--explorers", "1,2", "--exits", "20,30", "--gpus", "h100-sxm5-80gb", "--pp", "1",
                 "--scheduler", "lockstep", "--max-seqs", "2", "--jobs", "1"]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())
    toy_rows = [r for r in rows if r["policy"] == "first-exit"]
    assert sorted(r["explorers"] for r in toy_rows) == [1, 2] and all(r["output_matches_trace"] for r in toy_rows)
    assert all(r["priority"] is None and r["threshold"] is None for r in toy_rows)  # not its parameters
    assert registry.describe(min(toy_rows, key=lambda r: r["explorers"])) == "first-exit k=1 E=20,30"


def test_unknown_names_are_one_line_naming_the_flag(capsys):
    assert main(["replay", "--trace", SMALL, "--policy", "first-exit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--policy: unknown policy 'first-exit'" in err


@pytest.mark.parametrize("name", registry.names(hindsight=False))
def test_result_fields_are_the_spec_parameters(name):
    """`policy_params` reports explorers, buffer, exits and exactly the spec's other parameters,
    with the values the policy object was built with."""
    policy = make_policy(name, 30, exits=[10, 20, 30])
    fields = registry.policy_params(policy)
    own = [p for p in registry.get(name).params if p not in registry.COMMON]
    assert list(fields) == ["explorers", "buffer", "exits", *[p for p in PARAMS if p in own]]
    for p in own:
        assert fields[p] == getattr(policy, p)


def test_defaults_live_once_in_params():
    dex = make_policy("dex", 30)
    names = ("explorers", "buffer", "priority")
    assert tuple(getattr(dex, p) for p in names) == tuple(PARAMS[p].default for p in names)
    assert make_policy("adaptive", 30).threshold == PARAMS["threshold"].default
    assert make_policy("layerskip", 30).exit == 15 and make_policy("layerskip", 31).exit == 15
    assert make_policy("layerskip", 32, depths=[8, 24, 32]).exit == 8  # ties: the shallower readable depth
