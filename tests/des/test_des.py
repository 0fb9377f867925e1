"""The discrete-event scheduler (dexsim/des): tokens and counters as lockstep, the work log the same
from the compiled loop and the Python rounds, the identities of
issue 8 (one device = lockstep, AR on a pipeline = one device + transfers, utilization = busy time),
the dependency rule checked on recorded device events against the core's event log, the closed form
against the SimPy engine, serving load, and the CLI."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dexsim.hardware import cost
from dexsim.hardware import pricing
from dexsim.specs.catalog import get_gpu, get_model
from dexsim.cli.main import main
from dexsim.des.simulate import Load, simulate
from dexsim.des.plan import compile_plan, durations, timeline
from dexsim.core import lattice as core
from dexsim.des.record import cut_mask, record, worklog
from dexsim.core.lattice import ADVANCE, COMMIT, SPAWN
from dexsim.core.policies import AR
from dexsim.core.registry import make_policy
from dexsim.replay.executor import ReplayExecutor, output_matches, replay_lattice, result
from dexsim.hardware.pricing import replay_tally
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import save_trace
from strategies import policies, traces

GPU = "a100-sxm4-80gb"


@pytest.fixture(scope="module")
def llama():
    return synth_trace("llama2-7b", 3, 24, ead="beta:1.4,1.8,0.08", flicker=0.2, seed=2)


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory, llama):
    path = tmp_path_factory.mktemp("t") / "llama.npz"
    save_trace(llama, path)
    return str(path)


POLICIES = [("ar", {}), ("dex", {"explorers": 4}), ("dex", {"explorers": 8, "priority": "deep", "exits": [8, 16, 24, 32]}),
            ("dex", {"explorers": 3, "priority": "align", "exits": [4, 12, 20, 28, 32]}),
            ("layerskip", {"exit": 16, "draft": 3}), ("adaptive", {"exits": [4, 12, 20, 28, 32]})]


def _hw(model, pp=1, tp=1, batch=1, gpu=GPU):
    return cost.Hardware(get_gpu(gpu), tp=tp, pp=pp, batch=batch)


def _tiny_model(L):
    return dataclasses.replace(get_model("llama2-7b"), layers=L)


# --- the work log ---------------------------------------------------------------------------------------

class _PythonRounds(ReplayExecutor):
    """The same executor, but a subclass: the core runs it one Python `step` at a time."""


@given(traces(), st.data(), st.integers(0, 3))
def test_the_compiled_loop_logs_the_work_the_python_rounds_log(trace, data, seed):
    """The DES reads the work the core logs as it advances; the compiled replay loop and the core's
    Python rounds (any other executor) log the same work, in the same order."""
    policy = data.draw(policies(trace))
    cuts = cut_mask(trace.L, range(1, trace.L + 1))
    logs = []
    for executor in (ReplayExecutor(trace, seed), _PythonRounds(trace, seed)):
        lat = replay_lattice(trace, policy, work_cuts=cuts)
        core.run(lat, policy, executor)
        logs.append(worklog(lat))
    a, b = logs
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)
        else:
            assert np.array_equal(x, y) and getattr(x, "dtype", None) == getattr(y, "dtype", None), f.name


# --- the dependency rule, on recorded events ----------------------------------------------------------

def _node_steps(log, plan, events):
    """(seq, node, layer) -> (step, round), node -> (spawn parent, spawn depth), and the commits, from
    the core's event log: which device step ran each node-layer."""
    call_of = {}
    for c, s, r0, m in zip(log.g_call.tolist(), log.g_seq.tolist(), log.g_round.tolist(), log.g_m.tolist()):
        for i in range(m):
            call_of[s, r0 + i] = (c, i)
    where, spawn, commits = {}, {}, []
    for e in events:
        s, v = int(e["seq"]), int(e["node"])
        if e["kind"] == SPAWN:
            spawn[s, v] = (int(e["parent"]), int(e["n"]))
        elif e["kind"] == ADVANCE:
            for i in range(int(e["n"])):
                layer, r = int(e["depth"]) + 1 + i, int(e["round"]) + i
                c, off = call_of[s, r]
                step = plan.find([c], [plan.segment_of(s, c, off)], [s], [plan.stage[layer]])[0]
                where[s, v, layer] = (int(step), r)
        elif e["kind"] == COMMIT:
            commits.append((s, v))
    return where, spawn, commits


