"""Emulation (dexref/emulate.py): the replay's schedule with every node-layer really computed. Its
counters, pricing histograms and committed tokens must be the replay's, bit for bit, on every bundled
trace and for every registry policy (the first sequences and tokens of each, on a tiny model of the
trace's depth); and the `profile` command records what it measured and where."""
from __future__ import annotations

import glob
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli.clirun import check_clean, run_cli  # noqa: E402
from one_thread import one_thread  # noqa: E402, F401  (autouse fixture)
from dexref.checkpoint import random_model  # noqa: E402
from dexref.emulate import emulate  # noqa: E402
from dexref.model import ModelArgs  # noqa: E402
from dexsim.core import registry  # noqa: E402
from dexsim.hardware import pricing  # noqa: E402
from dexsim.replay import hindsight  # noqa: E402  (oracle-select's candidates)
from dexsim.replay.executor import replay  # noqa: E402
from dexsim.specs.profile import load_profile  # noqa: E402
from dexsim.traces.analyze import exit_set  # noqa: E402
from dexsim.traces.format import load_trace  # noqa: E402
from dexsim.traces.transforms import first_seqs, first_tokens  # noqa: E402

TRACES = sorted(glob.glob("traces/*.npz"))
# every registry policy, dex under every priority; oracle-select is emulated as its pick
POLICIES = [("ar", {}), ("layerskip", {}), ("adaptive", {"threshold": 0.5}), ("oracle-select", {}),
            *(("dex", {"explorers": 3, "buffer": 5, "priority": p}) for p in ("eager", "align", "deep", "confident"))]


def tiny(L: int):
    a = ModelArgs(n_layer=L, dim=8, n_head=2, n_kv_head=1, head_dim=4, intermediate=16, vocab=37, max_len=2048)
    return random_model(a, torch.float32, torch.device("cpu"))


def policies_on(trace):
    out = []
    for name, params in POLICIES:
        if registry.get(name).hindsight:
            cands = hindsight.candidates(trace, name)
            loads = [replay(trace, p).counters.totals()["weight_loads"] for p in cands]
            out.append(cands[int(np.argmin(loads))])  # what an unpriced replay picks
        else:
            out.append(registry.make_policy(name, trace.L, exits=trace.depths, depths=trace.depths, **params))
    return out


def test_every_policy_in_registry_is_covered():
    assert {n for n, _ in POLICIES} == set(registry.names())
    assert len(TRACES) >= 8


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.split("/")[-1])
def test_emulation_counters_are_the_replays_bit_for_bit(path):
    trace = first_tokens(first_seqs(load_trace(path), 2), 3)
    model = tiny(trace.L)
    for policy in policies_on(trace):
        run = emulate(trace, policy, model)
        lat = replay(trace, policy)
        assert run.counters == lat.counters.totals(), policy.name
        ref = pricing.tally_of(lat)  # what pricing reads: histograms, per-layer counts, context
        for field in ("load_rows", "head_rows", "layer_loads", "layer_rows"):
            a, b = getattr(run.tally, field), getattr(ref, field)
            n = max(len(a), len(b))
            assert np.array_equal(np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))), (policy.name, field)
        assert run.tally.context_sum == ref.context_sum
        for s in range(trace.n_seqs):  # the emulated tokens are the trace's
            assert run.outputs[s] == trace.final[trace.seq_offsets[s]: trace.seq_offsets[s + 1]].tolist()
        assert run.output_matches_trace and run.wall_s > 0


def test_emulation_computes_what_the_core_schedules():
    """Every node-layer the core schedules runs on the model, batched per layer; every exit read
    evaluates the head: counted at the engine's calls."""
    trace = first_tokens(first_seqs(load_trace("traces/synth-smollm2-135m-lens.npz"), 1), 4)
    model = tiny(trace.L)
    policy = registry.make_policy("dex", trace.L, exits=trace.depths, depths=trace.depths, explorers=4, buffer=8)
    seen = {"rows": 0, "calls": 0, "heads": 0}
    from dexref import engine

    layer, layer_one, read = engine.TorchExecutor._layer, engine.TorchExecutor._layer_one, engine.TorchExecutor.read_exits

    def count_layer(self, lat, lay, s, j):
        seen["rows"] += len(j)
        seen["calls"] += 1
        return layer(self, lat, lay, s, j)

    def count_one(self, lat, lay, si, ji):
        seen["rows"] += 1
        seen["calls"] += 1
        return layer_one(self, lat, lay, si, ji)

    def count_heads(self, lat, s, j):
        seen["heads"] += len(s)
        return read(self, lat, s, j)
    mp = pytest.MonkeyPatch()
    mp.setattr(engine.TorchExecutor, "_layer", count_layer)
    mp.setattr(engine.TorchExecutor, "_layer_one", count_one)
    mp.setattr(engine.TorchExecutor, "read_exits", count_heads)
    try:
        run = emulate(trace, policy, model)
    finally:
        mp.undo()
    assert seen["rows"] == run.counters["node_layers"]
    assert seen["heads"] == run.counters["head_evals"]
    assert run.counters["weight_loads"] <= seen["calls"] <= run.counters["node_layers"]


