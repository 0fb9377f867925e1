"""The roofline cost model: calibration, catalog hygiene, pricing identities, hardware checks and the CLI."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from dexsim.hardware import cost
from dexsim.specs.catalog import (get_gpu, get_model, gpu_calibrations, gpus, memory_fit, models,
                            published_measurements)
from dexsim.cli.main import main
from dexsim.errors import UserError

GPU_NAMES = sorted(gpus())


def _hw(gpu="a100-sxm4-80gb", **kw):
    return cost.Hardware(get_gpu(gpu), **kw)


def _scaled(gpu_name, **fields):
    return dataclasses.replace(get_gpu(gpu_name), **fields)


def _predicted_tokens_per_s(m: dict) -> float:
    model = get_model(m["model"])
    hw = cost.Hardware(get_gpu(m["gpu"]), tp=m["tp"], pp=m["pp"], batch=m["batch"])
    cost.check_hardware(model, hw)
    return m["batch"] / cost.ar_token_time(model, hw, m["context"])


# --- calibration -------------------------------------------------------------------------------------

def test_calibration_point_within_10_percent():
    point = [m for m in published_measurements() if m["role"] == "calibration"]
    assert len(point) == 1
    assert _predicted_tokens_per_s(point[0]) == pytest.approx(point[0]["tokens_per_s"], rel=0.10)


def test_calibration_point_through_the_cli(capsys):
    assert main(["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb-330w", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens_per_s"] == pytest.approx(104.9, rel=0.10)
    assert report["bound"] == "memory"
    assert report["seconds_per_token"] == pytest.approx(sum(report["parts"].values()))


@pytest.mark.parametrize("m", [m for m in published_measurements() if m["role"] == "validation"],
                         ids=lambda m: f"{m['model']}-tp{m['tp']}")
def test_published_cross_checks_within_15_percent(m):
    # not fitted: these check that the single-point calibration carries over to TP and larger models
    assert _predicted_tokens_per_s(m) == pytest.approx(m["tokens_per_s"], rel=0.15)


# --- catalog hygiene ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GPU_NAMES)
def test_gpu_entries_have_sources_and_positive_numbers(name):
    g = get_gpu(name)
    assert g.source.strip() and g.calibration in gpu_calibrations()
    for v in (g.peak_flops, g.memory_bandwidth, g.memory_bytes, g.bandwidth_efficiency,
              g.compute_efficiency, g.kernels_per_layer, g.kernel_overhead_s):
        assert v > 0 and math.isfinite(v)
    assert 0 < g.bandwidth_efficiency <= 1 and 0 < g.compute_efficiency <= 1
    ic = g.interconnect
    assert ic.kind in ("nvlink", "pcie", "none")
    assert (ic.bandwidth > 0 and ic.latency_s > 0) if ic.kind != "none" else ic.bandwidth == 0


def test_required_gpus_and_sourced_calibrations():
    for name in ("a100-sxm4-80gb", "a100-sxm4-80gb-330w", "h100-sxm5-80gb", "h200-sxm-141gb", "l4-24gb",
                 "cpu-local"):
        assert name in GPU_NAMES
    assert all(c["source"].strip() for c in gpu_calibrations().values())
    assert memory_fit()["source"].strip()
    assert all(m["source"].strip() and m["tokens_per_s"] > 0 for m in published_measurements())


def test_model_entries_have_sources_and_positive_numbers():
    for m in models().values():
        assert m.source.strip()
        assert min(m.layers, m.hidden, m.intermediate, m.heads, m.kv_heads, m.head_dim, m.vocab) > 0


def test_layer_counting_matches_the_published_parameter_counts():
    # layers + embedding (+ untied head) reproduce each model card's total: the counting is right
    for m in models().values():
        embed = m.vocab * m.hidden
        total = m.layers * cost.layer_params(m) + embed + (0 if m.tied_embeddings else embed) + m.hidden
        assert total == pytest.approx(m.params, rel=0.01), m.name


def test_unknown_gpu_is_a_user_error():
    with pytest.raises(UserError, match="unknown GPU"):
        get_gpu("tpu-v9")


def test_calibrated_profile_overlays_cpu_local(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["calibrate", "--seconds", "0.3"]) == 0
    assert (tmp_path / "dexsim" / "cpu-local.json").is_file()
    g = get_gpu("cpu-local")
    assert "measured" in g.source and g.memory_bandwidth > 0 and g.interconnect.kind == "none"
    (tmp_path / "dexsim" / "cpu-local.json").write_text("{not json")
    with pytest.raises(UserError, match="cpu-local"):
        gpus()


# --- identities --------------------------------------------------------------------------------------

def _random_counts(rng, n=40):
    load_rows = rng.integers(0, 50, size=n)
    load_rows[0] = 0
    head_rows = rng.integers(0, 20, size=9)
    return load_rows, head_rows


@pytest.mark.parametrize("gpu", ["a100-sxm4-80gb", "l4-24gb", "cpu-local"])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 4), (2, 2)])
def test_price_is_the_sum_of_its_parts(gpu, tp, pp):
    if get_gpu(gpu).interconnect.kind == "none" and tp * pp > 1:
        pytest.skip("no interconnect")
    model, hw = get_model("llama2-7b"), _hw(gpu, tp=tp, pp=pp)
    load_rows, head_rows = _random_counts(np.random.default_rng(tp * 10 + pp))
    p = cost.price_counts(model, hw, load_rows, 300.0, head_rows, rounds=123, stage_crossings=17)
    assert p["seconds"] == pytest.approx(sum(p[k] for k in cost.PARTS), rel=1e-12)
    assert all(p[k] >= 0 for k in cost.PARTS)
    assert p["weight_loads"] == load_rows.sum() and p["rounds"] == 123
    b = cost.ar_breakdown(model, hw, 500)
    assert b["seconds"] == pytest.approx(sum(b[k] for k in cost.PARTS), rel=1e-12)


@pytest.mark.parametrize("model_name", ["llama2-7b", "gemma3-270m", "llama2-70b"])
@pytest.mark.parametrize("batch", [1, 4])
def test_ar_shaped_histogram_prices_as_tokens_times_ar_token_time(model_name, batch):
    model = get_model(model_name)
    tp = 8 if model_name == "llama2-70b" else 1
    pp = 2 if model_name == "llama2-70b" else 1
    hw = _hw("h100-sxm5-80gb", tp=tp, pp=pp, batch=batch)
    tokens, ctx = 77, 640.0
    load_rows = np.zeros(batch + 1, dtype=int)
    load_rows[batch] = tokens * model.layers
    head_rows = np.zeros(batch + 1, dtype=int)
    head_rows[batch] = tokens
    p = cost.price_counts(model, hw, load_rows, ctx, head_rows, rounds=tokens * model.layers,
                          stage_crossings=tokens * (pp - 1))
    assert p["seconds"] == pytest.approx(tokens * cost.ar_token_time(model, hw, ctx), rel=1e-9)


def test_one_unit_per_weight_load_is_expressible():
    # a device with free bytes and FLOPs and a 1 s step overhead prices exactly the number of loads
    unit = _scaled("a100-sxm4-80gb", memory_bandwidth=math.inf, peak_flops=math.inf,
                   kernels_per_layer=1, kernel_overhead_s=1.0)
    load_rows, head_rows = _random_counts(np.random.default_rng(3))
    p = cost.price_counts(get_model("llama2-7b"), cost.Hardware(unit), load_rows, 1000.0, head_rows, rounds=1)
    assert p["seconds"] == p["overhead"] == load_rows.sum() + head_rows[1:].sum()
    assert cost.layer_time(get_model("llama2-7b"), cost.Hardware(unit), 7, 7000) == 1.0


@pytest.mark.parametrize("field", ["memory_bandwidth", "peak_flops"])
@pytest.mark.parametrize("gpu", GPU_NAMES)
def test_a_faster_device_is_never_slower(field, gpu):
    model = get_model("llama2-7b" if gpu != "cpu-local" else "smollm2-135m")
    base = get_gpu(gpu)
    fast = dataclasses.replace(base, **{field: 2 * getattr(base, field)})
    rows = np.arange(1, 2000, 37)
    for g_slow, g_fast in ((base, fast),):
        slow_t = cost.layer_time(model, cost.Hardware(g_slow), rows, rows * 900)
        fast_t = cost.layer_time(model, cost.Hardware(g_fast), rows, rows * 900)
        assert np.all(fast_t <= slow_t)
        assert np.all(cost.head_time(model, cost.Hardware(g_fast), rows)
                      <= cost.head_time(model, cost.Hardware(g_slow), rows))
    load_rows, head_rows = _random_counts(np.random.default_rng(5))
    slow = cost.price_counts(model, cost.Hardware(base), load_rows, 250.0, head_rows, 10)["seconds"]
    quick = cost.price_counts(model, cost.Hardware(fast), load_rows, 250.0, head_rows, 10)["seconds"]
    assert quick <= slow


def test_rows_share_a_weight_load():
    model, hw = get_model("llama2-7b"), _hw()
    one = cost.layer_time(model, hw, 1, 100)
    eight = cost.layer_time(model, hw, 8, 800)
    assert one < eight < 1.1 * one  # memory-bound: 8 rows cost about one weight load, not eight
    t = cost.layer_time(model, hw, np.array([1, 8, 4096]), np.array([100, 800, 409600]))
    assert isinstance(t, np.ndarray) and t[0] == one and t[2] > 4 * one  # far enough out, FLOPs dominate


def test_gemma3_head_costs_more_than_a_layer():
    model = get_model("gemma3-270m")
    for gpu in GPU_NAMES:
        hw = _hw(gpu)
        assert cost.head_time(model, hw, 1) > cost.layer_time(model, hw, 1, 128), gpu


def test_tp_adds_collectives_and_pp_adds_transfers():
    model = get_model("llama2-70b")
    tp8 = cost.ar_breakdown(model, _hw(tp=8), 128)
    assert tp8["collectives"] > 0 and tp8["transfers"] == 0
    pp4 = cost.ar_breakdown(model, _hw(tp=2, pp=4), 128)
    assert pp4["transfers"] == pytest.approx(3 * cost.transfer_time(model, _hw(tp=2, pp=4), 1))


# --- hardware checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name,gpu,kw,flag", [
    ("llama2-7b", "a100-sxm4-80gb", {"tp": 3}, "--tp"),           # 3 does not divide 32 heads
    ("codellama-34b", "a100-sxm4-80gb", {"tp": 16}, "--tp"),      # 16 does not divide 8 KV heads
    ("gemma3-270m", "h100-sxm5-80gb", {"tp": 2}, "--tp"),         # one KV head
    ("llama2-70b", "a100-sxm4-80gb", {}, "--tp/--pp"),            # 138 GB on one 80 GB card
    ("llama2-7b", "a100-sxm4-80gb", {"pp": 33}, "--pp"),          # more stages than layers
    ("llama2-7b", "cpu-local", {"tp": 2}, "--tp/--pp"),           # no interconnect
    ("llama2-7b", "a100-sxm4-80gb", {"batch": 0}, "--batch"),
])
def test_check_hardware_refuses(model_name, gpu, kw, flag):
    with pytest.raises(UserError, match=flag):
        cost.check_hardware(get_model(model_name), _hw(gpu, **kw))


def test_check_hardware_accepts_sensible_configs():
    cost.check_hardware(get_model("llama2-70b"), _hw(tp=2))
    cost.check_hardware(get_model("llama2-70b"), _hw("h200-sxm-141gb"))
    cost.check_hardware(get_model("llama2-7b"), _hw("l4-24gb"))
    cost.check_hardware(get_model("smollm2-135m"), _hw("cpu-local"))


# --- CLI -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,flag", [
    (["cost", "--model", "llama2-7b", "--gpu", "nope"], "--gpu"),
    (["cost", "--model", "nope", "--gpu", "a100-sxm4-80gb"], "--model"),
    (["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb", "--tp", "3"], "--tp"),
    (["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb", "--tp", "0"], "--tp"),
    (["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb", "--batch", "-2"], "--batch"),
    (["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb", "--context", "x"], "--context"),
    (["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb", "--pp", "1.5"], "--pp"),
    (["cost", "--model", "llama2-70b", "--gpu", "l4-24gb"], "--tp"),
    (["calibrate", "--seconds", "0"], "--seconds"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, flag, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and captured.out == ""


@pytest.mark.parametrize("cmd", ["gpus", "models"])
def test_cli_listings(cmd, capsys):
    assert main([cmd]) == 0
    assert "llama2-7b" in capsys.readouterr().out or cmd == "gpus"
    assert main([cmd, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing) == set(gpus() if cmd == "gpus" else models())


# --- how an engine runs a step: overlap of streaming and arithmetic, a shared KV prefix -----------------

def test_overlap_and_shared_prefix_hand_computed():
    """A made-up device (1 GB/s, 1 GFLOP/s, no overhead) on SmolLM2's shape: a step is the longer of its
    bytes and FLOPs where they overlap and their sum where not; rows of one sequence read its KV prefix
    once where it is shared, while every row still does its attention arithmetic."""
    m = get_model("smollm2-135m")
    base = dataclasses.replace(get_gpu("a100-sxm4-80gb"), peak_flops=1e9, compute_efficiency=1.0,
                               memory_bandwidth=1e9, bandwidth_efficiency=1.0, kernel_overhead_s=0.0)
    bpw, kvb = m.bytes_per_weight, 2 * m.kv_heads * m.head_dim * m.bytes_per_weight
    act = (14 * m.hidden + (2 * m.heads + 2 * m.kv_heads) * m.head_dim + 6 * m.intermediate) * bpw
    rows, ctx = 4, 4 * 300  # four rows, 300 positions each
    weights = cost.layer_params(m) * bpw
    flops = 2 * cost.layer_params(m) * rows + 4 * m.heads * m.head_dim * ctx
    per_row_kv = weights + (ctx + rows) * kvb + rows * act
    shared_kv = weights + (300 + rows) * kvb + rows * act  # one sequence: its 300 positions once
    cases = [(True, False, 1, max(per_row_kv, flops)), (False, False, 1, per_row_kv + flops),
             (True, True, 1, max(shared_kv, flops)), (False, True, 1, shared_kv + flops),
             (False, True, None, per_row_kv + flops),  # seqs unknown (AR's rows): each row its own
             (False, True, 4, per_row_kv + flops)]  # four sequences of one row each: the same
    for overlap, shared, seqs, hand_s in cases:
        hw = cost.Hardware(dataclasses.replace(base, memory_compute_overlap=overlap, kv_prefix_shared=shared))
        assert cost.layer_time(m, hw, rows, ctx, seqs) == pytest.approx(hand_s / 1e9, rel=1e-12), (overlap, shared, seqs)
    # AR is priced the same either way: its rows are distinct sequences
    for shared in (False, True):
        hw = cost.Hardware(dataclasses.replace(base, kv_prefix_shared=shared), batch=4)
        ar = cost.ar_breakdown(m, hw, 300)
        assert ar["layers"] == pytest.approx(m.layers * max(per_row_kv, flops) / 1e9, rel=1e-12)


def test_gpus_overlap_and_read_kv_per_row_the_cpu_class_neither():
    for name, g in gpus().items():
        assert (g.memory_compute_overlap, g.kv_prefix_shared) == ((False, True) if name == "cpu-local" else (True, False))
    for c in gpu_calibrations().values():
        assert "memory_compute_overlap" in c["source"] and "kv_prefix_shared" in c["source"]


@pytest.mark.parametrize("field", ["memory_compute_overlap", "kv_prefix_shared"])
def test_a_non_boolean_flag_in_a_cpu_profile_is_one_line(tmp_path, monkeypatch, field):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "dexsim").mkdir()
    (tmp_path / "dexsim" / "cpu-local.json").write_text(json.dumps({field: "yes"}))
    with pytest.raises(UserError, match=f"cpu-local.json: cpu-local profile: field {field}: 'yes' is not true or false"):
        gpus()


def test_des_on_the_cpu_class_prices_as_lockstep():
    """One device, one request, on cpu-local (sum, shared prefix): a DES step prices its rows' own
    context, lockstep every load at the trace's mean context per row, so with the prefix read once per
    load they differ by how the context varies within a round, a few parts per million here."""
    from dexsim.core.registry import make_policy
    from dexsim.des.record import record
    from dexsim.des.simulate import Load, simulate
    from dexsim.hardware import pricing
    from dexsim.traces.format import load_trace
    from dexsim.traces.transforms import first_seqs, first_tokens

    trace = first_tokens(first_seqs(load_trace("traces/smollm2-135m-lens-humaneval-raw.npz"), 2), 8)
    model, hw = pricing.hardware("smollm2-135m", "cpu-local", 1, 1, 1)
    for name, kw in (("ar", {}), ("dex", {"explorers": 8, "buffer": 16, "priority": "deep"})):
        _, tally, log = record(trace, make_policy(name, trace.L, depths=trace.depths, **kw), pps=(1,))
        lock = pricing.price(tally, model, hw)["sim_seconds"]
        assert simulate(log, model, hw, Load()).sim_seconds == pytest.approx(lock, rel=1e-12 if name == "ar" else 1e-4)