def check_dependencies(log, plan, events, start, end, *, L, xfer, arrival=None, seqs=None, tol=1e-12):
    """No node-layer starts before its inputs: its previous layer (plus a transfer across a stage), its
    spawn parent's same layer (KV), and the exit read that spawned it. `start`/`end`: per plan step
    (NaN: did not run); arrival[s]: when sequence s could start."""
    where, spawn, commits = _node_steps(log, plan, events)
    ran = ~np.isnan(start)
    for (s, v, layer), (st, r) in where.items():
        if (seqs is not None and s not in seqs) or not ran[st]:
            continue
        t0 = start[st]
        deps = []
        if layer >= 2:
            deps.append(where[s, v, layer - 1] + (xfer if plan.stage[layer] != plan.stage[layer - 1] else 0.0,))
        p, depth = spawn[s, v]
        if p >= 0:
            assert (s, p, layer) in where, "a node computed a layer its parent never had"
            deps.append(where[s, p, layer] + (0.0,))
            if layer == 1:  # spawned by an exit read (depth 0 for a fresh anchor: the committed token)
                deps.append(where[s, p, depth or L] + (0.0,))
        elif layer == 1 and arrival is not None:
            assert t0 >= arrival[s] - tol
        for dst, dr, delay in deps:
            if dst == st:
                assert dr <= r, "same step, later round"
            else:
                assert ran[dst], "a step ran whose input never did"
                assert t0 >= end[dst] + delay - tol * (1 + abs(t0)), f"step {st} starts before its input {dst}"
    return where, commits


def _no_overlap(events):
    for g in {e[0] for e in events}:
        iv = sorted((a, b) for d, a, b, *_ in events if d == g)
        assert all(b0 <= a1 + 1e-12 for (_, b0), (a1, _) in zip(iv, iv[1:])), "a device ran two steps at once"


@given(st.data())
@settings(max_examples=40)
def test_recorded_events_obey_the_dependency_rule(data):
    trace = data.draw(traces(max_layers=8, max_seqs=3, max_tokens=10))
    policy = data.draw(policies(trace))
    pp = data.draw(st.integers(1, min(trace.L, 4)))
    lat0, tally0 = replay_tally(trace, policy)
    lat, tally, log = record(trace, policy, pps=(pp,), record_events=True)
    # the scheduler decides timing, never tokens: recording changes nothing
    assert result(trace, lat, policy) == result(trace, lat0, policy) and output_matches(trace, lat)
    assert tally.load_rows.tolist() == tally0.load_rows.tolist()
    model, hw = _tiny_model(trace.L), _hw(None, pp=pp)
    plan = compile_plan(log, pp)
    tl = timeline(plan, durations(plan, model, hw))
    xfer = cost.transfer_time(model, hw, 1) if pp > 1 else 0.0
    where, commits = check_dependencies(log, plan, lat.events(), tl.start, tl.end, L=trace.L, xfer=xfer,
                                        arrival=np.zeros(trace.n_seqs))
    # tokens commit no earlier than their node's last layer, in order
    for (s, v), t in zip(sorted(commits, key=lambda c: c[0]), tl.token_time):
        assert t >= tl.end[where[s, v, trace.L][0]] - 1e-15
    # several requests sharing the devices (SimPy, continuous batching) obey it too
    n = 2 * trace.n_seqs
    res = simulate(log, model, hw, Load(requests=n, arrival="closed", rate=2, batch=2), want_events=True)
    _no_overlap(res.events)
    for rid in range(n):
        start, end = np.full(plan.n_steps, np.nan), np.full(plan.n_steps, np.nan)
        for _, a, b, rids, steps in res.events:
            for r, j in zip(rids, steps):
                if r == rid:
                    start[j], end[j] = a, b
        q = int(res.request_seqs[rid])
        check_dependencies(log, plan, lat.events(), start, end, L=trace.L, xfer=xfer, seqs={q},
                           arrival=np.full(trace.n_seqs, res.arrival[rid]))
    # one request at a time: the SimPy engine reproduces the closed form
    alone = simulate(log, model, hw, Load(requests=n, rate=1, batch=1), engine="alone")
    sim = simulate(log, model, hw, Load(requests=n, rate=1, batch=1), engine="simpy")
    assert np.allclose(alone.finish, sim.finish, rtol=1e-9) and np.allclose(alone.busy_s, sim.busy_s, rtol=1e-9)


