"""Trained exit heads in the cost model and the trace analysis (torch-free): the catalog's adapter entry
matches the committed manifest, a trained head read costs the lens plus its adapter, unknown heads are a
UserError, and the recorded lens and trained traces are the same generations with a lower mean EAD."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dexsim.hardware import cost
from dexsim.hardware import pricing
from dexsim.traces.analyze import analyze, compare
from dexsim.specs.catalog import exit_heads, get_gpu, get_model, with_heads
from dexsim.errors import UserError
from dexsim.traces.format import load_trace

ROOT = Path(__file__).resolve().parents[2]
NAME = "smollm2-135m-exits-r64"
LENS_TRACE = ROOT / "traces" / "smollm2-135m-lens-humaneval-raw.npz"
TRAINED_TRACE = ROOT / "traces" / "smollm2-135m-trained-humaneval-raw.npz"


@pytest.mark.parametrize("name", sorted(exit_heads()))
def test_catalog_entry_matches_the_committed_manifest(name):
    entry = exit_heads()[name]
    manifest = json.loads((ROOT / "traces" / "adapters" / f"{name}.json").read_text())
    model = get_model(entry["model"])
    for key in ("model", "rank", "depths", "params_per_exit", "params"):
        assert entry[key] == manifest[key], key
    assert entry["params_per_exit"] == 2 * entry["rank"] * model.hidden == manifest["params"] // len(manifest["depths"])
    assert with_heads(model, f"trained:{name}").head_adapter_params == entry["params_per_exit"]
    assert with_heads(model, "lens") == model and model.head_adapter_params == 0
    # on another model (a depth-rescaled replay) the same adapter shape at that model's width
    assert with_heads(get_model("llama2-7b"), f"trained:{NAME}").head_adapter_params == 2 * 64 * 4096


@pytest.mark.parametrize("gpu", ["a100-sxm4-80gb", "cpu-local"])
def test_a_trained_head_read_costs_the_lens_plus_its_adapter(gpu):
    model = get_model("smollm2-135m")
    trained = with_heads(model, f"trained:{NAME}")
    hw = cost.Hardware(get_gpu(gpu))
    rows = np.arange(1, 9)
    lens_t, trained_t = cost.head_time(model, hw, rows), cost.head_time(trained, hw, rows)
    assert (trained_t > lens_t).all()
    p, t = cost.head_parts(model, hw, rows), cost.head_parts(trained, hw, rows)
    extra = rows * trained.head_adapter_params * model.bytes_per_weight / (hw.gpu.memory_bandwidth * hw.gpu.bandwidth_efficiency)
    assert np.allclose(t["memory"] - p["memory"], extra)
    assert (trained_t / lens_t < 1 + 0.003 * rows).all()  # a rank-64 adapter: 0.26% of the head's weights per row
    assert cost.layer_time(trained, hw, 1, 100) == cost.layer_time(model, hw, 1, 100)  # layers do not change
    m, _ = pricing.hardware("smollm2-135m", gpu, heads=f"trained:{NAME}")
    assert m.head_adapter_params == trained.head_adapter_params


@pytest.mark.parametrize("heads", ["trained:nosuch", "trained:", "bogus"])
def test_unknown_heads_are_a_user_error(heads):
    with pytest.raises(UserError, match="meta.heads"):
        pricing.hardware("smollm2-135m", "a100-sxm4-80gb", heads=heads)


def test_recorded_trained_trace_is_the_lens_generations_with_lower_ead():
    lens, trained = load_trace(str(LENS_TRACE)), load_trace(str(TRAINED_TRACE))
    assert trained.meta["heads"] == f"trained:{NAME}" and lens.meta["heads"] == "lens"
    assert trained.meta["recorder"]["params"]["heads"]["held_out"] is True
    r = compare(lens, trained)
    assert r["same_final"]  # adapters only change guesses: the committed tokens are the lens trace's
    assert r["depths"] == trained.depths.tolist()
    assert r["b"]["mean_ead"] < r["a"]["mean_ead"] - 3
    assert r["b"]["mean_ead"] < analyze(lens)["mean_ead"]  # even against the lens at every depth



def test_replay_prices_the_trace_own_heads():
    """`dexsim replay --gpu` prices a trained trace's head reads with their adapters."""
    from dexsim.hardware.pricing import HardwareConfig

    cfg = HardwareConfig(gpu="a100-sxm4-80gb")
    for path, params in ((TRAINED_TRACE, exit_heads()[NAME]["params_per_exit"]), (LENS_TRACE, 0)):
        trace = load_trace(path)
        model, _ = cfg.resolve(trace.meta["model"], trace.meta["heads"], trace.path)
        assert model.head_adapter_params == params
