"""`python -m dexsim sweep --scheduler lockstep,des`: DES rows beside unchanged lockstep rows, loads,
resume, and bad flags."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dexsim.core.lattice import ACCEPTANCE, acceptance

from dexsim.sweep import run as sweep_run
from dexsim.cli.main import main
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import save_trace

GRID = ["--policies", "ar,layerskip,oracle-select,dex", "--explorers", "2", "--exits", "every:8", "--priorities", "deep",
        "--drafts", "1", "--gpus", "a100-sxm4-80gb", "--pp", "1,2", "--batch", "1,2", "--max-tokens", "0", "--jobs", "1"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    save_trace(synth_trace("llama2-7b", 2, 10, ead="beta:1.4,1.8", seed=2), d / "b.npz")
    return str(d / "*.npz")


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "sweep.jsonl").read_text().splitlines()]


def test_des_rows_beside_unchanged_lockstep_rows(traces, tmp_path, capsys):
    assert main(["sweep", "--traces", traces, "--out", str(tmp_path / "l"), *GRID, "--scheduler", "lockstep"]) == 0
    lock = _rows(tmp_path / "l")
    assert main(["sweep", "--traces", traces, "--out", str(tmp_path / "d"), *GRID, "--scheduler", "lockstep,des",
                 "--arrival", "closed,poisson:30"]) == 0
    out = capsys.readouterr().out
    rows = _rows(tmp_path / "d")
    both = {r["key"]: r for r in rows}
    # every lockstep row is there with the same key and the same figures
    assert all(both[r["key"]] == r for r in lock)
    des = [r for r in rows if r["scheduler"] == "des"]
    assert len(des) == 2 * len(lock) and len(rows) == 3 * len(lock)
    for r in des:
        assert r["requests"] == 2 and r["arrival"] in (f"closed:{r['batch']}", "poisson:30")
        assert r["output_matches_trace"] and r["tokens"] == 20  # each sequence once
        assert len(r["utilization"]) == r["pp"] and r["p50_token_latency_s"] <= r["p99_token_latency_s"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["sim_seconds"])
        assert {k: r[k] for k in ACCEPTANCE} == acceptance(r)  # of the requests' counters
        if r["policy"] == "ar":
            assert r["speedup_vs_ar"] == 1.0
    for r in lock:
        assert r["p50_token_latency_s"] is None and r["utilization"] is None
    # one device, one request at a time: des prices what lockstep prices (per token)
    for r in des:
        if r["pp"] == 1 and r["batch"] == 1 and r["arrival"] == "closed:1":
            twin = next(x for x in lock if x["key"] == r["key"].replace("|arrival=closed:1|requests=2", "")
                        .replace("scheduler=des", "scheduler=lockstep"))
            assert r["tokens_per_s"] == pytest.approx(twin["tokens_per_s"], rel=1e-9)
    assert "des closed:2" in out and "lockstep, des" in out
    # resume: nothing left to replay
    ran = []
    real = sweep_run.run_job
    sweep_run.run_job = lambda job: ran.append(job) or real(job)
    try:
        assert main(["sweep", "--traces", traces, "--out", str(tmp_path / "d"), *GRID, "--scheduler", "lockstep,des",
                     "--arrival", "closed,poisson:30", "--resume"]) == 0
    finally:
        sweep_run.run_job = real
    assert ran == [] and _rows(tmp_path / "d") == rows


@pytest.mark.parametrize("flags,names", [(["--scheduler", "fifo"], "--scheduler"),
                                         (["--scheduler", "lockstep", "--arrival", "poisson:3"], "--arrival"),
                                         (["--scheduler", "lockstep", "--requests", "4"], "--requests"),
                                         (["--scheduler", "des", "--arrival", "closed:x"], "--arrival")])
def test_bad_sweep_des_flags(traces, tmp_path, flags, names, capsys):
    assert main(["sweep", "--traces", traces, "--out", str(tmp_path), *GRID, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err