# --- identities ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", POLICIES)
def test_one_device_one_request_equals_lockstep(llama, name, kw):
    policy = make_policy(name, llama.L, **kw)
    lat, tally, log = record(llama, policy, pps=(1,))
    for gpu, tp in ((GPU, 1), ("h100-sxm5-80gb", 2), ("l4-24gb", 1)):
        model, hw = pricing.hardware("llama2-7b", gpu, tp, 1, 1)
        lock = pricing.price(tally, model, hw)["sim_seconds"]
        res = simulate(log, model, hw, Load())
        # equal up to rounding: a step prices its rows' own context, lockstep the mean context, and the
        # roofline is affine in the context while memory-bound (every step at batch 1 is)
        assert res.sim_seconds == pytest.approx(lock, rel=1e-9 if name != "ar" else 1e-12)
        assert res.utilization == [pytest.approx(1.0)]
        assert res.tokens == tally.tokens


HOST = {"round_overhead_s": 1.0e-4, "exit_overhead_s": 3.0e-5}  # a host that costs something per round and read


def _host_hw(hw, **terms):
    return dataclasses.replace(hw, gpu=dataclasses.replace(hw.gpu, **(terms or HOST)))


def test_the_des_charges_the_host_as_lockstep_does_hand_computed():
    """AR on a 3-token trace, one device, one request: the host adds L rounds and one exit read per
    token to the time without it, exactly; and that is lockstep pricing's time with the host terms."""
    trace = synth_trace("llama2-7b", 1, 3, seed=5)
    _, tally, log = record(trace, AR(trace.L), pps=(1,))
    model, bare = pricing.hardware("llama2-7b", GPU, 1, 1, 1)
    hw = _host_hw(bare)
    assert (tally.tokens, tally.rounds, tally.head_evals) == (3, 3 * 32, 3)
    with_host, without = simulate(log, model, hw, Load()), simulate(log, model, bare, Load())
    hand = without.sim_seconds + 3 * 32 * 1.0e-4 + 3 * 3.0e-5
    assert with_host.sim_seconds == pytest.approx(hand, rel=1e-12)
    assert with_host.sim_seconds == pytest.approx(pricing.price(tally, model, hw)["sim_seconds"], rel=1e-12)
    # zero host terms: the very same floats as a GPU that has none
    zero = simulate(log, model, _host_hw(bare, round_overhead_s=0.0, exit_overhead_s=0.0), Load())
    assert zero.sim_seconds == without.sim_seconds and np.array_equal(zero.finish, without.finish)


@pytest.mark.parametrize("name,kw", POLICIES)
def test_one_device_one_request_with_host_terms_equals_lockstep(llama, name, kw):
    _, tally, log = record(llama, make_policy(name, llama.L, **kw), pps=(1, 4))
    model, hw = pricing.hardware("llama2-7b", GPU, 1, 1, 1)
    hw = _host_hw(hw)
    res = simulate(log, model, hw, Load())
    assert res.sim_seconds == pytest.approx(pricing.price(tally, model, hw)["sim_seconds"], rel=1e-9)
    assert res.utilization == [pytest.approx(1.0)]
    # on a pipeline each round's control is charged once (on the stage that starts it), each read once
    _, many = pricing.hardware("llama2-7b", GPU, 1, 4, 1)
    plan = compile_plan(log, 4)
    d0, d1 = durations(plan, model, many), durations(plan, model, _host_hw(many))
    extra = (d1.step - d0.step).sum()
    assert extra == pytest.approx(tally.rounds * 1.0e-4 + tally.head_evals * 3.0e-5, rel=1e-9)
    assert plan.step_rounds.sum() == tally.rounds


