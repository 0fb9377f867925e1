"""Issue 19's 35 holes, one test each: every one of these inputs once ended in a traceback, was silently
accepted or blamed a flag never given. Now: exit 2 and one line naming the flag, file or field
(or, where the input is fine, exit 0 with the right output)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from clirun import check_clean, error_line, run_cli
from dexsim.traces.format import ARRAYS, Trace, save_trace, trace_checksum
from dexsim.traces.synth import synth_trace

SW = ["--policies", "ar,dex", "--explorers", "4", "--exits", "all", "--gpus", "a100-sxm4-80gb", "--pp", "1",
      "--scheduler", "lockstep", "--jobs", "1"]


def unwritable(tmp: Path) -> Path:
    """A folder no file can be created in: read-only permissions, or, as root (who ignores them), /sys."""
    if os.geteuid() == 0:
        return Path("/sys")
    d = tmp / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def _raw(path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(str(arrays.pop("meta")))


def meta_variant(src: str, dst: Path, change) -> str:
    """`src` with its meta changed by `change(meta)` and the checksum made right again."""
    arrays, meta = _raw(src)
    change(meta)
    meta["sha256"] = trace_checksum(Trace(**{k: arrays[k] for k in ARRAYS}, meta=meta))
    np.savez(dst, **arrays, meta=np.array(json.dumps(meta)))
    return str(dst)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("holes")


@pytest.fixture(scope="module")
def trace(work) -> str:
    path = work / "small.npz"
    save_trace(synth_trace("smollm2-135m", 2, 12, depths="every:6", seed=1), path)
    return str(path)


@pytest.fixture(scope="module")
def results(work, trace) -> Path:
    out = work / "results"
    assert run_cli("dexsim", ["sweep", "--traces", trace, *SW, "--out", out]).rc == 0
    return out


@pytest.fixture(scope="module")
def events(work, trace) -> str:
    path = work / "ev.npz"
    assert run_cli("dexsim", ["replay", "--trace", trace, "--policy", "dex", "--events", path]).rc == 0
    return str(path)


def damaged_results(results: Path, dst: Path, change) -> Path:
    """A copy of the results folder whose first jsonl line is `change(bytes)`."""
    shutil.copytree(results, dst)
    lines = (dst / "sweep.jsonl").read_bytes().splitlines(keepends=True)
    (dst / "sweep.jsonl").write_bytes(change(lines[0]) + b"".join(lines[1:]))
    return dst


def set_field(name, value):
    def change(line: bytes) -> bytes:
        row = json.loads(line)
        row[name] = value
        return (json.dumps(row) + "\n").encode()
    return change


def events_variant(src: str, dst: Path, change) -> str:
    with np.load(src) as z:
        ev, meta = z["events"].copy(), str(z["meta"])
    change(ev)
    np.savez(dst, events=ev, meta=np.array(meta))
    return str(dst)


def refused(prog, argv, *names) -> str:
    run = run_cli(prog, argv)
    check_clean(run)
    assert run.rc == 2, f"{argv}: accepted\n{run.out[-500:]}"
    line = error_line(run)
    for n in names:
        assert str(n) in line, f"{line!r} does not name {n!r}"
    return line


# ---------------------------------------------------------------------------- traces: meta

def test_01_meta_heads_an_integer(work, trace):
    bad = meta_variant(trace, work / "heads.npz", lambda m: m.update(heads=3))
    refused("dexsim", ["replay", "--trace", bad, "--gpu", "a100-sxm4-80gb"], bad, "meta.heads")


def test_02_meta_arch_vocab_huge(work, trace):
    bad = meta_variant(trace, work / "vocab.npz", lambda m: m["arch"].update(vocab=10**30))
    refused("dexsim", ["replay", "--trace", bad], bad, "meta.arch.vocab")


def test_03_meta_model_unknown_is_priced_from_its_arch_or_names_the_field(work, trace):
    # a model outside the catalog is priced from the trace's meta.arch (a dexref recording of a checkpoint)
    own = meta_variant(trace, work / "unknown.npz", lambda m: m.update(model="nope"))
    run = run_cli("dexsim", ["sweep", "--traces", own, *SW, "--out", work / "r3"])
    check_clean(run)
    assert run.rc == 0 and "nope" in (work / "r3" / "sweep.csv").read_text()
    assert run_cli("dexsim", ["replay", "--trace", own, "--gpu", "l4-24gb"]).rc == 0
    # ... and where its arch cannot price it, the line names the trace's field, never a flag not given
    bad = meta_variant(trace, work / "unpriced.npz", lambda m: (m.update(model="nope"), m["arch"].update(dtype="q3")))
    line = refused("dexsim", ["sweep", "--traces", bad, *SW, "--out", work / "r3b"], bad, "meta.arch", "nope")
    assert "--model:" not in line and "--models:" not in line
    assert run_cli("dexsim", ["replay", "--trace", bad]).rc == 0  # unpriced: no model needed
    refused("dexsim", ["replay", "--trace", bad, "--gpu", "l4-24gb"], bad, "meta.arch")


def test_04_meta_model_null(work, trace):
    bad = meta_variant(trace, work / "null.npz", lambda m: m.update(model=None))
    refused("dexsim", ["sweep", "--traces", bad, *SW, "--out", work / "r4"], bad, "meta.model")


# ---------------------------------------------------------------------------- sizes before allocating

def test_05_replay_buffer_huge(trace):
    refused("dexsim", ["replay", "--trace", trace, "--buffer", "100000000000"], "--buffer 100000000000")


def test_06_replay_draft_huge(trace):
    refused("dexsim", ["replay", "--trace", trace, "--policy", "layerskip", "--draft", "1000000000"],
            "--draft 1000000000")


def test_07_synth_seqs_huge(work):
    refused("dexsim", ["synth", "--model", "smollm2-135m", "--seqs", "100000000000", "--tokens", "8",
                       "--out", work / "x.npz"], "--seqs 100000000000")


def test_08_animate_dpi_huge(work, trace):
    refused("viz", ["animate", "--trace", trace, "--dpi", "100000", "--out", work / "a.gif"], "--dpi 100000")


def test_09_cost_context_huge_is_a_memory_check():
    refused("dexsim", ["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb", "--context", "1000000000000"],
            "--context 1000000000000")


def test_10_cost_batch_huge_blames_batch():
    line = refused("dexsim", ["cost", "--model", "llama2-7b", "--gpu", "a100-sxm4-80gb", "--batch", "1000000000"],
                   "--batch 1000000000")
    assert not line.startswith("error: --tp")


# ---------------------------------------------------------------------------- seeds

@pytest.mark.parametrize("seed", ["-1", str(2**70)])
@pytest.mark.parametrize("command", ["replay", "sweep", "synth"])
def test_11_to_16_seed_out_of_range(work, trace, command, seed):
    argv = {"replay": ["replay", "--trace", trace],
            "sweep": ["sweep", "--traces", trace, *SW, "--out", work / "rs"],
            "synth": ["synth", "--model", "smollm2-135m", "--seqs", "1", "--tokens", "4", "--out", work / "s.npz"]}
    refused("dexsim", [*argv[command], "--seed", seed], f"--seed {seed}")


def test_seed_largest_allowed_runs(trace):
    assert run_cli("dexsim", ["replay", "--trace", trace, "--seed", str(2**63 - 1)]).rc == 0


# ---------------------------------------------------------------------------- sweep --resume

def test_17_resume_non_utf8(work, results, trace):
    out = damaged_results(results, work / "r17", lambda b: b[:5] + b"\xff\xfe" + b[5:])
    refused("dexsim", ["sweep", "--traces", trace, *SW, "--resume", "--out", out], "sweep.jsonl", "line 1", "UTF-8")


def test_18_resume_list_key(work, results, trace):
    out = damaged_results(results, work / "r18", set_field("key", [1, 2]))
    refused("dexsim", ["sweep", "--traces", trace, *SW, "--resume", "--out", out], "sweep.jsonl", "line 1",
            "field key")


def test_19_resume_null_key_is_refused_not_recomputed(work, results, trace):
    out = damaged_results(results, work / "r19", set_field("key", None))
    refused("dexsim", ["sweep", "--traces", trace, *SW, "--resume", "--out", out], "line 1", "field key")
    assert (out / "sweep.jsonl").read_text().count("\n") == (results / "sweep.jsonl").read_text().count("\n")


def test_20_resume_tokens_not_a_number(work, results, trace):
    out = damaged_results(results, work / "r20", set_field("tokens", "many"))
    refused("dexsim", ["sweep", "--traces", trace, *SW, "--resume", "--out", out], "line 1", "field tokens")


def test_20b_resume_field_disagreeing_with_its_key(work, results, trace):
    out = damaged_results(results, work / "r20b", set_field("gpu", "l4-24gb"))
    refused("dexsim", ["sweep", "--traces", trace, *SW, "--resume", "--out", out], "line 1", "field gpu")


def test_21_resume_foreign_grid_needs_force(work, results, trace):
    out = work / "r21"
    shutil.copytree(results, out)
    other = ["sweep", "--traces", trace, *SW, "--policies", "ar,layerskip", "--drafts", "1", "--resume", "--out", out]
    refused("dexsim", other, "sweep.jsonl", "another grid", "--force")
    run = run_cli("dexsim", [*other, "--force"])
    check_clean(run)
    assert run.rc == 0
    rows = [json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines()]
    assert sorted(r["policy"] for r in rows) == ["ar", "dex", "dex", "layerskip"]  # ar shared, dex kept by --force


# ---------------------------------------------------------------------------- viz sweep

def test_22_viz_sweep_binary_csv(work):
    d = work / "vb"
    d.mkdir()
    (d / "sweep.csv").write_bytes(bytes(range(256)) * 2)
    refused("viz", ["sweep", d], "sweep.csv", "UTF-8")


def test_23_viz_sweep_non_utf8_jsonl(work):
    d = work / "vj"
    d.mkdir()
    (d / "sweep.jsonl").write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    refused("viz", ["sweep", d], "sweep.jsonl", "line 2")


def test_24_viz_sweep_non_numeric_tokens_per_s(work, results):
    out = damaged_results(results, work / "v24", set_field("tokens_per_s", "fast"))
    refused("viz", ["sweep", out / "sweep.jsonl", "--out", work / "v24plots"], "sweep.jsonl", "tokens_per_s")
    assert not (work / "v24plots").exists() or not list((work / "v24plots").iterdir())


# ---------------------------------------------------------------------------- viz animate --events

@pytest.mark.parametrize("field,value,names", [
    ("node", 9999, ("events.node",)), ("parent", 9999, ("events.parent",)),
    ("kind", 77, ("events.kind",)), ("depth", 99, ("events.depth", "meta.L"))],
    ids=["25-node", "25-parent", "26-kind", "27-depth"])
def test_25_to_27_events_out_of_range(work, events, field, value, names):
    def change(ev):
        ev[field][:5] = value
    bad = events_variant(events, work / f"ev_{field}.npz", change)
    line = refused("viz", ["animate", "--events", bad, "--out", work / "e.gif"], bad, *names)
    assert "--start" not in line


# ---------------------------------------------------------------------------- output paths

def test_28_replay_events_folder(work, trace):
    d = work / "evdir"
    d.mkdir()
    refused("dexsim", ["replay", "--trace", trace, "--events", d], "--events", d)
    assert not Path(f"{d}.npz").exists()


def test_28b_replay_events_written_at_exactly_that_path(work, trace):
    path = work / "events-without-suffix"
    assert run_cli("dexsim", ["replay", "--trace", trace, "--events", path]).rc == 0
    assert path.is_file() and not Path(f"{path}.npz").exists()


def test_29_sweep_out_empty(trace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused("dexsim", ["sweep", "--traces", trace, *SW, "--out", ""], "--out")
    assert not list(tmp_path.iterdir())


def test_30_calibrate_out_unwritable_before_measuring(tmp_path):
    refused("dexsim", ["calibrate", "--seconds", "30", "--out", unwritable(tmp_path) / "p.json"], "--out")


def test_31_proofs_workers_zero():
    refused("proofs", ["--workers", "0"], "--workers 0")


def test_32_proofs_unknown_flag_is_one_line():
    refused("proofs", ["--bogus"], "--bogus")


def test_33_draft_zero_is_the_same_in_replay_and_sweep(work, trace):
    """--draft 0 (LayerSkip verifying no drafts) is allowed by both, with the same counters."""
    run = run_cli("dexsim", ["replay", "--trace", trace, "--policy", "layerskip", "--exit", "12", "--draft", "0",
                             "--json"])
    assert run.rc == 0
    one = json.loads(run.out)
    out = work / "r33"
    assert run_cli("dexsim", ["sweep", "--traces", trace, *SW, "--policies", "layerskip", "--exit", "12",
                              "--drafts", "0", "--max-tokens", "0", "--out", out]).rc == 0
    (row,) = [r for r in json.loads((out / "sweep.json").read_text()) if r["policy"] == "layerskip"]
    assert row["draft"] == 0 and all(row[k] == one[k] for k in ("tokens", "rounds", "weight_loads"))


def test_34_dexref_record_out_unwritable_before_recording(tmp_path):
    pytest.importorskip("torch")
    refused("dexref", ["record", "--dataset", "humaneval", "--limit", "1", "--max-new-tokens", "2",
                       "--out", unwritable(tmp_path) / "t.npz"], "--out")


def test_35_trace_out_unwritable_before_simulating(trace, tmp_path):
    pytest.importorskip("simpy")
    refused("dexsim", ["replay", "--trace", trace, "--gpu", "a100-sxm4-80gb", "--scheduler", "des",
                       "--trace-out", unwritable(tmp_path) / "c.json"], "--trace-out")


# ---------------------------------------------------------------------------- found after the issue
# by the property suite (test_bad_input_props.py) and a second tried-as-a-new-user pass

def test_empty_flag_value_names_the_flag(trace):
    refused("dexsim", ["replay", "--trace", ""], "--trace", "empty")
    refused("dexsim", ["replay", "--trace", trace, "--gpu", ""], "--gpu", "empty")
    refused("viz", ["sweep", ""], "results", "empty")


def test_a_line_break_in_a_path_stays_one_line(work):
    line = refused("dexsim", ["replay", "--trace", str(work / "two\nlines\x85.npz")], "two\\nlines\\x85")
    assert "\n" not in line


@pytest.mark.parametrize("flag,value", [("--model", "nope"), ("--heads", "0"), ("--heads", "trained:")])
def test_synth_names_its_flags(work, flag, value):
    refused("dexsim", ["synth", "--model", "smollm2-135m", "--seqs", "1", "--tokens", "2", "--out", work / "n.npz",
                       flag, value], flag)


def test_des_requests_huge(trace):
    pytest.importorskip("simpy")
    refused("dexsim", ["replay", "--trace", trace, "--gpu", "l4-24gb", "--scheduler", "des", "--requests",
                       "100000000000"], "--requests 100000000000")


def test_resume_json_nested_too_deeply(work, results, trace):
    out = damaged_results(results, work / "deep", lambda b: b"[" * 100000 + b"\n")
    refused("dexsim", ["sweep", "--traces", trace, *SW, "--resume", "--out", out], "line 1", "not JSON")
    refused("viz", ["sweep", out / "sweep.jsonl"], "sweep.jsonl")


def test_calibrate_seconds_inf_is_refused_not_run_forever(work):
    refused("dexsim", ["calibrate", "--seconds", "inf", "--out", work / "p.json"], "--seconds")


@pytest.mark.parametrize("profile,field", [('{"peak_flops": "fast"}', "peak_flops"),
                                           ('{"memory_bytes": 0}', "memory_bytes"),
                                           ('{"interconnect": 5}', "interconnect"), ("[1]", "JSON object")])
def test_cpu_local_profile_with_wrong_types(work, trace, monkeypatch, profile, field):
    cache = work / f"cache-{field}"
    (cache / "dexsim").mkdir(parents=True)
    (cache / "dexsim" / "cpu-local.json").write_text(profile)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for argv in (["gpus"], ["cost", "--model", "smollm2-135m", "--gpu", "cpu-local"],
                 ["replay", "--trace", trace, "--gpu", "cpu-local"]):
        refused("dexsim", argv, "cpu-local.json", field)


@pytest.mark.parametrize("flag,value", [("--fps", "1e-9"), ("--dpi", "0.001"), ("--fps", "inf")])
def test_animate_frames_that_cannot_be_written(work, trace, flag, value):
    refused("viz", ["animate", "--trace", trace, "--tokens", "1", "--out", work / "f.gif", flag, value], flag)


def test_a_catalog_model_of_another_depth_is_not_priced(work, trace):
    """A trace whose meta.model is a catalog model of other depth than the trace's (loadable: dexref's tests
    record tiny models that way) is not priced as that model: one line, naming the field and both depths."""
    bad = meta_variant(trace, work / "other-depth.npz", lambda m: m.update(model="llama2-7b"))
    assert run_cli("dexsim", ["replay", "--trace", bad]).rc == 0
    refused("dexsim", ["replay", "--trace", bad, "--gpu", "l4-24gb"], "meta.model", "32 layers", "records 30")
    refused("dexsim", ["sweep", "--traces", bad, *SW, "--out", work / "r-depth"], "meta.model", "records 30")
    run = run_cli("dexsim", ["replay", "--trace", bad, "--gpu", "l4-24gb", "--model", "smollm2-135m"])
    assert run.rc == 0, run.err  # mapped onto a model by relative depth: priced


def test_a_zip_member_flagged_encrypted(work, trace, events):
    """Found by the property suite under `thorough`: one flipped bit makes zipfile raise RuntimeError."""
    for src, prog, argv in ((trace, "dexsim", ["analyze", "--trace"]), (events, "viz", ["animate", "--events"])):
        data = bytearray(Path(src).read_bytes())
        data[6] |= 1  # the first member's local header: encrypted
        central = data.find(b"PK\x01\x02")
        data[central + 8] |= 1  # and its central directory entry
        bad = work / f"encrypted-{Path(src).name}"
        bad.write_bytes(bytes(data))
        refused(prog, [*argv, bad, *(["--out", work / "enc.gif"] if prog == "viz" else [])], bad)


def test_an_empty_argument_is_named():
    refused("proofs", ["--json", ""], "''")


def test_viz_sweep_text_column_holding_a_list(work, results):
    out = damaged_results(results, work / "v-list", set_field("model", [1]))
    refused("viz", ["sweep", out / "sweep.jsonl", "--out", work / "v-list-plots"], "sweep.jsonl", "field model")


def test_sweep_traces_matching_only_a_folder(work):
    refused("dexsim", ["sweep", "--traces", f"{work}/", *SW, "--out", work / "r-folder"], "--traces")


# ---------------------------------------------------------------------------- tune (issue 17)

TUNE = ["tune", "--gpu", "a100-sxm4-80gb", "--trials", "2"]


@pytest.mark.parametrize("argv, names", [
    (["--objective", "speed"], ["--objective", "speed"]),
    (["--trials", "0"], ["--trials"]),
    (["--exits", "5,12"], ["--exits", "depth 5", "small.npz"]),
    (["--exit", "5"], ["--exit 5", "small.npz"]),
    (["--objective", "p99"], ["--objective", "--scheduler des"]),
    (["--policies", "oracle-select"], ["--policies", "oracle-select"]),
    (["--explorers", "0"], ["--explorers"]),
    (["--max-seqs", "1"], ["--max-seqs"]),
    (["--model", "nope"], ["--model"]),
])
def test_tune_bad_flags(trace, tmp_path, argv, names):
    refused("dexsim", [*TUNE, "--trace", trace, "--out", tmp_path / "t", *argv], *names)
    assert not (tmp_path / "t").exists()


def test_tune_without_trace_or_gpu(trace, tmp_path):
    refused("dexsim", ["tune", "--gpu", "a100-sxm4-80gb", "--out", tmp_path], "--trace")
    refused("dexsim", ["tune", "--trace", trace, "--out", tmp_path], "--gpu")


@pytest.mark.parametrize("command", ["tune", "sweep"])
def test_an_unreachable_dask_scheduler_is_one_line_quickly(trace, tmp_path, command):
    pytest.importorskip("distributed")
    argv = ([*TUNE, "--trace", trace] if command == "tune" else ["sweep", "--traces", trace, *SW])
    started = time.monotonic()
    refused("dexsim", [*argv, "--out", tmp_path / "d", "--dask", "tcp://127.0.0.1:1"], "--dask", "tcp://127.0.0.1:1")
    assert time.monotonic() - started < 30


def test_sweep_exit_set_no_trace_records(trace, tmp_path):
    # small.npz records every 6th layer: an explicit exit set of other depths is a mistake, not a silent skip
    refused("dexsim", ["sweep", "--traces", trace, "--policies", "ar,dex", "--explorers", "4", "--exits", "5,10",
                       "--gpus", "a100-sxm4-80gb", "--pp", "1", "--scheduler", "lockstep", "--jobs", "1",
                       "--out", tmp_path], "--exits", "5,10")


def test_an_output_that_is_not_a_regular_file_is_refused_and_left_alone(trace, tmp_path):
    """Files are written whole by renaming a new one over the target: over a device or a pipe that would
    replace it (as root, /dev/null itself became a regular file). Refused before any work, untouched."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for prog, argv in [("dexsim", ["synth", "--model", "smollm2-135m", "--seqs", "1", "--tokens", "2", "--out", fifo]),
                       ("dexsim", ["replay", "--trace", trace, "--policy", "ar", "--events", fifo]),
                       ("dexsim", ["synth", "--model", "smollm2-135m", "--seqs", "1", "--tokens", "2",
                                   "--out", "/dev/null"])]:
        run = run_cli(prog, argv)
        assert run.rc == 2 and "not a regular file" in error_line(run), run.err
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()
