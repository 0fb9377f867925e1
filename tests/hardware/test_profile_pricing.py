"""Pricing from a measured profile (dexsim/specs/profile.py, `--profile`): interpolation against
hand-computed values, extrapolation flagged, bad or foreign profiles refused in one line, and
`calibrate` writing the same format that the cpu-local entry reads."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cli.clirun import check_clean, error_line, run_cli
from dexsim.core import registry
from dexsim.core.policies import AR
from dexsim.hardware import cost, pricing
from dexsim.specs.catalog import get_gpu, get_model
from dexsim.specs.profile import load_profile
from dexsim.traces.format import load_trace
from dexsim.traces.transforms import first_seqs, first_tokens

ARCH = {k: getattr(get_model("smollm2-135m"), k) for k in ("layers", "hidden", "intermediate", "heads",
                                                             "kv_heads", "head_dim", "vocab")}
TRACE = "traces/smollm2-135m-lens-humaneval-raw.npz"


def profile_dict(**change) -> dict:
    d = {"format": "dex-profile/1", "created": "2026-12-05T00:00:00+00:00", "device": {"kind": "cpu", "name": "test"},
         "catalog_gpu": "cpu-local", "shape": {"name": "random:smollm2-135m", "arch": dict(ARCH)}, "dtype": "float32",
         "rows": [1, 2, 4], "contexts": [100, 300],
         "layer_s": [[1.0e-3, 2.0e-3], [1.5e-3, 2.5e-3], [3.0e-3, 7.0e-3]],
         "head_rows": [1, 4], "head_s": [8.0e-3, 11.0e-3],
         "host_round_s": 5.0e-5, "host_exit_s": 2.0e-5, "transfer": None}
    d.update(change)
    return d


@pytest.fixture
def write(tmp_path):
    def w(d, name="p.json") -> str:
        path = tmp_path / name
        path.write_text(d if isinstance(d, str) else json.dumps(d))
        return str(path)
    return w


def test_interpolation_against_hand_computed_values(write):
    p = load_profile(write(profile_dict()))
    assert p.layer(1, 100) == 1.0e-3 and p.layer(4, 300) == 7.0e-3  # grid points exactly
    assert p.layer(1, 200) == pytest.approx(1.5e-3)  # halfway in context
    assert p.layer(3, 100) == pytest.approx(2.25e-3)  # halfway in rows
    # (3, 250): rows 2..4 weight 0.5, contexts 100..300 weight 0.75
    hand = 0.5 * 0.25 * 1.5e-3 + 0.5 * 0.75 * 2.5e-3 + 0.5 * 0.25 * 3.0e-3 + 0.5 * 0.75 * 7.0e-3
    assert p.layer(3, 250) == pytest.approx(hand)
    assert p.head(2) == pytest.approx(9.0e-3) and p.head(4) == 11.0e-3
    # beyond the grid: linear from the two nearest points, never below the cheapest point measured
    assert p.layer(8, 300) == pytest.approx(7.0e-3 + 2 * (7.0e-3 - 2.5e-3))
    assert p.head(7) == pytest.approx(11.0e-3 + 3 * 1.0e-3)
    assert p.layer(1, 10) == 1.0e-3
    assert p.extrapolated([1, 2], 200, [1]) == []
    notes = p.extrapolated([1, 8], 50, [5])
    assert len(notes) == 3 and "layer rows 1..8" in notes[0] and "head rows" in notes[1] and "context 50" in notes[2]


def test_a_replay_priced_from_a_profile_is_the_hand_sum(write):
    path = write(profile_dict())
    model, hw = pricing.hardware("smollm2-135m", "cpu-local", profile=load_profile(path))
    tally = pricing.Tally(tokens=5, rounds=40, node_layers=7, weight_loads=4, head_evals=6, context_sum=7 * 200,
                          load_rows=np.array([0, 2, 1, 0, 1]), head_rows=np.array([0, 2, 0, 0, 1]),
                          layer_loads=np.zeros(31, np.int64), layer_rows=np.zeros(31, np.int64))
    # ctx per row 200: layer(1) 1.5 ms, layer(2) 2.0 ms, layer(4) 5.0 ms; heads 8 ms x2 + 11 ms; host
    hand = 2 * 1.5e-3 + 2.0e-3 + 5.0e-3 + 2 * 8.0e-3 + 11.0e-3 + 40 * 5.0e-5 + 6 * 2.0e-5
    priced = pricing.price(tally, model, hw)
    assert priced["sim_seconds"] == pytest.approx(hand)
    assert priced["parts"]["overhead"] == pytest.approx(40 * 5.0e-5 + 6 * 2.0e-5)
    assert priced["extrapolated"] == [] and hw.gpu.name == "cpu-local@p.json"
    # AR on the same profile: L layer steps of one row, one head, L rounds and one exit read
    ar = cost.ar_breakdown(model, hw, 200)
    assert ar["seconds"] == pytest.approx(30 * 1.5e-3 + 8.0e-3 + 30 * 5.0e-5 + 2.0e-5)


def test_a_head_groups_refill_is_priced_at_the_runs_mean_layer_step(write):
    """`head_refill` layer steps per head group (the calls after a head refill the cache it evicted)."""
    model, hw = pricing.hardware("smollm2-135m", "cpu-local", profile=load_profile(write(profile_dict(head_refill=0.5))))
    tally = pricing.Tally(tokens=5, rounds=40, node_layers=7, weight_loads=4, head_evals=6, context_sum=7 * 200,
                          load_rows=np.array([0, 2, 1, 0, 1]), head_rows=np.array([0, 2, 0, 0, 1]),
                          layer_loads=np.zeros(31, np.int64), layer_rows=np.zeros(31, np.int64))
    layers = 2 * 1.5e-3 + 2.0e-3 + 5.0e-3
    priced = pricing.price(tally, model, hw)
    assert priced["parts"]["heads"] == pytest.approx(2 * 8.0e-3 + 11.0e-3 + 0.5 * 3 * layers / 4)
    assert cost.ar_breakdown(model, hw, 200)["heads"] == pytest.approx(8.0e-3 + 0.5 * 1.5e-3)
    assert load_profile(write(profile_dict(), "old.json")).head_refill == 0.0  # a profile that did not measure it
    # the roofline prices a device entry's refill the same way
    import dataclasses
    model, roof = pricing.hardware("smollm2-135m", "cpu-local")
    roof, refilled = (dataclasses.replace(roof, gpu=dataclasses.replace(roof.gpu, head_refill=x)) for x in (0.0, 0.5))
    a, b = pricing.price(tally, model, roof)["parts"], pricing.price(tally, model, refilled)["parts"]
    step = lambda r: cost.layer_time(model, roof, r, r * 200, seqs=1)  # noqa: E731  (whole steps: overhead too)
    assert b["heads"] - a["heads"] == pytest.approx(0.5 * 3 * (2 * step(1) + step(2) + step(4)) / 4)
    assert b["layers"] == a["layers"]


@pytest.mark.parametrize("name,kw", [("ar", {}), ("layerskip", {"exit": 9}), ("adaptive", {"exits": (9, 18)}),
                                     ("dex", {"explorers": 4, "buffer": 8, "exits": (9, 18, 24)})])
def test_the_des_charges_the_refill_as_lockstep_does_where_layer_steps_cost_the_same(write, name, kw):
    """With every layer step priced alike, a step's mean call is the run's: the DES, alone or in a
    micro-batch, adds exactly refill x head groups x one step, as lockstep pricing does."""
    from dexsim.des.record import record
    from dexsim.des.simulate import Load, simulate
    flat = {"layer_s": [[2.0e-3, 2.0e-3]] * 3}
    trace = first_tokens(first_seqs(load_trace(TRACE), 1), 8)  # one sequence: 2 requests of it = a batch of 2
    _, tally, log = record(trace, registry.make_policy(name, trace.L, **kw), pps=(1,))
    for batch, load in ((1, Load()), (2, Load(requests=2, rate=2, batch=2))):
        model, bare = pricing.hardware("smollm2-135m", "cpu-local", batch=batch,
                                       profile=load_profile(write(profile_dict(**flat), "flat.json")))
        _, hw = pricing.hardware("smollm2-135m", "cpu-local", batch=batch,
                                 profile=load_profile(write(profile_dict(**flat, head_refill=0.5), "refill.json")))
        groups = int(np.asarray(tally.head_rows)[1:].sum())
        lock = pricing.price(tally, model, hw)["sim_seconds"] - pricing.price(tally, model, bare)["sim_seconds"]
        des = simulate(log, model, hw, load).sim_seconds - simulate(log, model, bare, load).sim_seconds
        assert groups > 0 and lock == pytest.approx(0.5 * groups * 2.0e-3, rel=1e-9)
        assert des == pytest.approx(lock, rel=1e-9), batch


def test_cli_prices_from_the_profile_and_flags_extrapolation(write):
    path = write(profile_dict())
    run = run_cli("dexsim", ["replay", "--trace", TRACE, "--policy", "dex", "-k", "8", "--buffer", "16",
                             "--profile", path, "--json"])
    check_clean(run)
    out = json.loads(run.out)
    assert out["gpu"] == "cpu-local@p.json" and out["profile"] == path
    assert out["profile_extrapolated"] is True and "rows 1..8 outside the measured 1..4" in run.err  # 8 explorers
    run = run_cli("dexsim", ["cost", "--model", "smollm2-135m", "--profile", path, "--context", "200", "--json"])
    check_clean(run)
    out = json.loads(run.out)
    assert out["seconds_per_token"] == pytest.approx(30 * 1.5e-3 + 8.0e-3 + 30 * 5.0e-5 + 2.0e-5)
    assert out["profile_extrapolated"] is False


def test_sweep_prices_from_the_profile(write, tmp_path):
    path = write(profile_dict())
    out = tmp_path / "res"
    run = run_cli("dexsim", ["sweep", "--traces", TRACE, "--max-seqs", "1", "--max-tokens", "4", "--policies", "ar",
                             "--gpus", "cpu-local", "--pp", "1", "--scheduler", "lockstep", "--profile", path,
                             "--out", out, "--jobs", "1"])
    check_clean(run)
    assert run.rc == 0, run.err
    rows = [json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines()]
    assert rows and all(r["gpu"] == "cpu-local@p.json" for r in rows)
    trace = first_tokens(first_seqs(load_trace(TRACE), 1), 4)
    _, tally = pricing.replay_tally(trace, AR(trace.L))
    on = pricing.hardware("smollm2-135m", "cpu-local", profile=load_profile(path))
    assert rows[0]["sim_seconds"] == pytest.approx(pricing.price(tally, *on)["sim_seconds"])


BAD = [
    ("missing.json", None, ["missing.json", "no such"]),
    ("notjson.json", "{not json", ["notjson.json", "JSON"]),
    ("list.json", "[1, 2]", ["list.json", "JSON object"]),
    ("format.json", profile_dict(format="dex-profile/9"), ["format.json", "field format"]),
    ("nan.json", json.dumps(profile_dict(layer_s=[[1e-3, float("nan")], [1e-3, 1e-3], [1e-3, 1e-3]])),
     ["nan.json", "layer_s[0, 1]"]),
    ("negative.json", profile_dict(head_s=[8e-3, -1.0]), ["negative.json", "head_s[1]"]),
    ("hole.json", profile_dict(layer_s=[[1e-3, 2e-3], [1e-3, 2e-3]]), ["hole.json", "layer_s", "missing"]),
    ("rows.json", profile_dict(rows=[1, 4, 2]), ["rows.json", "field rows"]),
    ("host.json", profile_dict(host_round_s="fast"), ["host.json", "host_round_s"]),
    ("refill.json", profile_dict(head_refill=-0.1), ["refill.json", "head_refill"]),
    ("foreign.json", profile_dict(shape={"name": "x", "arch": {**ARCH, "hidden": 4096}}),
     ["foreign.json", "shape.arch.hidden", "another shape"]),
    ("noarch.json", profile_dict(shape={"name": "x"}), ["noarch.json", "shape.arch"]),
    ("rates.json", {"format": "dex-profile/1", "rates": {"peak_flops": 1e11}}, ["rates.json", "layer_s"]),
]


@pytest.mark.parametrize("name,content,names", BAD, ids=[b[0] for b in BAD])
def test_bad_or_foreign_profiles_are_one_line_exit_2(write, tmp_path, name, content, names):
    path = str(tmp_path / name) if content is None else write(content, name)
    for argv in (["replay", "--trace", TRACE, "--policy", "ar", "--profile", path],
                 ["cost", "--model", "smollm2-135m", "--profile", path],
                 ["sweep", "--traces", TRACE, "--max-seqs", "1", "--max-tokens", "2", "--policies", "ar",
                  "--gpus", "cpu-local", "--pp", "1", "--scheduler", "lockstep", "--profile", path,
                  "--out", tmp_path / f"out-{name}"]):
        run = run_cli("dexsim", argv)
        check_clean(run)
        if argv[0] == "sweep" and name == "foreign.json":  # a sweep skips a trace of another shape, with a note
            assert run.rc == 2 and "nothing to run" in error_line(run) and "shape.arch.hidden" in error_line(run)
            continue
        assert run.rc == 2, (argv, run.out[-300:])
        line = error_line(run)
        for n in names:
            assert n in line, (line, n)


def test_profile_on_other_hardware_settings_is_refused(write):
    path = write(profile_dict(catalog_gpu=None))
    run = run_cli("dexsim", ["replay", "--trace", TRACE, "--policy", "ar", "--profile", path])
    assert run.rc == 2 and "catalog_gpu" in error_line(run)
    run = run_cli("dexsim", ["replay", "--trace", TRACE, "--policy", "ar", "--profile", path, "--gpu", "a100-sxm4-80gb",
                             "--tp", "3"])
    assert run.rc == 2 and "--tp" in error_line(run)


def test_calibrate_writes_a_profile_the_cpu_local_entry_reads(tmp_path, monkeypatch, write):
    cache = tmp_path / "cache"
    out = cache / "dexsim" / "cpu-local.json"
    out.parent.mkdir(parents=True)
    run = run_cli("dexsim", ["calibrate", "--seconds", "0.3", "--out", out])
    check_clean(run)
    assert run.rc == 0, run.err
    d = json.loads(out.read_text())
    assert d["format"] == "dex-profile/1" and d["catalog_gpu"] == "cpu-local" and d["rates"]["memory_bandwidth"] > 0
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    gpu = get_gpu("cpu-local")
    assert gpu.memory_bandwidth == d["rates"]["memory_bandwidth"] and gpu.peak_flops == d["rates"]["peak_flops"]
    # a `dexref profile` file serves as the overlay too, with its host control terms
    full = profile_dict(rates=d["rates"], head_refill=0.4)
    out.write_text(json.dumps(full))
    gpu = get_gpu("cpu-local")
    assert gpu.round_overhead_s == 5.0e-5 and gpu.exit_overhead_s == 2.0e-5 and gpu.head_refill == 0.4
    out.write_text(json.dumps({"format": "dex-profile/1"}))
    run = run_cli("dexsim", ["gpus"])
    assert run.rc == 2 and "cpu-local.json" in error_line(run) and "rates" in error_line(run)


def test_sweep_rows_flag_extrapolation_once_per_sweep(write, tmp_path):
    """Every sweep row priced from a profile says whether it lies beyond the grid (lockstep and DES,
    its AR baseline included); the sweep says so in one stderr line; roofline rows leave it null."""
    path = write(profile_dict(contexts=[1, 100000]))  # only the rows can fall outside: 1..4 measured
    out = tmp_path / "res"
    argv = ["sweep", "--traces", TRACE, "--max-seqs", "2", "--max-tokens", "6", "--policies", "ar,dex",
            "--explorers", "2,8", "--exits", "every:8", "--gpus", "cpu-local", "--pp", "1", "--batch", "1,2",
            "--scheduler", "lockstep,des", "--jobs", "1"]
    run = run_cli("dexsim", [*argv, "--profile", path, "--out", out])
    check_clean(run)
    rows = json.loads((out / "sweep.json").read_text())
    assert {type(r["profile_extrapolated"]) for r in rows} == {bool}
    flagged = {(r["policy"], r["explorers"], r["batch"], r["scheduler"]) for r in rows if r["profile_extrapolated"]}
    assert all(r["profile_extrapolated"] is False for r in rows if r["policy"] == "ar")
    assert ("dex", 8, 2, "lockstep") in flagged and ("dex", 8, 2, "des") in flagged  # 8 explorers x batch 2 rows
    # a lockstep row's flag is the pricing's own
    trace = first_tokens(first_seqs(load_trace(TRACE), 2), 6)
    on = pricing.hardware("smollm2-135m", "cpu-local", batch=2, profile=load_profile(path))
    for r in rows:
        if r["scheduler"] == "lockstep" and r["batch"] == 2 and r["policy"] == "dex":
            _, tally = pricing.replay_tally(trace, registry.make_policy("dex", 30, exits=(8, 16, 24), explorers=r["explorers"],
                                                                        buffer=r["buffer"], priority=r["priority"]))
            assert r["profile_extrapolated"] == bool(pricing.price(tally, *on)["extrapolated"])
    lines = [x for x in run.err.splitlines() if "profile_extrapolated" in x]
    n_flagged = sum(r["profile_extrapolated"] for r in rows)
    assert len(lines) == 1 and f"{n_flagged} of {len(rows)} rows" in lines[0]
    assert "layer rows 1..8 outside the measured 1..4" in lines[0]
    csv_rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [c["profile_extrapolated"] for c in csv_rows] == [str(r["profile_extrapolated"]) for r in rows]
    # the roofline: no profile, nothing to flag (null in JSON, empty in csv), no note
    run = run_cli("dexsim", [*argv[:8], "ar", *argv[13:], "--out", tmp_path / "roof"])
    check_clean(run)
    assert all(r["profile_extrapolated"] is None for r in json.loads((tmp_path / "roof" / "sweep.json").read_text()))
    roof_csv = (tmp_path / "roof" / "sweep.csv").read_text().splitlines()
    assert all(c["profile_extrapolated"] == "" for c in csv.DictReader(roof_csv))
    assert "profile_extrapolated" not in run.err


def test_des_replay_flags_extrapolation(write):
    path = write(profile_dict())
    run = run_cli("dexsim", ["replay", "--trace", TRACE, "--policy", "dex", "-k", "8", "--buffer", "16",
                             "--profile", path, "--scheduler", "des", "--json"])
    check_clean(run)
    out = json.loads(run.out)
    assert out["profile"] == path and out["profile_extrapolated"] is True
    assert "head rows 1..8 outside the measured 1..4" in run.err  # 8 explorers read 8 exits in one round
    assert "per row outside the measured 100..300" in run.err  # the DES prices each step at its own context


def test_tune_trials_and_winners_carry_the_extrapolation_flag(write, tmp_path):
    """A tune priced from a profile: each trial (trials.csv/json) and each winner, in-sample and held
    out says whether it was priced beyond the profile's grid: here every one is (rows 2..4 measured, every
    run has steps of one row)."""
    pytest.importorskip("optuna")
    path = write(profile_dict(contexts=[1, 100000], rows=[2, 4], layer_s=[[1.5e-3, 2.5e-3], [3.0e-3, 7.0e-3]]))
    out = tmp_path / "tune"
    run = run_cli("dexsim", ["tune", "--trace", TRACE, "--gpu", "cpu-local", "--profile", path, "--policies", "dex",
                             "--explorers", "8", "--buffer", "8", "--trials", "3", "--max-seqs", "4",
                             "--max-tokens", "6", "--out", out])
    check_clean(run)
    trials = json.loads((out / "trials.json").read_text())
    assert trials and all(t["profile_extrapolated"] is True for t in trials)
    best = json.loads((out / "best.json").read_text())["best"]
    assert best and all(e[part]["profile_extrapolated"] is True for e in best for part in ("in_sample", "held_out"))