def test_a_micro_batch_shares_the_round_not_the_reads():
    """Two requests of one AR sequence arrive together and move as one micro-batch: the host's round
    is charged once per round, each exit read on its own, as a lockstep batch of 2 is priced."""
    trace = synth_trace("llama2-7b", 1, 4, seed=7)
    _, tally, log = record(trace, AR(trace.L), pps=(1,))
    model, bare = pricing.hardware("llama2-7b", GPU, 1, 1, 2)
    load = Load(requests=2, rate=2, batch=2)
    a, b = simulate(log, model, bare, load), simulate(log, model, _host_hw(bare), load)
    assert a.engine == b.engine == "simpy"
    assert b.sim_seconds == pytest.approx(a.sim_seconds + tally.rounds * 1.0e-4 + 2 * tally.head_evals * 3.0e-5,
                                          rel=1e-12)
    assert b.sim_seconds == pytest.approx(pricing.price(tally, model, _host_hw(bare))["sim_seconds"], rel=1e-9)


@pytest.mark.parametrize("pp", [2, 4, 8])
def test_ar_on_a_pipeline_is_one_device_plus_transfers(llama, pp):
    lat, tally, log = record(llama, AR(llama.L), pps=(1, pp))
    model, one = pricing.hardware("llama2-7b", GPU, 1, 1, 1)
    _, many = pricing.hardware("llama2-7b", GPU, 1, pp, 1)
    t1, tg = simulate(log, model, one, Load()), simulate(log, model, many, Load())
    transfers = tally.tokens * (pp - 1) * cost.transfer_time(model, many, 1)
    assert tg.sim_seconds == pytest.approx(t1.sim_seconds + transfers, rel=1e-12)
    assert tg.sim_seconds == pytest.approx(pricing.price(tally, model, many)["sim_seconds"], rel=1e-12)
    # one stage busy at a time: the busy times add up to one device's, each stage has its share
    assert sum(tg.busy_s) == pytest.approx(t1.busy_s[0], rel=1e-12)
    assert sum(tg.utilization) < 1


@pytest.mark.parametrize("engine,load", [("alone", Load()), ("alone", Load(requests=5, arrival="poisson", rate=2.0)),
                                         ("simpy", Load(requests=6, rate=3, batch=3)),
                                         ("simpy", Load(requests=6, arrival="poisson", rate=40.0, batch=2))])
def test_utilization_sums_to_the_busy_time_of_the_events(llama, engine, load):
    policy = make_policy("dex", llama.L, explorers=4, priority="deep", exits=[8, 16, 24, 32])
    _, _, log = record(llama, policy, pps=(4,))
    model, hw = pricing.hardware("llama2-7b", GPU, 1, 4, load.batch)
    res = simulate(log, model, hw, load, want_events=True)
    assert res.engine == engine
    busy = np.zeros(4)
    for g, a, b, *_ in res.events:
        busy[g] += b - a
    assert busy == pytest.approx(res.busy_s, rel=1e-9)
    assert np.array(res.utilization) * res.sim_seconds == pytest.approx(busy, rel=1e-9)
    assert all(0 < u <= 1 for u in res.utilization)
    _no_overlap(res.events)
    assert len(res.commits) == res.tokens == len(res.token_latency)
    assert 0 <= res.p50_token_latency_s <= res.p99_token_latency_s <= res.token_latency.max()


