"""Synthetic traces: determinism, the EAD model, flicker, the wrong-token change rate, and the CLI."""
import os
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest

from dexsim.cli import main as cli
from dexsim.traces.analyze import analyze, ead_indices, stable_ead_indices, wrong_change_rate
from dexsim.errors import UserError
from dexsim.depths import parse_depths
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import ARRAYS, load_trace, save_trace, validate


def eads(trace):
    """Per token (EAD, stable EAD) as depths."""
    return (trace.depths[ead_indices(trace.exit_tokens, trace.final)],
            trace.depths[stable_ead_indices(trace.exit_tokens, trace.final)])


def test_deterministic_per_seed():
    a, b = synth_trace("smollm2-135m", 4, 50, seed=3), synth_trace("smollm2-135m", 4, 50, seed=3)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta["sha256"] == b.meta["sha256"]
    assert synth_trace("smollm2-135m", 4, 50, seed=4).meta["sha256"] != a.meta["sha256"]


def test_valid_and_labelled_synthetic():
    t = synth_trace("llama2-7b", 3, 40, depths="every:5", ead="uniform:4,20", prompt_len=7)
    validate(t)
    np.testing.assert_array_equal(t.exit_tokens[:, -1], t.final)
    np.testing.assert_array_equal(t.depths, [5, 10, 15, 20, 25, 30, 32])
    assert t.meta["synthetic"] is True and t.meta["dataset"] == "synthetic:uniform:4,20"
    assert (t.n_seqs, t.n_tokens, t.prompt_len.tolist()) == (3, 120, [7, 7, 7])
    assert t.exit_conf.min() >= 0 and t.exit_conf.max() <= 1


def test_two_point_iid():
    """two-point:E,ALPHA without flicker: exits match at E with probability ALPHA, independently per token."""
    t = synth_trace("llama2-7b", 20, 1000, ead="two-point:8,0.6", flicker=0.0, seed=1)
    match = t.exit_tokens[:, t.depths.tolist().index(8)] == t.final
    assert match.mean() == pytest.approx(0.6, abs=0.015)
    # i.i.d.: a run of 3 accepted drafts (LayerSkip's closed form) has probability ALPHA^3
    runs = match[:-2] & match[1:-1] & match[2:]
    assert runs.mean() == pytest.approx(0.6 ** 3, abs=0.015)
    ead, stable = eads(t)
    assert set(np.unique(ead)) == {8, 32}
    np.testing.assert_array_equal(ead, stable)


def test_ead_and_stable_ead_relations():
    t = synth_trace("smollm2-135m", 20, 500, ead="beta:2,1.2", flicker=0.3, seed=2)
    ead, stable = eads(t)
    assert np.all(stable >= ead)
    match = t.exit_tokens == t.final[:, None]
    below = t.depths[None, :] < ead[:, None]
    assert not match[below].any()  # wrong tokens never equal the final token
    assert match[t.depths[None, :] >= stable[:, None]].all()
    # a token flickers with probability 0.3 when there is room between its EAD and L
    room = ead <= t.L - 2
    assert (stable > ead)[room].mean() == pytest.approx(0.3, abs=0.02)
    assert not (stable > ead)[~room].any()
    calm = synth_trace("smollm2-135m", 5, 200, flicker=0.0)
    np.testing.assert_array_equal(*eads(calm))


def test_confidence_higher_when_right_and_deeper():
    t = synth_trace("smollm2-135m", 10, 300, seed=5)
    right = t.exit_tokens == t.final[:, None]
    conf = t.exit_conf.astype(np.float64)
    assert conf[right].mean() > conf[~right].mean() + 0.2
    assert conf[:, -1].mean() > conf[:, 0].mean()


@pytest.mark.parametrize("depths", ["all", "every:3"])
def test_wrong_token_change_rate(depths):
    t = synth_trace("smollm2-135m", 20, 500, depths=depths, ead="fixed:30", change_rate=0.3, seed=6)
    assert wrong_change_rate(t) == pytest.approx(0.3, abs=0.01)
    frozen = synth_trace("smollm2-135m", 2, 100, ead="fixed:30", change_rate=0.0)
    assert np.all(frozen.exit_tokens[:, :-1] == frozen.exit_tokens[:, :1])


