"""`python -m viz animate`: the frames are the core's rounds, the picture is the core's lattice, the files
open with the right frame count and size, and bad input is one line with exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dexsim.core import lattice as core
from dexsim.replay.executor import ReplayExecutor, replay
from dexsim.core.registry import make_policy
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import save_trace
from viz import player, source
from viz.animate import lattice_figure
from viz.cli import main
from viz.frames import build_frames, sequence_events, token_range
from viz.labels import TokenLabels

ROOT = Path(__file__).resolve().parents[2]
# gemma3-270m has 18 layers: few rounds per token keeps the animations short
MODEL = "gemma3-270m"
POLICIES = [("ar", {}), ("layerskip", dict(exit=8, draft=3)), ("adaptive", dict(threshold=0.5, buffer=3)),
            ("dex", dict(explorers=3, buffer=4)), ("dex", dict(explorers=2, buffer=3, priority="align")),
            ("dex", dict(explorers=4, buffer=6, priority="deep", exits=[4, 8, 12, 16, 18]))]
# These tests once found a core bug (DEX's deep order sorted dead slots among live ones, so jumping
# and stepping runs parted ways): every policy here runs both ways.
JUMPED = POLICIES


@pytest.fixture(scope="module")
def trace():
    return synth_trace(MODEL, 3, 12, ead="beta:1.5,1.5,0.1", seed=3)


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory, trace):
    path = tmp_path_factory.mktemp("viz") / "t.npz"
    save_trace(trace, path)
    return str(path)


class Stepwise(ReplayExecutor):
    """The replay executor without jumps: one core step is exactly one round."""

    can_jump = False


def stepwise_rounds(trace, policy, seq, tokens):
    """Run the core one round at a time until `seq` has committed `tokens`. Returns, after each round,
    the sequence's counters, live lattice and committed tokens as the core holds them, and the events."""
    lengths = np.diff(trace.seq_offsets)
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=lengths, record_events=True)
    ex = Stepwise(trace, 0)
    core.start(lat, ex)
    states = []
    names = ("rounds", "tokens", "node_layers", "weight_loads", "head_evals", "wasted_node_layers", "fallbacks")
    while lat.counters.tokens[seq] < tokens:
        core.step(lat, policy, ex)
        states.append(({k: int(getattr(lat.counters, k)[seq]) for k in names}, lat.tree(seq),
                       lat.output[seq, : lat.counters.tokens[seq]].tolist()))
    return states, sequence_events(lat.events(), seq)


def _key(tree):
    return sorted((d["node"], d["parent"], d["token"], d["pos"], d["depth"]) for d in tree)


def _check_frames_against_rounds(events, states, L, start, tokens, total):
    """Frame count = rounds in the range, and each frame's live lattice, counters and committed tokens
    equal the core's after that round."""
    rng = token_range(events, start, tokens, total=total)
    frames = build_frames(events, L, rng.r0, rng.r1)
    commit_round = [next(t for t, s in enumerate(states) if s[0]["tokens"] > k) for k in range(start + tokens)]
    first = min(commit_round[start - 1] + 1, commit_round[start]) if start else 0
    assert len(frames) == rng.n_rounds == commit_round[-1] - first + 1
    for f in frames:
        counters, tree, output = states[f.round]
        assert _key(f.live_tree()) == _key(tree)
        assert f.counters == counters
        assert f.committed == output


@pytest.mark.parametrize("name,kw", POLICIES, ids=lambda x: x if isinstance(x, str) else "")
def test_every_frame_is_the_cores_state_at_that_round(trace, name, kw):
    """The core run one round at a time (no jumps): its event log replays to its every round."""
    policy = make_policy(name, trace.L, **kw)
    states, events = stepwise_rounds(trace, policy, 1, 5)
    _check_frames_against_rounds(events, states, trace.L, 2, 3, 12)


@pytest.mark.parametrize("name,kw", JUMPED, ids=lambda x: x if isinstance(x, str) else "")
def test_jumps_unfold_into_the_same_rounds(trace, name, kw):
    """The log of a jumping replay (what the CLI animates: an advance covers several rounds) gives
    the same frames as the round-by-round run."""
    policy = make_policy(name, trace.L, **kw)
    run = source.from_trace(trace, policy, 1, 5)
    states, _ = stepwise_rounds(trace, policy, 1, 5)
    _check_frames_against_rounds(run.events, states, trace.L, 2, 3, run.total_tokens)


def test_trace_source_gives_the_events_of_dexsim_replay(trace):
    policy = make_policy("dex", trace.L, explorers=3, buffer=4)
    run = source.from_trace(trace, policy, 2, 5)
    full = sequence_events(replay(trace, policy, record_events=True).events(), 2)
    assert np.array_equal(run.events, full[: len(run.events)])
    # the run stopped right after the round that committed token 5
    assert run.lattice.counters.tokens[2] >= 5


