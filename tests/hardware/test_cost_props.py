"""Monotonicity properties of the cost model and of explorer counts, and the discrete-event scheduler
against the analytical (lockstep) pricing on random runs.

- Hardware: on random GPU and model specs and random counters, a device that is better in any one
  respect (bandwidth, FLOP/s, efficiencies, overheads, interconnect) is never slower; more work is
  never cheaper; rows sharing a step never cost more than running alone.
- Explorers: more explorers do NOT always mean fewer rounds (pinned counterexamples below: a
  scheduling anomaly of `eager`'s oldest-first order, not a bug). What holds, and is checked: with
  explorers to spare and a buffer that never fills, DEX runs the earliest possible schedule, so no
  policy on the same exits, with any explorer count, takes fewer rounds; and explorers beyond the
  buffer change nothing, whatever the priority rule.
- DES: one device and one request at a time is lockstep pricing; AR on a pipeline is one device plus
  transfers (on random traces and policies; tests/test_des.py checks them on one fixed trace)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from strategies import examples, policies, tiny_trace, traces

from dexsim.hardware import cost
from dexsim.hardware import pricing
from dexsim.core import lattice as core
from dexsim.specs.catalog import GPUSpec, Interconnect, ModelSpec, get_gpu, get_model
from dexsim.des.simulate import Load, simulate
from dexsim.des.record import record
from dexsim.core.policies import AR, DEX
from dexsim.core.params import PRIORITIES
from dexsim.replay.executor import ReplayExecutor, replay


def log_uniform(lo: float, hi: float):
    return st.floats(np.log(lo), np.log(hi)).map(np.exp)


# ---------------------------------------------------------------------------- random hardware and models

@st.composite
def gpu_specs(draw) -> GPUSpec:
    kind = draw(st.sampled_from(["nvlink", "pcie", "none"]))
    link = Interconnect(kind, 0.0, 0.0) if kind == "none" else \
        Interconnect(kind, draw(log_uniform(1e9, 1e12)), draw(log_uniform(1e-7, 1e-4)))
    return GPUSpec(name="random", peak_flops=draw(log_uniform(1e11, 5e15)),
                   memory_bandwidth=draw(log_uniform(1e10, 2e13)), memory_bytes=1e15,
                   bandwidth_efficiency=draw(st.floats(0.05, 1.0)), compute_efficiency=draw(st.floats(0.05, 1.0)),
                   kernels_per_layer=draw(st.integers(1, 30)), kernel_overhead_s=draw(st.floats(0, 2e-5)),
                   collective_overhead_s=draw(st.floats(0, 2e-5)), interconnect=link, calibration="random",
                   source="hypothesis")


@st.composite
def model_specs(draw) -> ModelSpec:
    kv = draw(st.sampled_from([1, 2, 4, 8]))
    heads = kv * draw(st.sampled_from([1, 2, 4, 8]))
    head_dim = draw(st.sampled_from([32, 64, 128, 256]))
    return ModelSpec(name="random", layers=draw(st.integers(1, 96)), hidden=heads * head_dim,
                     intermediate=draw(st.integers(64, 65536)), heads=heads, kv_heads=kv, head_dim=head_dim,
                     vocab=draw(st.integers(100, 300_000)), params=1, tied_embeddings=draw(st.booleans()),
                     dtype="random", bytes_per_weight=draw(st.sampled_from([0.5, 1.0, 2.0, 4.0])),
                     source="hypothesis")


@st.composite
def setups(draw):
    """(model, hardware): tp divides the heads and KV heads, pp at most the layers; tp x pp = 1 without a link."""
    model, gpu = draw(model_specs()), draw(gpu_specs())
    linked = gpu.interconnect.kind != "none"
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if model.kv_heads % t == 0])) if linked else 1
    pp = draw(st.integers(1, min(model.layers, 8))) if linked else 1
    return model, cost.Hardware(gpu, tp=tp, pp=pp, batch=draw(st.integers(1, 64)))


histograms = st.lists(st.integers(0, 1000), min_size=1, max_size=24).map(lambda h: np.array([0] + h))


def better(gpu: GPUSpec, what: str, f: float) -> GPUSpec:
    """`gpu` improved by factor f >= 1 in one respect."""
    ic = gpu.interconnect
    change = {
        "memory_bandwidth": dict(memory_bandwidth=gpu.memory_bandwidth * f),
        "peak_flops": dict(peak_flops=gpu.peak_flops * f),
        "bandwidth_efficiency": dict(bandwidth_efficiency=min(1.0, gpu.bandwidth_efficiency * f)),
        "compute_efficiency": dict(compute_efficiency=min(1.0, gpu.compute_efficiency * f)),
        "kernel_overhead_s": dict(kernel_overhead_s=gpu.kernel_overhead_s / f),
        "collective_overhead_s": dict(collective_overhead_s=gpu.collective_overhead_s / f),
        "link_bandwidth": dict(interconnect=dataclasses.replace(ic, bandwidth=ic.bandwidth * f)),
        "link_latency": dict(interconnect=dataclasses.replace(ic, latency_s=ic.latency_s / f)),
    }[what]
    return dataclasses.replace(gpu, **change)


IMPROVEMENTS = ("memory_bandwidth", "peak_flops", "bandwidth_efficiency", "compute_efficiency",
                "kernel_overhead_s", "collective_overhead_s", "link_bandwidth", "link_latency")


def _all_prices(model, hw, load_rows, head_rows, ctx, crossings):
    rows = np.arange(1, 300, 7, dtype=float)
    return np.concatenate([
        np.atleast_1d(cost.layer_time(model, hw, rows, rows * ctx)), np.atleast_1d(cost.head_time(model, hw, rows)),
        [cost.price_counts(model, hw, load_rows, ctx, head_rows, 1, crossings if hw.pp > 1 else 0)["seconds"],
         cost.ar_token_time(model, hw, ctx)],
        [cost.transfer_time(model, hw, hw.batch)] if hw.pp > 1 else []])


# ---------------------------------------------------------------------------- hardware monotonicity

@given(setups(), st.sampled_from(IMPROVEMENTS), st.floats(1.0, 100.0), histograms, histograms,
       st.floats(0, 1e5), st.integers(0, 1000))
@settings(max_examples=examples(150), deadline=None)
def test_better_hardware_is_never_slower(setup, what, f, load_rows, head_rows, ctx, crossings):
    """More bandwidth, FLOP/s, efficiency, a faster link or less overhead never makes a layer step, a
    head group, a priced replay, an AR token or a stage transfer slower. Catches a roofline that adds
    instead of taking the max the wrong way round, an efficiency that divides where it multiplies, a
    link term charged with the HBM bandwidth, a parameter read from the wrong field."""
    model, hw = setup
    fast = dataclasses.replace(hw, gpu=better(hw.gpu, what, f))
    slow_t = _all_prices(model, hw, load_rows, head_rows, ctx, crossings)
    fast_t = _all_prices(model, fast, load_rows, head_rows, ctx, crossings)
    assert (fast_t <= slow_t).all(), (what, np.flatnonzero(fast_t > slow_t))
    assert (slow_t >= 0).all() and np.isfinite(slow_t).all()


@given(setups(), histograms, histograms, st.floats(0, 1e5), st.floats(0, 1e5), histograms)
@settings(max_examples=examples(100), deadline=None)
def test_more_work_never_costs_less_and_prices_add_up(setup, load_rows, head_rows, ctx, more_ctx, extra):
    """Adding weight loads, head groups or context never makes a run cheaper, and a run is priced as the
    sum of its parts: price(a + b) = price(a) + price(b). Catches pricing that is not linear in the
    histogram (e.g. rows and counts swapped, or index 0 charged), and a context term with the wrong sign."""
    model, hw = setup

    def secs(loads, heads, c):
        return cost.price_counts(model, hw, loads, c, heads, 0)["seconds"]

    n = max(len(load_rows), len(extra))
    a, b = np.pad(load_rows, (0, n - len(load_rows))), np.pad(extra, (0, n - len(extra)))
    assert secs(a + b, head_rows, ctx) >= secs(a, head_rows, ctx)
    assert secs(a, head_rows, ctx + more_ctx) >= secs(a, head_rows, ctx)
    assert secs(a + b, head_rows, ctx) == pytest.approx(secs(a, head_rows * 0, ctx) + secs(b, head_rows, ctx),
                                                        rel=1e-9)
    rows = np.arange(1, 200, dtype=float)
    t = cost.layer_time(model, hw, rows, rows * ctx)
    assert (np.diff(t) >= 0).all() and (np.diff(cost.head_time(model, hw, rows)) >= 0).all()


@given(setups(), st.integers(2, 4096), st.floats(0, 1e5))
@settings(max_examples=examples(100), deadline=None)
def test_rows_sharing_a_step_never_cost_more_than_alone(setup, r, ctx):
    """r rows in one layer step (or one head group) cost at most r single-row steps, and at least one:
    the weights are read once for all of them. Catches weights charged per row (which would make every
    speculative policy look free or ruinous) and a batch that costs less than one of its rows."""
    model, hw = setup
    one, many = cost.layer_time(model, hw, 1, ctx), cost.layer_time(model, hw, r, r * ctx)
    assert one <= many <= r * one * (1 + 1e-12)
    one, many = cost.head_time(model, hw, 1), cost.head_time(model, hw, r)
    assert one <= many <= r * one * (1 + 1e-12)


# ---------------------------------------------------------------------------- explorers and rounds

def _one_seq(final, exit_tokens, depths):
    return tiny_trace(final, exit_tokens, depths, [len(final)], [1], vocab=2)


# Found by Hypothesis (shrunk): one more explorer, more rounds. Eager moves the first k movable nodes in
# slot order (anchor, then oldest): an extra explorer advances an off-path branch that spawns earlier,
# so its children take slots ahead of the true path's, which then waits for an explorer.
ANOMALIES = [
    # (trace, buffer, k, rounds with k, rounds with k + 1)
    (_one_seq([1, 0, 0], [[0, 1, 1], [1, 0, 0], [1, 1, 0]], [1, 2, 4]), 5, 5, 8, 10),
    (_one_seq([0, 0, 1, 1, 0, 0], [[0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0], [0, 1, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1],
                                   [1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]], [1, 2, 3, 4, 5, 6]), 100, 8, 18, 19),
]


@pytest.mark.parametrize("trace,buffer,k,rounds,rounds_more", ANOMALIES)
def test_one_more_explorer_can_take_more_rounds(trace, buffer, k, rounds, rounds_more):
    """Documents that 'more explorers never more rounds' is false for `dex` eager, even with a buffer
    of 100 that never fills; the property below is the statement that does hold."""
    run = [replay(trace, DEX(trace.L, trace.depths, kk, buffer)).counters for kk in (k, k + 1)]
    assert [int(c.rounds[0]) for c in run] == [rounds, rounds_more]
    assert all(c.tokens[0] == trace.n_tokens for c in run)


BIG = 127  # a buffer that the saturated runs below almost never fill (those that do are skipped)


def _run_tracking_live(trace, policy, seed):
    """Replay, also returning the most live nodes any sequence held after a round."""
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=np.diff(trace.seq_offsets))
    ex = ReplayExecutor(trace, seed)
    core.start(lat, ex)
    most = int(lat.n.max())
    while lat.active.any():
        core.step(lat, policy, ex)
        most = max(most, int(lat.n.max()))
    return lat, most


@given(st.data())
@settings(max_examples=examples(120), deadline=None)
def test_explorers_to_spare_give_the_fewest_rounds(data):
    """With an explorer for every node and a buffer that never fills, every node moves as soon as the
    dependency rule allows and every guess is expanded: the earliest schedule. So, per sequence, no
    policy whose exits are a subset of the same E (any explorer count, priority, buffer, eviction)
    takes fewer rounds. Catches a dependency rule that is too strict (a node held back with its
    parent's layer available), a commit that waits a round, explorers counted against the anchor twice,
    and any policy that commits a token before the earliest round it could be known."""
    trace = data.draw(traces(max_layers=6, max_seqs=2, max_tokens=10), label="trace")
    seed = data.draw(st.integers(0, 3), label="seed")
    full, most = _run_tracking_live(trace, DEX(trace.L, trace.depths, BIG + 1, BIG), seed)
    assume(most < BIG + 1)  # the buffer never filled: no guess was refused
    others = [data.draw(policies(trace), label="policy"),
              DEX(trace.L, trace.depths, data.draw(st.integers(1, 12), label="k"), data.draw(st.integers(0, 16)),
                  data.draw(st.sampled_from(PRIORITIES), label="priority"), data.draw(st.booleans(), label="evict"))]
    for other in others:
        lat = replay(trace, other, seed=seed)
        assert (full.counters.rounds <= lat.counters.rounds).all(), other
        assert (lat.counters.tokens == full.counters.tokens).all()


@example(  # the fix of 9463441: deep/confident ranked dead slots (stale keys) among the live ones
    trace=tiny_trace([0, 0], [[1, 0], [0, 0]], [1, 2], [2], [1], conf=[[0.8145, 0.0919], [0.6, 0.7285]], vocab=2),
    buffer=2, extra=3, seed=0, priority="confident", evict=False)
@given(trace=traces(), buffer=st.integers(0, 6), extra=st.integers(0, 4), seed=st.integers(0, 3),
       priority=st.sampled_from(["deep", "confident"]), evict=st.booleans())
@settings(max_examples=examples(100), deadline=None)
def test_explorers_beyond_the_buffer_change_nothing(trace, buffer, extra, seed, priority, evict):
    """With k >= buffer + 1 explorers every node that can move does, whatever the priority rule: deep and
    confident with any such k run exactly as eager with k = buffer + 1. Catches a priority order that
    lets a node skip its turn with explorers to spare; the pinned example is the dead-slot bug fixed in
    9463441 (found then by the viz tests; the lattice suites did not see it)."""
    M = buffer + 1
    want = replay(trace, DEX(trace.L, trace.depths, M, buffer, "eager", evict), seed=seed).counters
    got = replay(trace, DEX(trace.L, trace.depths, M + extra, buffer, priority, evict), seed=seed).counters
    assert got.totals() == want.totals()
    assert (got.rounds == want.rounds).all() and (got.load_rows == want.load_rows).all()


# ---------------------------------------------------------------------------- DES against lockstep pricing

GPUS = ["a100-sxm4-80gb", "h100-sxm5-80gb", "l4-24gb"]


@given(st.data())
@settings(max_examples=examples(40), deadline=None)
def test_des_agrees_with_lockstep_pricing_where_they_model_the_same(data):
    """On random traces and policies: one device and one request at a time, the DES takes exactly the
    lockstep price (the steps are the same and run back to back); AR on pp stages takes one device's
    time plus one transfer per stage boundary per token (only one stage is ever busy). Catches a DES
    that drops, repeats or overlaps steps on one device, and pipeline transfers charged wrongly."""
    trace = data.draw(traces(max_layers=8, max_seqs=2, max_tokens=8), label="trace")
    policy = data.draw(policies(trace), label="policy")
    gpu = data.draw(st.sampled_from(GPUS), label="gpu")
    # llama2-7b's layers at this trace's depth: memory-bound at these few rows, where the DES's per-step
    # context and lockstep's mean context price alike (the roofline is affine in the context there)
    model = dataclasses.replace(get_model("llama2-7b"), layers=trace.L)
    one = cost.Hardware(get_gpu(gpu))
    _, tally, log = record(trace, policy, pps=(1,))
    assert simulate(log, model, one, Load()).sim_seconds == pytest.approx(
        pricing.price(tally, model, one)["sim_seconds"], rel=1e-9)
    pp = data.draw(st.integers(2, max(2, trace.L)), label="pp") if trace.L > 1 else 1
    many = cost.Hardware(get_gpu(gpu), pp=pp)
    _, ar_tally, ar_log = record(trace, AR(trace.L), pps=(1, pp))
    t1, tg = simulate(ar_log, model, one, Load()).sim_seconds, simulate(ar_log, model, many, Load()).sim_seconds
    transfers = ar_tally.tokens * (pp - 1) * cost.transfer_time(model, many, 1)
    assert tg == pytest.approx(t1 + transfers, rel=1e-12)
    assert tg == pytest.approx(pricing.price(ar_tally, model, many)["sim_seconds"], rel=1e-12)