def test_ead_forms():
    t = synth_trace("smollm2-135m", 2, 500, ead="fixed:12", depths="every:5", flicker=0.0)
    assert set(eads(t)[0]) == {15}  # snapped up to the next recorded depth
    u = eads(synth_trace("smollm2-135m", 4, 500, ead="uniform:5,9", flicker=0.0))[0]
    assert set(u) == {5, 6, 7, 8, 9}
    late = synth_trace("smollm2-135m", 10, 500, ead="beta:2,2,0.4", flicker=0.0)
    assert (eads(late)[0] == 30).mean() == pytest.approx(0.4, abs=0.03)  # Beta(2,2) alone puts 0.3% there


def test_empirical_reproduces_source(tmp_path):
    source = synth_trace("smollm2-135m", 10, 500, ead="beta:3,1.3,0.3", flicker=0.0, seed=7)
    save_trace(source, tmp_path / "src.npz")
    copy = synth_trace("smollm2-135m", 10, 500, ead=f"empirical:{tmp_path / 'src.npz'}", flicker=0.0)
    assert analyze(copy)["mean_ead"] == pytest.approx(analyze(source)["mean_ead"], abs=0.3)


def test_parse_depths():
    np.testing.assert_array_equal(parse_depths("all", 4), [1, 2, 3, 4])
    np.testing.assert_array_equal(parse_depths("every:7", 30), [7, 14, 21, 28, 30])
    np.testing.assert_array_equal(parse_depths("5,3,30,5", 30), [3, 5, 30])
    assert parse_depths("8", 30).dtype == np.int16
    for spec in ["0,5", "31", "every:0", "x", "every:a", ""]:
        with pytest.raises(UserError, match="^--exits"):
            parse_depths(spec, 30, flag="--exits")


def test_fast():
    start = time.perf_counter()
    synth_trace("smollm2-135m", 1000, 200)
    assert time.perf_counter() - start < 3.0


def test_cli_writes_loadable_trace(tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = ["synth", "--model", "gemma3-270m", "--seqs", "2", "--tokens", "16", "--depths", "every:6",
            "--ead", "two-point:6,0.5", "--flicker", "0", "--seed", "9", "--out", str(out)]
    assert cli.main(argv) == 0
    t = load_trace(out)
    assert t.meta["synthetic"] and t.meta["recorder"]["params"]["seed"] == 9
    assert t.depths.tolist() == [6, 12, 18] and t.n_tokens == 32
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value", [
    ("--ead", "gamma:1,2"), ("--ead", "beta:1"), ("--ead", "beta:-1,2"), ("--ead", "fixed:31"),
    ("--ead", "fixed:2.5"), ("--ead", "fixed:inf"), ("--ead", "uniform:9,5"), ("--ead", "empirical:/no/such.npz"), ("--ead", "two-point:5,1.5"),
    ("--depths", "0,10"), ("--depths", "every:x"), ("--flicker", "2"), ("--change-rate", "-0.1"),
    ("--seqs", "0"), ("--tokens", "0"), ("--prompt-len", "0"),
])
def test_cli_bad_flags(tmp_path, capsys, flag, value):
    argv = ["synth", "--model", "smollm2-135m", "--seqs", "2", "--tokens", "4", "--out", str(tmp_path / "x.npz")]
    assert cli.main(argv + [flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}") and err.count("\n") == 1
    assert not (tmp_path / "x.npz").exists()


def test_cli_unknown_model(tmp_path, capsys):
    assert cli.main(["synth", "--model", "nope", "--seqs", "1", "--tokens", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model" in capsys.readouterr().err


BUNDLED = Path(__file__).resolve().parents[2] / "traces"


def test_bundled_traces_recreated_by_their_readme_commands(tmp_path):
    """Each bundled synthetic trace loads, is small, and its README command reproduces its arrays bit
    for bit; each recorded one has its `dexref record` command in the README."""
    readme = (BUNDLED / "README.md").read_text()
    commands = re.findall(r"^    python -m dexsim (synth .*)$", readme, re.M)
    files = sorted(BUNDLED.glob("*.npz"))
    synthetic = [f for f in files if load_trace(f).meta["synthetic"]]
    assert len(commands) == len(synthetic) >= 2
    for f in set(files) - set(synthetic):
        assert re.search(rf"^    python -m dexref record .*--out traces/{re.escape(f.name)}$", readme, re.M), f.name
    for command in commands:
        argv = shlex.split(command)
        out = argv.index("--out") + 1
        bundled = load_trace(BUNDLED / Path(argv[out]).name)
        assert bundled.meta["synthetic"] and os.path.getsize(bundled.path) < 1_000_000
        argv[out] = str(tmp_path / "again.npz")
        assert cli.main(argv) == 0
        assert load_trace(argv[out]).meta["sha256"] == bundled.meta["sha256"]
