"""`python -m dexsim tune`: it recovers an exit set planted in a synthetic trace, matches an exhaustive grid
over the same space with fewer replays, resumes a killed run without losing or repeating trials, runs
on a dask cluster, and exit sets follow the trace's recorded depths."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli.clirun import run_cli
from dexsim.core import registry
from dexsim.hardware.pricing import HardwareConfig
from dexsim.replay.executor import replay
from dexsim.sweep import tune as tuning
from dexsim.traces.format import load_trace, save_trace
from dexsim.traces.synth import synth_trace

optuna = pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[2]
# the EAD of every token at depth 12 or 24 (half each), nothing flickers: on a 4-stage pipeline the best DEX
# exit set is {12, 24} (and L) by construction: an exit below 12 never matches, one between the two or
# above 24 only repeats a guess already made, at the price of a head read
PLANTED = dict(depths="every:4", ead="points:12=0.5,24=0.5", flicker=0.0, seed=3)
SPACE = ["--policies", "dex", "--explorers", "2", "--buffer", "4", "--priorities", "deep"]
HW = ["--gpu", "a100-sxm4-80gb", "--pp", "4", "--scheduler", "des"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tune") / "planted.npz"
    save_trace(synth_trace("llama2-7b", 8, 32, **PLANTED), path)
    return str(path)


def _tune(trace, out, *extra) -> dict:
    run = run_cli("dexsim", ["tune", "--trace", trace, *HW, *SPACE, "--out", out, *extra])
    assert run.crash is None and run.rc == 0, run.err[-2000:]
    return json.loads((Path(out) / tuning.BEST_JSON).read_text())


def test_tune_recovers_the_planted_exit_set_and_beats_the_grid_with_fewer_replays(planted, tmp_path):
    best = _tune(planted, tmp_path / "t", "--trials", "40")
    (dex,) = best["best"]
    assert dex["params"]["exits"] == "12,24,32"
    # the exhaustive grid over the same space (every subset of the recorded depths below L), through the
    # same objective (a sweep row of the tuning half)
    s = tuning.resolve(tuning.TuneConfig(trace=planted, scheduler="des", policies="dex",
                                         axes={"explorers": "2", "buffer": "4", "priority": "deep"}, out=str(tmp_path)),
                       HardwareConfig(gpu="a100-sxm4-80gb", pp=4))
    grid, replays = [], 1  # the AR baseline
    for r in range(len(s.depths) + 1):
        for sub in itertools.combinations(s.depths, r):
            row, n = tuning.evaluate(tuning.row_spec(s, "dex", {"exits": (*sub, s.L), "explorers": 2, "buffer": 4,
                                                               "priority": "deep"}, s.halves[0]))
            grid.append((tuning.score(row, "tokens_per_s"), sub))
            replays += 1
    top, top_set = max(grid)
    assert top_set == (12, 24)
    assert dex["in_sample"]["value"] >= top * (1 - 1e-12)
    assert best["replays"]["search"] < replays == 129
    # and the winner was judged on the held-out half too
    assert dex["held_out"]["speedup_vs_ar"] > 1 and best["halves"]["held_out"]
    assert set(best["halves"]["tune"]).isdisjoint(best["halves"]["held_out"])


def test_every_trial_is_in_the_history_with_its_state_and_the_summary_names_each_family(planted, tmp_path):
    out = tmp_path / "all"
    run = run_cli("dexsim", ["tune", "--trace", planted, "--gpu", "a100-sxm4-80gb", "--trials", "25", "--out", out])
    assert run.rc == 0, run.err[-2000:]
    trials = json.loads((out / tuning.TRIALS_JSON).read_text())
    assert len(trials) == 25 and sorted(t["number"] for t in trials) == list(range(25))
    assert {t["state"] for t in trials} <= {"complete", "pruned"}
    assert all(t["value"] is not None and t["policy"] in tuning.families() for t in trials)
    assert (out / tuning.TRIALS_CSV).read_text().count("\n") == 26
    polish = [t for t in _finished(out).values() if "neighbour_of" in t.user_attrs]  # the last fifth
    assert polish and all(t.number >= 25 - int(tuning.POLISH * 25) for t in polish)
    best = json.loads((out / tuning.BEST_JSON).read_text())
    named = {e["policy"] for e in best["best"]}
    for e in best["best"]:
        assert e["configuration"] in run.out and {"in_sample", "held_out"} <= set(e)
        if named & {"layerskip", "adaptive"}:
            assert "vs_single" in e["held_out"]


def _finished(out: Path) -> dict:
    from optuna.storages.journal import JournalFileBackend
    try:
        study = optuna.load_study(study_name=tuning.STUDY,
                                  storage=optuna.storages.JournalStorage(JournalFileBackend(str(out / tuning.DB))))
    except KeyError:  # the journal is there, the study not yet written to it
        return {}
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def test_a_killed_tune_resumes_without_losing_or_repeating_trials(planted, tmp_path):
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "dexsim", "tune", "--trace", planted, *HW, *SPACE, "--out", str(out),
            "--trials", "40"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = lambda ts: [t for t in ts.values() if t.state.is_finished()]  # noqa: E731
    while time.time() < deadline and proc.poll() is None:
        if (out / tuning.DB).exists() and len(done(_finished(out))) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the tune finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _finished(out)
    kept = {n: (t.state, t.value, t.params) for n, t in before.items() if t.state.is_finished()}
    assert 6 <= len(kept) < 40
    run = run_cli("dexsim", ["tune", "--trace", planted, *HW, *SPACE, "--out", out, "--trials", "40", "--resume"])
    assert run.rc == 0, run.err[-2000:]
    after = _finished(out)
    for n, (state, value, params) in kept.items():  # nothing lost
        assert (after[n].state, after[n].value, after[n].params) == (state, value, params)
    finished = [t for t in after.values() if t.state in (optuna.trial.TrialState.COMPLETE,
                                                         optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 40  # nothing counted twice, nothing missing
    for n, t in before.items():  # a trial the kill interrupted is run again under the parameters it had
        if not t.state.is_finished():
            assert after[n].state == optuna.trial.TrialState.FAIL
            assert any(u.user_attrs.get("rerun_of") == n and t.params.items() <= u.params.items() for u in finished)
    trials = json.loads((out / tuning.TRIALS_JSON).read_text())
    assert sorted(t["number"] for t in trials) == sorted(t.number for t in finished)


def test_resume_after_a_kill_before_the_setting_was_written(planted, tmp_path):
    """The journal holds the study and one first guess, not yet its setting: --resume takes it as new."""
    from optuna.storages.journal import JournalFileBackend
    out = tmp_path / "early"
    out.mkdir()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / tuning.DB)))
    study = optuna.create_study(study_name=tuning.STUDY, storage=storage, direction="maximize")
    _tune(planted, tmp_path / "whole", "--trials", "4")  # a tune's first guesses, one of them queued already
    first = [t for t in _finished(tmp_path / "whole").values() if t.user_attrs.get("first_guess")]
    study.enqueue_trial(first[0].system_attrs["fixed_params"], user_attrs={"first_guess": True})
    assert _tune(planted, out, "--trials", "4", "--resume")["best"]
    trials = _finished(out)
    assert len([t for t in trials.values() if t.user_attrs.get("first_guess")]) == len(first)  # none twice
    assert json.loads((out / tuning.TRIALS_JSON).read_text())


def test_resume_refuses_another_setting(planted, tmp_path):
    out = tmp_path / "other"
    _tune(planted, out, "--trials", "3")
    run = run_cli("dexsim", ["tune", "--trace", planted, *HW, *SPACE, "--out", out, "--trials", "3", "--resume",
                             "--objective", "p99"])
    assert run.rc == 2 and "objective" in run.err and "--out" in run.err


def test_tune_on_a_dask_cluster_is_the_same_search(planted, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        here = _tune(planted, tmp_path / "dask", "--trials", "12", "--dask", c.scheduler_address)
    local = _tune(planted, tmp_path / "local", "--trials", "12")
    # one worker: trials are asked and told in the same order, so the same trials and values
    a = json.loads((tmp_path / "dask" / tuning.TRIALS_JSON).read_text())
    b = json.loads((tmp_path / "local" / tuning.TRIALS_JSON).read_text())
    assert [(t["number"], t["value"], t["state"]) for t in a] == [(t["number"], t["value"], t["state"]) for t in b]
    assert here["best"] == local["best"]


def test_sweep_on_a_dask_cluster_writes_the_same_rows(planted, tmp_path):
    distributed = pytest.importorskip("distributed")
    argv = ["sweep", "--traces", planted, "--policies", "ar,dex", "--explorers", "2", "--exits", "all;12,24",
            "--gpus", "a100-sxm4-80gb", "--pp", "1,4", "--max-seqs", "3"]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c:
        assert run_cli("dexsim", [*argv, "--out", tmp_path / "d", "--dask", c.scheduler_address]).rc == 0
    assert run_cli("dexsim", [*argv, "--out", tmp_path / "l", "--jobs", "1"]).rc == 0
    assert (tmp_path / "d" / "sweep.json").read_text() == (tmp_path / "l" / "sweep.json").read_text()


def test_exit_sets_follow_the_trace(tmp_path):
    path = tmp_path / "every3.npz"
    save_trace(synth_trace("smollm2-135m", 2, 12, depths="every:3", seed=4), path)
    trace = load_trace(path)
    for name in ("adaptive", "dex"):  # the library default is the recorded depths, not every layer
        policy = registry.make_policy(name, trace.L, depths=trace.depths)
        assert np.array_equal(policy.exits, trace.depths)
        assert replay(trace, policy).counters.totals()["tokens"] == trace.n_tokens
    for name in ("adaptive", "oracle-select", "dex"):
        run = run_cli("dexsim", ["replay", "--trace", path, "--policy", name, "--json"])
        assert run.rc == 0, run.err
        assert json.loads(run.out)["output_matches_trace"]
    run = run_cli("dexsim", ["replay", "--trace", path, "--policy", "dex", "--exits", "all", "--json"])
    assert json.loads(run.out)["exits"] == ",".join(map(str, trace.depths))


def test_settle_exit_sets_are_where_the_tokens_settle(planted):
    run = run_cli("dexsim", ["replay", "--trace", planted, "--policy", "dex", "--exits", "settle:2", "--json"])
    assert run.rc == 0 and json.loads(run.out)["exits"] == "12,24,32"
    run = run_cli("dexsim", ["replay", "--trace", planted, "--policy", "dex", "--exits", "settle:1", "--json"])
    assert json.loads(run.out)["exits"] in ("12,32", "24,32")
    run = run_cli("dexsim", ["replay", "--trace", planted, "--policy", "dex", "--exits", "settle:0"])
    assert run.rc == 2 and "--exits" in run.err


def test_tune_searches_eviction_and_it_reaches_the_core(tmp_path):
    """Eviction is a registry parameter: tune draws it (a trial fixed to "off" builds a DEX without it),
    and on a flickering trace with a small buffer the two settings replay differently."""
    trace = synth_trace("smollm2-135m", 4, 24, depths="every:3", flicker=0.6, seed=5)
    path = tmp_path / "flicker.npz"
    save_trace(trace, path)
    s = tuning.resolve(tuning.TuneConfig(trace=str(path), policies="dex", out=str(tmp_path)),
                       HardwareConfig(gpu="a100-sxm4-80gb"))
    fixed = {"policy": "dex", "dex.exits_n": 4, "dex.exit_0": 3, "dex.exit_1": 9, "dex.exit_2": 15,
             "dex.explorers": 2, "dex.buffer": 1, "dex.priority": "deep"}
    runs = {}
    for eviction in ("on", "off"):
        name, params = tuning.suggest(optuna.trial.FixedTrial({**fixed, "dex.eviction": eviction}), s)
        assert params["eviction"] == eviction
        policy = registry.make_policy(name, trace.L, depths=trace.depths, **params)
        assert policy.evict == (eviction == "on") and registry.policy_params(policy)["eviction"] == eviction
        runs[eviction] = replay(load_trace(path), policy).counters.totals()
    assert runs["on"]["tokens"] == runs["off"]["tokens"] == trace.n_tokens
    assert runs["on"] != runs["off"]


def test_the_neighbours_of_a_trial_are_one_step_away(planted, tmp_path):
    s = tuning.resolve(tuning.TuneConfig(trace=planted, policies="dex", out=str(tmp_path)),
                       HardwareConfig(gpu="a100-sxm4-80gb"))
    study = optuna.create_study(direction="maximize")
    fixed = {"policy": "dex", "dex.exits_n": 3, "dex.exit_0": 12, "dex.exit_1": 24, "dex.explorers": 2,
             "dex.buffer": 4, "dex.priority": "deep", "dex.eviction": "on"}
    study.enqueue_trial(fixed)
    trial = study.ask()
    tuning.suggest(trial, s)
    study.tell(trial, 1.0)
    got = tuning.neighbours(study.trials[0])
    changed = [{k: v for k, v in n.items() if fixed.get(k) != v} | {k: None for k in fixed if k not in n} for n in got]
    expect = [{"dex.exit_0": 8}, {"dex.exit_0": 16}, {"dex.exit_1": 20}, {"dex.exit_1": 28},
              {"dex.explorers": 1}, {"dex.explorers": 3}, {"dex.buffer": 3}, {"dex.buffer": 5},
              *({"dex.priority": p} for p in ("eager", "align", "confident")), {"dex.eviction": "off"},
              {"dex.exits_n": 4}, {"dex.exits_n": 2, "dex.exit_1": None}]
    assert sorted(map(json.dumps, changed)) == sorted(map(json.dumps, expect))
