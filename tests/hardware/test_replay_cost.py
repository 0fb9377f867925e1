"""Pricing a replay (`replay --gpu`): identities against the AR cost model and a unit cost model, the
pipeline and batch approximations, depth rescaling onto another model, and bad hardware flags."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dexsim.hardware import cost
from dexsim.hardware import pricing
from dexsim.specs.catalog import get_gpu, get_model
from dexsim.cli.main import main
from dexsim.core.policies import AR
from dexsim.core.registry import make_policy
from dexsim.replay import hindsight
from dexsim.replay.executor import output_matches
from dexsim.hardware.pricing import replay_tally
from dexsim.traces.transforms import rescale_depths
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import load_trace, save_trace


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "llama.npz"
    save_trace(synth_trace("llama2-7b", 3, 24, ead="beta:1.4,1.8,0.08", flicker=0.2, seed=2), path)
    return str(path)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "smol.npz"
    save_trace(synth_trace("smollm2-135m", 2, 20, ead="beta:3,1.3,0.3", seed=1), path)
    return str(path)


def _replay_json(capsys, *argv) -> dict:
    assert main(["replay", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


# --- identities ------------------------------------------------------------------------------------

def test_speedup_of_ar_is_one(llama, capsys):
    out = _replay_json(capsys, "--trace", llama, "--policy", "ar", "--gpu", "a100-sxm4-80gb")
    assert out["speedup_vs_ar"] == 1.0
    assert out["tokens_per_s"] == pytest.approx(out["tokens"] / out["sim_seconds"])
    assert out["depth_rescaled"] is False and out["model"] == "llama2-7b"


@pytest.mark.parametrize("gpu,tp,pp,batch", [("a100-sxm4-80gb", 1, 1, 1), ("h100-sxm5-80gb", 2, 1, 1),
                                             ("a100-sxm4-80gb-330w", 1, 2, 4), ("l4-24gb", 1, 1, 4),
                                             ("h200-sxm-141gb", 4, 4, 16)])
def test_ar_replay_matches_the_ar_cost_model(llama, gpu, tp, pp, batch):
    trace = load_trace(llama)
    model, hw = pricing.hardware("llama2-7b", gpu, tp, pp, batch)
    _, tally = replay_tally(trace, AR(trace.L))
    context = tally.context_sum / tally.node_layers  # every AR row reads this many positions on average
    expected = batch / cost.ar_token_time(model, hw, context)
    assert pricing.price(tally, model, hw)["tokens_per_s"] == pytest.approx(expected, rel=0.01)


def test_ar_through_the_cli_matches_the_cost_model(llama, capsys):
    out = _replay_json(capsys, "--trace", llama, "--policy", "ar", "--gpu", "h100-sxm5-80gb",
                       "--pp", "2", "--batch", "2")
    trace = load_trace(llama)
    context = float(np.mean(trace.prompt_len)) + (24 - 1) / 2  # positions read, averaged over the tokens
    hw = cost.Hardware(get_gpu("h100-sxm5-80gb"), pp=2, batch=2)
    assert out["tokens_per_s"] == pytest.approx(2 / cost.ar_token_time(get_model("llama2-7b"), hw, context),
                                                rel=0.01)


def _unit_layer(model, hw, rows, ctx_tokens, seqs=None):
    rows = np.asarray(rows, dtype=float)
    zero = np.zeros_like(rows)
    return {"memory": np.ones_like(rows), "compute": zero, "overhead": zero, "collectives": zero}


def _free_head(model, hw, rows):
    zero = np.zeros_like(np.asarray(rows, dtype=float))
    return {"memory": zero, "compute": zero, "overhead": zero, "collectives": zero}


@pytest.mark.parametrize("flags", [["--policy", "dex", "-k", "4"], ["--policy", "dex", "--priority", "align", "--exits", "every:8"],
                                   ["--policy", "layerskip", "--exit", "10"], ["--policy", "adaptive"],
                                   ["--policy", "dex", "--batch", "3"], ["--policy", "ar"]])
def test_unit_cost_per_weight_load_gives_weight_loads(llama, flags, capsys, monkeypatch):
    # one second per layer weight load, heads free: simulated seconds count weight loads exactly,
    # whatever rows share them (a batch shares them too)
    monkeypatch.setattr(cost, "layer_parts", _unit_layer)
    monkeypatch.setattr(cost, "head_parts", _free_head)
    out = _replay_json(capsys, "--trace", llama, "--gpu", "a100-sxm4-80gb", *flags)
    assert out["sim_seconds"] == out["weight_loads"]


def test_per_layer_counts_add_up(llama):
    trace = load_trace(llama)
    for policy in (AR(trace.L), make_policy("dex", trace.L, explorers=4),
                   make_policy("dex", trace.L, exits=[8, 16, 24, 32], explorers=3, priority="align")):
        lat, tally = replay_tally(trace, policy)
        assert tally.layer_loads.sum() == tally.weight_loads == lat.counters.weight_loads.sum()
        assert tally.layer_rows.sum() == tally.node_layers
        assert tally.layer_loads[0] == tally.layer_rows[0] == 0


def test_pipeline_transfers_are_counted_per_stage_crossing(llama):
    trace = load_trace(llama)
    _, tally = replay_tally(trace, AR(trace.L))
    for pp in (1, 2, 4):
        model, hw = pricing.hardware("llama2-7b", "a100-sxm4-80gb", pp=pp)
        p = pricing.price(tally, model, hw)
        assert p["stage_transfers"] == tally.tokens * (pp - 1)
        assert p["parts"]["transfers"] == pytest.approx(tally.tokens * (pp - 1) * cost.transfer_time(model, hw, 1))
    assert list(pricing.stage_sizes(30, 4)) == [8, 8, 7, 7]
    assert list(pricing.stage_first_layers(30, 4)) == [9, 17, 24]


def test_oracle_select_on_a_gpu_minimises_seconds(llama, capsys):
    out = _replay_json(capsys, "--trace", llama, "--policy", "oracle-select", "--exits", "every:8",
                       "--gpu", "l4-24gb")
    trace = load_trace(llama)
    model, hw = pricing.hardware("llama2-7b", "l4-24gb")
    seconds = [pricing.price(pricing.tally_of(lat), model, hw)["sim_seconds"]
               for _, lat in hindsight.replay_all(trace, hindsight.candidates(trace, "oracle-select", [8, 16, 24, 32]))]
    assert out["sim_seconds"] == pytest.approx(min(seconds)) and out["oracle_policy"] == "layerskip"


# --- depth rescaling --------------------------------------------------------------------------------

def test_rescaling_maps_relative_depth_and_keeps_the_deeper_column(smol):
    trace = load_trace(smol)  # L = 30, every depth recorded
    g = rescale_depths(trace, get_model("gemma3-270m"))  # L' = 18
    assert g.L == 18 and g.depths[-1] == 18 and (np.diff(g.depths) > 0).all()
    for c, d in enumerate(g.depths):
        sources = [o for o in trace.depths if max((2 * o * 18 + 30) // 60, 1) == d]
        assert np.array_equal(g.exit_tokens[:, c], trace.exit_tokens[:, max(sources) - 1])
    assert np.array_equal(g.exit_tokens[:, -1], g.final)
    up = rescale_depths(trace, get_model("llama2-7b"))  # L' = 32: no collisions
    assert len(up.depths) == 30 and up.depths[-1] == 32


@pytest.mark.parametrize("model,flags", [("gemma3-270m", ["--policy", "dex"]),
                                         ("llama2-13b", ["--policy", "adaptive"]),
                                         ("llama2-7b", ["--policy", "oracle-select", "--exits", "9,16", "--draft", "2"])])
def test_rescaled_replay_is_flagged_and_lossless(smol, model, flags, capsys):
    out = _replay_json(capsys, "--trace", smol, "--model", model, *flags, "--gpu", "h100-sxm5-80gb")
    assert out["depth_rescaled"] is True and out["model"] == model
    assert out["output_matches_trace"] is True and out["tokens"] == 40 and out["sim_seconds"] > 0


def test_own_model_is_not_rescaled(smol, capsys):
    out = _replay_json(capsys, "--trace", smol, "--model", "smollm2-135m", "--policy", "dex")
    assert out["depth_rescaled"] is False and "sim_seconds" not in out


def test_rescaled_trace_replays_lossless_in_python(smol):
    trace = rescale_depths(load_trace(smol), get_model("codellama-34b"))
    policy = make_policy("dex", trace.L, exits=trace.depths, explorers=4)
    lat, _ = replay_tally(trace, policy)
    assert output_matches(trace, lat)


# --- bad input --------------------------------------------------------------------------------------

BAD = [
    (["--gpu", "tpu-v9"], "--gpu"),
    (["--gpu", "a100-sxm4-80gb", "--model", "gpt-7"], "--model"),
    (["--model", "gpt-7"], "--model"),
    (["--gpu", "a100-sxm4-80gb", "--tp", "2"], "--tp"),  # 9 heads
    (["--gpu", "a100-sxm4-80gb", "--tp", "0"], "--tp"),
    (["--gpu", "a100-sxm4-80gb", "--pp", "31"], "--pp"),
    (["--gpu", "a100-sxm4-80gb", "--batch", "0"], "--batch"),
    (["--gpu", "l4-24gb", "--model", "llama2-70b"], "--tp/--pp"),  # does not fit
    (["--gpu", "cpu-local", "--pp", "2"], "--tp/--pp"),  # no interconnect
    (["--tp", "3"], "--tp"),  # needs --gpu
    (["--gpu", "a100-sxm4-80gb", "--batch", "two"], "--batch"),
]


@pytest.mark.parametrize("flags,names", BAD)
def test_bad_hardware_flags_are_one_line_and_status_2(smol, flags, names, capsys):
    assert main(["replay", "--trace", smol, "--policy", "ar", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err and "Traceback" not in err
