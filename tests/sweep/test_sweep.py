"""`python -m dexsim sweep`: the rows of a small grid, resume, SIGKILL-then-resume, and --jobs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dexsim.core.lattice import ACCEPTANCE, acceptance
from dexsim.sweep import grid
from dexsim.sweep.rows import row_problem
from dexsim.sweep import run as sweep_run
from dexsim.sweep.store import FILES
from dexsim.traces.transforms import first_seqs
from dexsim.cli.main import main
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import save_trace

GPUS = "a100-sxm4-80gb,l4-24gb"
GRID = ["--policies", "ar,layerskip,adaptive,oracle-select,dex", "--explorers", "1,3", "--exits", "every:10,all",
        "--priorities", "eager,deep", "--drafts", "1,2", "--gpus", GPUS, "--max-tokens", "0",
        "--pp", "1", "--scheduler", "lockstep"]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    save_trace(synth_trace("smollm2-135m", 2, 10, depths="every:2", ead="beta:3,1.3,0.3", seed=1), d / "a.npz")
    # recorded every 4 layers: the `all` exit set is every recorded depth, every:10 is not recorded
    save_trace(synth_trace("llama2-7b", 2, 10, depths="every:4", ead="beta:1.4,1.8", seed=2), d / "b.npz")
    return str(d / "*.npz")


def _sweep(capsys, traces, out, *extra) -> str:
    assert main(["sweep", "--traces", traces, "--out", str(out), *GRID, *extra]) == 0
    return capsys.readouterr().out


def _files(out) -> dict:
    return {name: (Path(out) / name).read_bytes() for name in FILES}


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "sweep.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(traces, tmp_path_factory):
    """One uninterrupted --jobs 1 run of GRID: its files and its printed table."""
    out = tmp_path_factory.mktemp("ref")
    assert main(["sweep", "--traces", traces, "--out", str(out), *GRID, "--jobs", "1"]) == 0
    return out


def test_rows_of_a_small_grid(reference):
    rows = _rows(reference)
    # a (L=30, every 2 layers): ar + 2 layerskip + 2 adaptive + 2 oracle-select + 8 dex = 15 configurations;
    # b (every 4 layers): every:10 is skipped, so ar + 2 + 1 + 1 + 4 = 9; each on 2 GPUs
    assert len(rows) == (15 + 9) * 2
    assert len({r["key"] for r in rows}) == len(rows)
    assert all(r["output_matches_trace"] for r in rows) and all(r["tokens"] == 20 for r in rows)
    assert all(r["scheduler"] == "lockstep" and r["batch"] == 1 for r in rows)
    for r in rows:
        if r["policy"] == "ar":
            assert r["speedup_vs_ar"] == 1.0
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["sim_seconds"])
    # oracle-select is the best of its candidates (ar and layerskip at each depth) on each GPU
    by = {}
    for r in rows:
        by.setdefault((r["trace"], r["gpu"]), []).append(r)
    for rs in by.values():
        oracle = [r for r in rs if r["policy"] == "oracle-select" and r["exits"] == "all"]
        assert oracle and oracle[0]["oracle_policy"] in ("ar", "layerskip")
        assert all(oracle[0]["sim_seconds"] <= r["sim_seconds"] + 1e-12 for r in rs if r["policy"] in ("ar", "layerskip"))
    for r in rows:  # the acceptance figures are those of the row's own counters
        assert {k: r[k] for k in ACCEPTANCE} == acceptance(r)
        if r["policy"] == "ar":
            assert [r[k] for k in ACCEPTANCE] == [1.0, 0.0, 0.0, 0.0]
    assert max(r["accepted_per_verification"] for r in rows if r["policy"] == "layerskip") > 1
    csv_lines = (reference / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[0] == "key" and len(csv_lines) == len(rows) + 1
    assert json.loads((reference / "sweep.json").read_text()) == rows


def test_resume_checks_the_acceptance_columns(reference):
    row = _rows(reference)[0]
    assert row_problem(row) is None
    for bad in ("1.5", None, True, float("nan")):
        assert "field branch_reuse_share" in row_problem({**row, "branch_reuse_share": bad})
    assert "field commit_rounds" in row_problem({**row, "commit_rounds": -1})
    assert row_problem({k: v for k, v in row.items() if k != "anchor_head_start"}) == \
        "other columns than this version writes"


def test_table_names_best_per_trace_and_gpu(reference, traces, tmp_path, capsys):
    for name, data in _files(reference).items():
        (tmp_path / name).write_bytes(data)
    out = _sweep(capsys, traces, tmp_path, "--resume")  # every row is there: only the table
    lines = out.splitlines()
    assert any("vs single" in line for line in lines)
    for trace in ("a", "b"):
        for gpu in GPUS.split(","):
            assert any(line.startswith(trace + " ") and gpu in line for line in lines)


def test_jobs_2_equals_jobs_1(reference, traces, tmp_path, capsys):
    _sweep(capsys, traces, tmp_path, "--jobs", "2")
    assert _files(tmp_path) == _files(reference)


def test_resume_skips_rows_already_there(reference, traces, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    lines = (reference / "sweep.jsonl").read_text().splitlines(keepends=True)
    # the first rows of a run, then a torn last line (a kill in the middle of a write)
    (out / "sweep.jsonl").write_text("".join(lines[:10]) + lines[10][: len(lines[10]) // 2])
    ran = []
    real = sweep_run.run_job
    monkeypatch.setattr(sweep_run, "run_job", lambda job: ran.append(job) or real(job))
    _sweep(capsys, traces, out, "--resume", "--jobs", "1")
    assert _files(out) == _files(reference)
    first = len(ran)
    assert 0 < first
    ran.clear()
    _sweep(capsys, traces, out, "--resume", "--jobs", "1")  # complete: nothing left to replay
    assert ran == [] and _files(out) == _files(reference)
    # without --resume the folder starts over
    _sweep(capsys, traces, out, "--jobs", "1")
    assert len(ran) > first and _files(out) == _files(reference)


def test_sigkill_then_resume_gives_the_rows_of_an_uninterrupted_run(reference, traces, tmp_path, capsys):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "dexsim", "sweep", "--traces", traces, "--out", str(out), *GRID, "--jobs", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl = out / "sweep.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    partial = jsonl.read_bytes().count(b"\n")
    assert 4 <= partial < len(_rows(reference))
    _sweep(capsys, traces, out, "--resume", "--jobs", "1")
    assert _files(out) == _files(reference)


BAD = [
    (["--policies", "ar,beam"], "--policies"),
    (["--explorers", "0"], "--explorers"),
    (["--explorers", "x"], "--explorers"),
    (["--priorities", "random"], "--priorities"),
    (["--gpus", "tpu-v9"], "--gpus"),
    (["--exits", "every:0"], "--exits"),
    (["--exits", "4,8,all"], "--exits"),
    (["--thresholds", "1.5"], "--thresholds"),
    (["--tp", "0"], "--tp"),
    (["--jobs", "0"], "--jobs"),
    (["--models", "gpt-7"], "--models"),
    (["--traces", "/nonexistent/*.npz"], "--traces"),
    (["--max-seqs", "-1"], "--max-seqs"),
    (["--policies", "layerskip", "--exit", "40"], "--exit 40"),
    (["--policies", "dex", "--priorities", "eager,fast"], "--priorities"),
    (["--policies", "adaptive", "--buffer", "-1"], "--buffer"),
]


@pytest.mark.parametrize("flags,name", BAD)
def test_bad_flags_are_one_line_and_status_2(traces, tmp_path, flags, name, capsys):
    assert main(["sweep", "--traces", traces, "--out", str(tmp_path), "--policies", "ar", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and "Traceback" not in err


def test_configurations_that_cannot_run_are_skipped_with_a_note(traces, tmp_path, capsys):
    # smollm2 has 9 attention heads: tp 2 cannot split them; llama2-7b can
    assert main(["sweep", "--traces", traces, "--out", str(tmp_path), "--policies", "ar,dex", "--exits", "all",
                 "--explorers", "2", "--priorities", "eager", "--gpus", "h100-sxm5-80gb", "--tp", "1,2",
                 "--pp", "1,2", "--batch", "1,4", "--jobs", "1", "--scheduler", "lockstep"]) == 0
    captured = capsys.readouterr()
    assert "note: skipped smollm2-135m on h100-sxm5-80gb tp=2" in captured.err
    rows = _rows(tmp_path)
    assert len(rows) == 2 * (4 + 8)  # (ar, dex) x (a: tp 1 only; b: tp 1, 2) x pp x batch
    assert all(r["output_matches_trace"] for r in rows)
    for r in rows:
        if r["policy"] == "ar":
            assert r["speedup_vs_ar"] == 1.0


def test_max_seqs_replays_the_first_sequences_and_is_in_the_key(traces, tmp_path, capsys):
    flags = ["--policies", "ar", "--gpus", "a100-sxm4-80gb", "--pp", "1", "--scheduler", "lockstep", "--jobs", "1",
             "--max-tokens", "0"]
    assert main(["sweep", "--traces", traces, "--out", str(tmp_path / "all"), *flags, "--max-seqs", "0"]) == 0
    assert main(["sweep", "--traces", traces, "--out", str(tmp_path / "one"), *flags, "--max-seqs", "1"]) == 0
    capsys.readouterr()
    every, first = _rows(tmp_path / "all"), _rows(tmp_path / "one")
    assert [r["tokens"] for r in every] == [20, 20] and [r["tokens"] for r in first] == [10, 10]
    assert all(r["max_seqs"] is None and "max_seqs" not in r["key"] for r in every)
    assert all(r["max_seqs"] == 1 and "|max_seqs=1|" in r["key"] for r in first)
    trace = grid.loaded(sorted(Path(traces).parent.glob("*.npz"))[0].as_posix())
    cut = first_seqs(trace, 1)
    assert cut.n_seqs == 1 and cut.n_tokens == trace.seq_offsets[1] and cut.meta["sha256"] != trace.meta["sha256"]
    assert first_seqs(trace, 5) is trace


def test_default_traces_are_the_recorded_ones_the_trained_heads_and_a_synthetic_one_and_exist():
    # issue 17: the first run shows where DEX wins (trained exit heads; an early-exit-trained synthetic
    # profile, labelled synthetic) and where it does not (the logit-lens recordings)
    root = Path(grid.__file__).resolve().parents[2]
    paths = grid.default_traces_glob().split(",")
    assert len(paths) == len(grid.DEFAULT_TRACES) >= 5
    kinds = []
    for path in paths:
        t = grid.loaded(str(root / path) if not os.path.isabs(path) else path)
        assert t.n_seqs >= grid.SweepConfig.max_seqs
        kinds.append((t.meta["synthetic"], t.meta["heads"].split(":")[0]))
    assert kinds.count((False, "lens")) >= 3 and (False, "trained") in kinds and kinds.count((True, "lens")) == 1


def test_the_summary_answers_ar_best_single_best_dex_and_the_ceiling(traces, tmp_path, capsys, monkeypatch):
    from dexsim.cli import sweep as sweep_cli
    monkeypatch.setattr(sweep_cli, "PLOTS_BY_DEFAULT", True)
    argv = ["sweep", "--traces", traces, "--out", str(tmp_path), "--policies", "ar,layerskip,dex",
            "--exits", "all,settle:2", "--explorers", "2", "--gpus", "l4-24gb", "--pp", "1,4",
            "--scheduler", "lockstep,des", "--jobs", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("trace "))
    for column in ("L/EAD", "ar tok/s", "best single-depth", "best dex", "vs single"):
        assert column in head
    rows = json.loads((tmp_path / "sweep.json").read_text())
    for name in ("a", "b"):
        t = grid.loaded(str(Path(traces).parent / f"{name}.npz"))
        ceiling = t.L / t.depths[(t.exit_tokens == t.final[:, None]).argmax(axis=1)].mean()
        lines = [line for line in out.splitlines() if line.startswith(f"{name} (synthetic)")]
        assert len(lines) == 4 and all(f"{ceiling:.2f}x" in line for line in lines)
        dex = [r for r in rows if r["trace"] == f"{name}.npz" and r["policy"] == "dex"]
        best = max(dex, key=lambda r: r["tokens_per_s"] if r["pp"] == 4 and r["scheduler"] == "des" else 0)
        assert f"{best['speedup_vs_ar']:.3f}x" in out  # shown even when below 1
        settle = [r for r in dex if r["exits"] == "settle:2"]
        assert settle  # settle:2 resolved on each trace
    assert "plot: " in out and list((tmp_path / "plots").glob("*.png"))