def test_dex_fills_the_pipeline_and_beats_ar(llama):
    exits = [8, 16, 24, 32]
    dex = make_policy("dex", llama.L, explorers=8, buffer=16, priority="deep", exits=exits)
    _, dex_tally, dex_log = record(llama, dex, pps=(1, 4))
    _, ar_tally, ar_log = record(llama, AR(llama.L), pps=(1, 4))
    model, one = pricing.hardware("llama2-7b", GPU, 1, 1, 1)
    _, four = pricing.hardware("llama2-7b", GPU, 1, 4, 1)
    t = {(p, h.pp): simulate(lg, model, h, Load()).tokens_per_s
         for p, lg in (("dex", dex_log), ("ar", ar_log)) for h in (one, four)}
    assert t["ar", 4] <= t["ar", 1]  # no free speed for AR
    assert t["dex", 4] > 1.3 * t["dex", 1]  # explorers at different depths run on different stages at once
    assert t["dex", 4] > 1.2 * t["ar", 4]
    # lockstep pricing (stages one after another) sees none of it
    lock = pricing.price(dex_tally, model, four)["tokens_per_s"] / pricing.price(ar_tally, model, four)["tokens_per_s"]
    assert lock < t["dex", 4] / t["ar", 4]


def test_throughput_grows_with_concurrency_then_flattens():
    trace = synth_trace("smollm2-135m", 8, 6, seed=3)
    _, _, log = record(trace, AR(trace.L), pps=(1,))
    rates = []
    for c in (1, 4, 16, 64, 256, 1024, 2048):
        model, hw = pricing.hardware("smollm2-135m", "h200-sxm-141gb", 1, 1, c)
        res = simulate(log, model, hw, Load(requests=c, rate=c, batch=c))
        # requests that start together stay aligned: every step is one weight load for all of them,
        # which is the AR roofline at that batch (contexts differ a little between sequences)
        context = float(np.mean(trace.prompt_len)) + 2.5
        bound = c / cost.ar_token_time(model, hw, context)
        assert res.tokens_per_s == pytest.approx(bound, rel=0.01)
        rates.append(res.tokens_per_s)
    assert all(b > a for a, b in zip(rates, rates[1:]))
    assert rates[1] / rates[0] > 3.9  # the shared weight load dominates: four requests cost little more
    assert rates[-1] / rates[-2] < 1.4  # per-row work (KV, activations, FLOPs) dominates: doubling barely pays


def test_dex_benefit_shrinks_under_load(llama):
    dex = make_policy("dex", llama.L, explorers=8, buffer=16, priority="deep", exits=[8, 16, 24, 32])
    _, _, dex_log = record(llama, dex, pps=(4,))
    _, _, ar_log = record(llama, AR(llama.L), pps=(4,))
    speedup = []
    for c in (1, 6):
        model, hw = pricing.hardware("llama2-7b", GPU, 1, 4, c)
        load = Load(requests=6, rate=c, batch=c)
        speedup.append(simulate(dex_log, model, hw, load).tokens_per_s / simulate(ar_log, model, hw, load).tokens_per_s)
    assert speedup[0] > 1 and speedup[1] < speedup[0]


@pytest.mark.parametrize("name,kw", [("ar", {}), ("layerskip", {"exit": 12, "draft": 2}), ("adaptive", {}),
                                     *[("dex", {"explorers": k}) for k in (1, 2, 4, 8, 16)]])
def test_every_baseline_runs_on_the_same_machinery(llama, name, kw):
    policy = make_policy(name, llama.L, exits=[4, 8, 12, 16, 20, 24, 28, 32], buffer=8, **kw)
    lat, _, log = record(llama, policy, pps=(4,))
    model, hw = pricing.hardware("llama2-7b", GPU, 2, 4, 1)
    res = simulate(log, model, hw, Load())
    assert output_matches(llama, lat) and res.tokens == 72 and np.isfinite(res.sim_seconds)


# --- CLI -------------------------------------------------------------------------------------------

