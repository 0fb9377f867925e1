"""`python -m dexsim replay`: its JSON, and one clear line with exit status 2 for every bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dexsim.cli.main import main
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import save_trace

TRACES = Path(__file__).resolve().parents[2] / "traces"
LENS = str(TRACES / "synth-smollm2-135m-lens.npz")
EVERY4 = str(TRACES / "synth-llama2-7b-eetrained-every4.npz")
KEYS = {"tokens", "rounds", "node_layers", "head_evals", "weight_loads", "wasted_node_layers", "fallbacks",
        "output_matches_trace"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "small.npz"
    save_trace(synth_trace("smollm2-135m", 3, 20, seed=1), path)
    return str(path)


@pytest.mark.parametrize("flags", [["--policy", "ar"], ["--policy", "dex", "-k", "3", "--exits", "every:5"],
                                   ["--policy", "layerskip", "--exit", "12", "--draft", "3"],
                                   ["--policy", "adaptive", "--threshold", "0.7"],
                                   ["--policy", "oracle-select", "--exits", "10,20", "--draft", "2"],
                                   ["--policy", "dex", "--priority", "align", "--exits", "every:6"]])
def test_replay_json_is_lossless(small, flags, capsys):
    assert main(["replay", "--trace", small, "--json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= out.keys() and out["output_matches_trace"] is True
    assert out["tokens"] == 60


def test_events_file_is_written(small, tmp_path):
    ev = tmp_path / "ev.npz"
    assert main(["replay", "--trace", small, "--policy", "dex", "--events", str(ev)]) == 0
    with np.load(ev) as z:
        assert json.loads(str(z["meta"]))["format"] == "dex-events/1"
        assert len(z["events"]) > 0


def corrupt(tmp_path):
    p = tmp_path / "corrupt.npz"
    p.write_bytes(Path(LENS).read_bytes()[:3000])
    return str(p)


BAD = [
    (lambda t: ["--trace", str(t / "missing.npz")], "missing.npz"),
    (lambda t: ["--trace", corrupt(t)], "corrupt.npz"),
    (lambda t: ["--trace", LENS, "--policy", "beam"], "--policy"),
    (lambda t: ["--trace", LENS, "--explorers", "0"], "--explorers"),
    (lambda t: ["--trace", LENS, "--buffer", "-1"], "--buffer"),
    (lambda t: ["--trace", LENS, "--exits", "31"], "--exits"),
    (lambda t: ["--trace", LENS, "--exits", "two"], "--exits"),
    (lambda t: ["--trace", LENS, "--policy", "layerskip", "--exit", "40"], "--exit"),
    (lambda t: ["--trace", LENS, "--policy", "layerskip", "--draft", "-2"], "--draft"),
    (lambda t: ["--trace", LENS, "--policy", "adaptive", "--threshold", "1.5"], "--threshold"),
    (lambda t: ["--trace", LENS, "--priority", "random"], "--priority"),
    (lambda t: ["--trace", EVERY4, "--exits", "3,30"], "depths"),
    (lambda t: ["--trace", LENS, "--explorers", "x"], "--explorers"),
]


@pytest.mark.parametrize("make,names", BAD)
def test_bad_input_is_one_line_and_status_2(make, names, tmp_path, capsys):
    assert main(["replay", *make(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err and "Traceback" not in err


def test_bad_input_through_the_real_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dexsim", "replay", "--trace", str(tmp_path / "nope.npz")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.npz" in r.stderr


@pytest.mark.parametrize("policy", ["adaptive", "oracle-select", "dex"])
def test_exits_all_are_the_recorded_depths(policy, capsys):
    """On a trace recorded every 4 layers, `--exits all` (the default) is every recorded depth, not
    every layer (which would ask for depths the trace never recorded)."""
    assert main(["replay", "--trace", EVERY4, "--policy", policy, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["output_matches_trace"]
    if policy != "oracle-select":  # its result is the candidate it picked
        assert out["exits"] == "4,8,12,16,20,24,28,32"