def test_last_frame_draws_the_live_lattice_and_the_replays_tokens(trace):
    policy = make_policy("dex", trace.L, explorers=3, buffer=4)
    seq, start, tokens = 0, 3, 2
    run = source.from_trace(trace, policy, seq, start + tokens)
    rng = token_range(run.events, start, tokens, total=run.total_tokens)
    frames = build_frames(run.events, trace.L, rng.r0, rng.r1)
    fig = lattice_figure([run], [frames], TokenLabels(trace.vocab), dpi=40)
    image = fig.render(len(frames) - 1)
    assert image.shape == (fig.size[1], fig.size[0], 4)
    panel = fig.panels[0]
    tree = run.lattice.tree(seq)  # the core's lattice where the run stopped: the end of the last round
    assert sorted(panel.live_ids) == sorted(d["node"] for d in tree)
    drawn_depths = dict(zip(panel.live_ids, panel.live.get_offsets()[:, 1]))
    assert drawn_depths == {d["node"]: d["depth"] for d in tree}
    # the caption's committed tokens are the replay's
    lat = replay(trace, policy)
    n = frames[-1].counters["tokens"]
    assert frames[-1].committed == lat.output[seq, :n].tolist()
    caption = panel.caption.get_text()
    assert f"committed {n}" in caption
    assert caption.splitlines()[-1] == "tokens: " + TokenLabels(trace.vocab).sequence(lat.output[seq, :n].tolist())


def _gif(path):
    with Image.open(path) as im:
        return im.n_frames, im.size


def _rounds(trace, name, seq, start, tokens, **kw):
    run = source.from_trace(trace, make_policy(name, trace.L, **kw), seq, start + tokens)
    return token_range(run.events, start, tokens, total=run.total_tokens).n_rounds


def test_gif_has_one_frame_per_round_and_the_figure_size(trace, trace_path, tmp_path, capsys):
    out = tmp_path / "a.gif"
    flags = ["--policy", "dex", "-k", "2", "--buffer", "2", "--exits", "6,12,18"]
    assert main(["animate", "--trace", trace_path, *flags, "--seq", "1", "--start", "1", "--tokens", "1",
                 "--dpi", "40", "--out", str(out)]) == 0
    n = _rounds(trace, "dex", 1, 1, 1, explorers=2, buffer=2, exits=[6, 12, 18])
    assert f"{n} frames" in capsys.readouterr().out
    # one panel over a few positions: 0.4 + 7.0 by 5.2 inches (viz/draw.py, LatticeFigure) at 40 dpi
    assert _gif(out) == (n, (296, 208))


def test_compare_holds_finished_panels(trace, trace_path, tmp_path):
    out = tmp_path / "c.gif"
    assert main(["animate", "--trace", trace_path, "--compare", "ar,layerskip,dex", "--exit", "6", "--draft", "2",
                 "-k", "2", "--buffer", "2", "--tokens", "1", "--dpi", "30", "--out", str(out)]) == 0
    n = max(_rounds(trace, "ar", 0, 0, 1), _rounds(trace, "layerskip", 0, 0, 1, exit=6, draft=2),
            _rounds(trace, "dex", 0, 0, 1, explorers=2, buffer=2))
    frames, (w, h) = _gif(out)
    assert frames == n and h == 156 and w >= round((0.4 + 3 * 4.5) * 30)


def test_html_player_embeds_every_frame(trace_path, tmp_path):
    out = tmp_path / "a.html"
    assert main(["animate", "--trace", trace_path, "--policy", "ar", "--tokens", "1", "--dpi", "30",
                 "--out", str(out)]) == 0
    html = out.read_text()
    assert html.count("data:image/png;base64") == 18  # ar: L rounds per token