def _replay_json(capsys, *argv) -> dict:
    assert main(["replay", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_des_row_and_chrome_trace(llama_path, tmp_path, capsys):
    path = tmp_path / "trace.json"
    flags = ["--trace", llama_path, "--policy", "dex", "-k", "8", "--buffer", "16", "--priority", "deep",
             "--exits", "8,16,24,32", "--gpu", GPU, "--pp", "4"]
    out = _replay_json(capsys, *flags, "--scheduler", "des", "--trace-out", str(path))
    lock = _replay_json(capsys, *flags)
    assert out["scheduler"] == "des" and out["arrival"] == "closed:1" and out["requests"] == 3
    assert out["output_matches_trace"] and out["tokens"] == lock["tokens"] == 72
    assert {k: out[k] for k in ("rounds", "node_layers", "weight_loads")} == \
        {k: lock[k] for k in ("rounds", "node_layers", "weight_loads")}
    assert out["speedup_vs_ar"] > 1.2 > lock["speedup_vs_ar"]
    assert len(out["utilization"]) == 4 and out["p50_token_latency_s"] <= out["p99_token_latency_s"]
    ev = json.loads(path.read_text())["traceEvents"]
    steps = [e for e in ev if e["ph"] == "X"]
    assert {e["tid"] for e in steps} == {0, 1, 2, 3}
    busy = np.zeros(4)
    for e in steps:
        busy[e["tid"]] += e["dur"] / 1e6
    assert busy / out["sim_seconds"] == pytest.approx(out["utilization"], abs=1e-5)
    assert sum(e["ph"] == "i" for e in ev) == 72


def test_cli_serving_load_and_oracle(llama_path, capsys):
    out = _replay_json(capsys, "--trace", llama_path, "--policy", "ar", "--gpu", GPU, "--scheduler", "des",
                       "--requests", "7", "--arrival", "poisson:50", "--batch", "4")
    assert out["requests"] == 7 and out["tokens"] == 7 * 24 and out["arrival"] == "poisson:50"
    assert out["batch"] == 4 and out["speedup_vs_ar"] == 1.0
    out = _replay_json(capsys, "--trace", llama_path, "--policy", "oracle-select", "--exits", "8,16,24,32",
                       "--draft", "2", "--gpu", GPU, "--pp", "2", "--scheduler", "des")
    assert out["oracle_policy"] in ("ar", "layerskip") and out["output_matches_trace"]


def test_micro_batches_fill_the_pipeline_for_ar(llama_path, capsys):
    flags = ["--trace", llama_path, "--policy", "ar", "--gpu", GPU, "--pp", "4", "--scheduler", "des",
             "--batch", "8", "--requests", "8"]
    one = _replay_json(capsys, *flags)  # every ready request in one step: aligned, one stage busy at a time
    split = _replay_json(capsys, *flags, "--micro-batch", "2")  # four micro-batches of two
    assert max(one["utilization"]) < 0.3 < 0.8 < min(split["utilization"])
    assert split["micro_batch"] == 2 and "micro_batch" not in one
    assert split["tokens"] == one["tokens"] == 8 * 24


BAD = [
    (["--requests", "3"], "--requests"),
    (["--micro-batch", "2"], "--micro-batch"),
    (["--scheduler", "des", "--gpu", GPU, "--micro-batch", "0"], "--micro-batch"),
    (["--gpu", GPU, "--arrival", "closed:2"], "--arrival"),
    (["--trace-out", "x.json"], "--trace-out"),
    (["--scheduler", "des"], "--gpu"),
    (["--scheduler", "fifo"], "--scheduler"),
    (["--scheduler", "des", "--gpu", GPU, "--arrival", "burst:3"], "--arrival"),
    (["--scheduler", "des", "--gpu", GPU, "--arrival", "poisson:-1"], "--arrival"),
    (["--scheduler", "des", "--gpu", GPU, "--arrival", "closed:1.5"], "--arrival"),
    (["--scheduler", "des", "--gpu", GPU, "--requests", "0"], "--requests"),
    (["--scheduler", "des", "--gpu", GPU, "--trace-out", "/nonexistent/dir/t.json"], "--trace-out"),
]


@pytest.mark.parametrize("flags,names", BAD)
def test_bad_des_flags_are_one_line_and_status_2(llama_path, flags, names, capsys):
    assert main(["replay", "--trace", llama_path, "--policy", "ar", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err and "Traceback" not in err