@pytest.mark.parametrize("exits", ["all", "settle:2"])
def test_emulate_cli_reports_the_replays_counters_and_wall_clock(tmp_path, exits):
    argv = ["--trace", "traces/smollm2-135m-trained-humaneval-raw.npz", "--policy", "dex", "-k", "2", "--buffer", "3",
            "--exits", exits]
    run = run_cli("dexref", ["emulate", *argv, "--shape", "smollm2-135m", "--max-seqs", "1", "--max-tokens", "4",
                             "--threads", "1", "--json"])
    check_clean(run)
    assert run.rc == 0, run.err
    out = json.loads(run.out)
    trace = first_tokens(first_seqs(load_trace(argv[1]), 1), 4)
    policy = registry.make_policy("dex", trace.L, exits=exit_set(trace, exits), depths=trace.depths, explorers=2,
                                  buffer=3)
    assert {k: out[k] for k in replay(trace, policy).counters.totals()} == replay(trace, policy).counters.totals()
    assert out["exits"] == ",".join(map(str, exit_set(trace, exits)))
    assert out["output_matches_trace"] and out["tokens_per_s"] > 0 and out["device"] == "cpu"


@pytest.mark.parametrize("argv,names", [
    (["--policy", "ar"], ["--shape"]),  # neither --shape nor --model
    (["--shape", "nope", "--policy", "ar"], ["--shape"]),
    (["--shape", "smollm2-135m", "--policy", "oracle-select"], ["oracle-select"]),
    (["--shape", "smollm2-135m", "--policy", "ar", "--max-tokens", "0"], ["--max-tokens"]),
])
def test_emulate_bad_flags_are_one_line(argv, names):
    run = run_cli("dexref", ["emulate", "--trace", "traces/synth-smollm2-135m-lens.npz", *argv])
    check_clean(run, names)
    assert run.rc == 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 30-layer Llama checkpoint folder (the bundled traces' depth)."""
    pytest.importorskip("transformers")
    from dexref.testing import hf_tiny_model, write_hf_checkpoint

    return write_hf_checkpoint(tmp_path_factory.mktemp("ckpt"), hf_tiny_model("llama", 64, num_hidden_layers=30).float())


def test_profile_records_its_provenance_and_reads_back(tmp_path, checkpoint):
    out = tmp_path / "p.json"
    run = run_cli("dexref", ["profile", "--model", checkpoint, "--rows", "1,2", "--contexts", "16,32",
                             "--repeats", "1", "--threads", "1", "--out", out])
    check_clean(run)
    assert run.rc == 0, run.err
    d = json.loads(out.read_text())
    assert d["format"] == "dex-profile/1" and d["created"] and d["command"].startswith("python -m dexref profile --model")
    assert d["device"]["kind"] == "cpu" and d["device"]["name"] and "driver" in d["device"]
    assert d["host"]["torch"] == torch.__version__ and d["host"]["cpu"] and d["host"]["threads"] == 1
    assert d["shape"]["name"] == str(checkpoint) and d["shape"]["arch"]["layers"] == 30
    assert d["dtype"] == "float32" and d["rows"] == [1, 2] and d["contexts"] == [16, 32] and d["clock"] == "wall"
    assert np.array(d["layer_s"]).shape == (2, 2) and len(d["head_s"]) == 2 and d["statistic"].startswith("mean")
    assert (np.array(d["best_of_repeats"]["layer_s"]) <= np.array(d["layer_s"])).all()
    refill = d["head_refill_measured"]
    assert [q["rows"] for q in refill["points"]] == [1, 2] and refill["context"] == 16
    assert d["head_refill"] == max(0.0, np.mean([q["layer_steps"] for q in refill["points"]]))
    assert d["host_round_s"] > 0 and d["host_exit_s"] >= 0 and d["host_control"]["stubbed"]["policies"]
    assert d["host_round_s"] == d["host_control"]["in_situ"]["per_round_s"]  # on a CPU
    assert d["transfer"] is None and "transfer not measured" in d["notes"][0]
    assert d["rates"]["memory_bandwidth"] > 0 and 0 < d["rates"]["bandwidth_efficiency"] <= 1
    assert d["catalog_gpu"] == "cpu-local"
    p = load_profile(out)
    assert p.layer(1, 16) == d["layer_s"][0][0] and p.head(2) == d["head_s"][1] and p.head_refill == d["head_refill"]
    # a profile of this shape does not price SmolLM2's trace: one line naming the field
    run = run_cli("dexsim", ["replay", "--trace", "traces/smollm2-135m-lens-humaneval-raw.npz", "--policy", "ar",
                             "--profile", out, "--json"])
    check_clean(run, ["shape.arch.hidden"])
    assert run.rc == 2


def test_sim_vs_hardware_ci_sized(tmp_path, checkpoint):
    """The benchmark end to end on a tiny 30-layer checkpoint: profiles, emulations (whose counters it
    checks against the replay's), predictions (from the checkpoint's own arch) and rankings, all written."""
    import importlib.util

    ckpt = checkpoint
    spec = importlib.util.spec_from_file_location("svh", "benchmarks/sim_vs_hardware.py")
    svh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svh)
    out = tmp_path / "out"
    assert svh.main(["--model", str(ckpt), "--traces", "traces/smollm2-135m-trained-humaneval-raw.npz,"
                     "traces/synth-llama2-7b-eetrained.npz", "--seqs", "1", "--tokens", "2", "--policies",
                     "ar,oracle-select,dex", "--rows", "1,2", "--contexts", "16,64", "--profile-repeats", "1",
                     "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    # the 32-layer trace is skipped on a 30-layer --model; ar, oracle-select's pick and three dex settings
    assert {row["trace"] for row in r["rows"]} == {"smollm2-135m-trained-humaneval-raw.npz"}
    assert len(r["rows"]) == 5 and r["clock"] == "cpu" and r["rows"][1]["policy"].startswith("oracle-select -> ")
    for row in r["rows"]:
        for k in svh.KINDS:
            assert row[f"{k}_s"] > 0 and np.isfinite(row[f"{k}_err"])
    assert set(r["rankings"]) == {row["trace"] for row in r["rows"]} and r["profile_spread"]["layer_s"]["max"] >= 0