@pytest.mark.skipif(not player.ffmpeg_available(), reason="ffmpeg is not installed")
def test_mp4_when_ffmpeg_is_there(trace_path, tmp_path):
    out = tmp_path / "a.mp4"
    assert main(["animate", "--trace", trace_path, "--policy", "ar", "--tokens", "1", "--dpi", "30",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_events_file_animates_like_the_replay(trace, trace_path, tmp_path):
    from dexsim.cli.main import main as dexsim_main

    ev = tmp_path / "ev.npz"
    flags = ["--policy", "dex", "-k", "3", "--buffer", "4"]
    assert dexsim_main(["replay", "--trace", trace_path, *flags, "--events", str(ev)]) == 0
    from_file = source.from_events(str(ev), 2)
    from_trace = source.from_trace(trace, make_policy("dex", trace.L, explorers=3, buffer=4), 2, 4)
    a, b = (build_frames(r.events, trace.L, *(lambda g: (g.r0, g.r1))(token_range(r.events, 1, 3)))
            for r in (from_file, from_trace))
    assert [(f.round, f.counters, _key(f.live_tree())) for f in a] == \
           [(f.round, f.counters, _key(f.live_tree())) for f in b]
    assert from_file.label == from_trace.label == "dex k=3 B=4 eager E=all"
    assert main(["animate", "--events", str(ev), "--seq", "2", "--start", "1", "--tokens", "1", "--dpi", "30",
                 "--out", str(tmp_path / "e.gif")]) == 0


# ---------------------------------------------------------------------------- bad input

def _bad_events(tmp_path, fmt):
    p = tmp_path / f"bad-{fmt.replace('/', '-')}.npz"
    meta = {"format": fmt, "L": 18, "policy": "dex", "kinds": list(core.EVENT_NAMES)}
    np.savez(p, events=np.zeros(3, core.EVENT_DTYPE), meta=np.array(json.dumps(meta)))
    return str(p)


BAD = {
    "unknown policy": (["--policy", "fast"], "--policy: unknown policy 'fast'"),
    "unknown compare": (["--compare", "ar,fast"], "--compare: unknown policy 'fast'"),
    "oracle-select": (["--policy", "oracle-select"], "--policy oracle-select"),
    "start past end": (["--start", "12"], "--start 12: past the end"),
    "range past end": (["--start", "10", "--tokens", "3"], "--start 10 --tokens 3: past the end"),
    "bad seq": (["--seq", "7"], "--seq 7: out of range"),
    "no folder": (["--out", "/nonexistent/dir/a.gif"], "folder /nonexistent/dir does not exist"),
    "bad extension": (["--out", "a.png"], "must end in .gif or .mp4 or .html"),
    "events and compare": (["--compare", "ar,dex"], "--compare: needs --trace"),
    "model without prompt": (["--model", "smollm2-135m"], "--model: needs --prompt"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_and_exit_2(trace_path, tmp_path, capsys, case, monkeypatch):
    flags, message = BAD[case]
    args = ["animate", "--trace", trace_path, "--out", str(tmp_path / "x.gif"), *flags]
    if "--model" in flags:
        args = ["animate", *flags, "--out", str(tmp_path / "x.gif")]
    if case == "events and compare":
        ev = tmp_path / "ev.npz"
        from dexsim.cli.main import main as dexsim_main
        assert dexsim_main(["replay", "--trace", trace_path, "--policy", "ar", "--events", str(ev)]) == 0
        args = ["animate", "--events", str(ev), "--out", str(tmp_path / "x.gif"), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "x.gif").exists()


def test_bad_events_and_missing_ffmpeg(trace_path, tmp_path, capsys, monkeypatch):
    for path, message in [(_bad_events(tmp_path, "dex-events/2"), "incompatible version"),
                          (_bad_events(tmp_path, "dex-trace/1"), "incompatible version"),
                          (str(tmp_path / "missing.npz"), "no such file"),
                          (trace_path, "not an events file")]:
        assert main(["animate", "--events", path, "--out", str(tmp_path / "x.gif")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    monkeypatch.setattr(player, "ffmpeg_available", lambda: False)
    assert main(["animate", "--trace", trace_path, "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs ffmpeg" in err


def test_module_entry_point_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "viz", "animate", "--trace", str(tmp_path / "none.npz"),
                        "--out", str(tmp_path / "x.gif")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")


def _model_cached(name):
    try:
        from dexref.assets.sources import is_cached
        import torch  # noqa: F401
    except ImportError:
        return False
    return is_cached(name)


@pytest.mark.slow
@pytest.mark.skipif(not _model_cached("smollm2-135m"), reason="needs dexref, torch and the cached SmolLM2 model")
def test_model_run_animates_the_engines_lattice(tmp_path, capsys):
    """--model: the reference engine's own event log; its caption tokens are the engine's output."""
    from dexref.engine import generate
    from dexref.load import ModelConfig, load_model

    from dexsim.core.registry import PolicyConfig

    out = tmp_path / "m.gif"
    flags = ["--policy", "dex", "-k", "2", "--buffer", "2", "--exits", "every:10"]
    assert main(["animate", "--model", "smollm2-135m", "--prompt", "def add(a, b):", *flags, "--tokens", "1",
                 "--dpi", "30", "--out", str(out)]) == 0
    assert "30 frames" in capsys.readouterr().out  # the first token: L = 30 rounds
    assert _gif(out)[0] == 30
    model, tok, _ = load_model(ModelConfig())
    ar = generate(model, [tok.apply("def add(a, b):", "raw")], make_policy("ar", 30), 1)
    dex = PolicyConfig("dex", {"explorers": 2, "buffer": 2, "exits": "every:10", "priority": "eager"})
    run = source.from_model("smollm2-135m", "raw", "def add(a, b):", [dex], 1)[0]
    frames = build_frames(run.events, 30, 0, 29)
    assert frames[-1].committed == ar.outputs[0]
