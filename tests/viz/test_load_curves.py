"""benchmarks/load_curves.py's core (tune, curves, crossovers) on a tiny synthetic trace, and `python -m
viz load` on its output; bad input is one line and exit status 2."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from dexsim.traces.format import load_trace, save_trace
from dexsim.traces.synth import synth_trace
from viz import loadplot
from viz.cli import main
from viz.output import new_figure

pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("load_curves", ROOT / "benchmarks" / "load_curves.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    d = tmp_path_factory.mktemp("load")
    save_trace(synth_trace("gemma3-270m", 4, 8, depths="every:3", ead="beta:1.2,2", seed=3), d / "tiny.npz")
    lc = _bench()
    result = lc.run([str(d / "tiny.npz")], 3, [1, 2, 4], [0.5, 1.0], 4, 4, d / "out", max_tokens=8, log=lambda _: None)
    lc.write(d / "out", result)
    return lc, result, d / "out" / "load_curves.json"


def test_curves_cover_every_method_point_and_setting(curves):
    lc, result, path = curves
    pts = result["points"]
    assert {p["setting"] for p in pts} == set(lc.SETTINGS)
    for setting in lc.SETTINGS:
        at = {(p["axis"], p["x"], p["method"]): p for p in pts if p["setting"] == setting}
        assert {(a, m) for a, _, m in at} == {(a, m) for a in ("batch", "rate") for m in lc.METHODS}
        assert sorted({x for a, x, _ in at if a == "batch"}) == [1, 2, 4]
        rates = sorted({x for a, x, _ in at if a == "rate"})
        sat = next(s for s in result["settings"] if s["setting"] == setting)["ar_saturation_qps"]
        # the rates are multiples of AR's saturation rate: its closed-loop throughput at the cap, per request
        ar4 = at["batch", 4, "ar"]
        assert sat == pytest.approx(ar4["tokens_per_s"] / (ar4["tokens"] / ar4["requests"]))
        assert rates == pytest.approx([0.5 * sat, sat], rel=1e-3)
        for (axis, x, m), p in at.items():
            assert p["requests"] == 4 and p["tokens"] > 0 and p["tokens_per_s"] > 0
            assert p["p99_token_latency_s"] >= p["p50_token_latency_s"] >= 0
            if m == "ar":
                assert p["speedup_vs_ar"] == pytest.approx(1.0)
        # AR's closed-loop throughput grows with the batch (shared weight loads)
        assert at["batch", 4, "ar"]["tokens_per_s"] > at["batch", 1, "ar"]["tokens_per_s"]
        methods = next(s for s in result["settings"] if s["setting"] == setting)["methods"]
        assert methods["dex"]["policy"] == "dex" and methods["single"]["policy"] in ("layerskip", "adaptive")
    assert json.loads(path.read_text())["points"] == json.loads(json.dumps(pts))
    assert (path.parent / "load_curves.csv").read_text().count("\n") == len(pts) + 1


def test_crossovers_agree_with_the_points(curves):
    lc, result, _ = curves
    for c in result["crossovers"]:
        at = {(p["method"], p["x"]): p for p in result["points"]
              if (p["trace"], p["setting"], p["axis"]) == (c["trace"], c["setting"], c["axis"])}
        xs = sorted({x for _, x in at})
        higher = lc.METRICS[c["metric"]]
        want = [lc.advantage(at["dex", x][c["metric"]], at[c["versus"], x][c["metric"]], higher) for x in xs]
        assert c["advantage"] == pytest.approx(want)
        assert c == {**c, **lc.crossover(xs, want)}
    rows = lc.table(result).splitlines()
    assert len(rows) == 2 + 2 * len(lc.SETTINGS) and all(r.count("|") == 10 for r in rows)


def test_crossover_is_interpolated_in_log_x():
    lc = _bench()
    got = lc.crossover([1, 2, 4, 8], [0.2, 0.1, -0.1, -0.3])
    assert got["x"] == pytest.approx(2 * math.sqrt(2))  # halfway between 2 and 4 in log x
    assert lc.crossover([1, 2], [0.3, 0.0])["x"] == pytest.approx(2)
    assert lc.crossover([1, 2, 4], [0.3, 0.2, 0.1])["x"] is None
    assert "none in range" in lc.crossover([1, 2, 4], [0.3, 0.2, 0.1])["note"]
    assert "no advantage at the first point" in lc.crossover([1, 2], [-0.1, 0.2])["note"]
    assert lc.crossover([1, 2], [0.005, -0.1])["x"] is None  # under MIN_ADVANTAGE: sampling, not a gain
    # a latency of 0 (tokens committed in one burst) is still an answer, not a division by zero
    assert lc.advantage(0.0, 0.01, False) == 1.0 and lc.advantage(0.01, 0.0, False) == -1.0
    assert lc.advantage(0.0, 0.0, False) == 0.0 and lc.advantage(3.0, 2.0, True) == pytest.approx(1 / 3)


def test_viz_load_plots_every_trace_and_setting(curves, tmp_path, capsys):
    lc, result, path = curves
    assert main(["load", str(path), "--out", str(tmp_path / "png")]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in written) == ["load-tiny-1-device.png", "load-tiny-4-stage-pipeline.png"]
    from PIL import Image
    want = new_figure(loadplot.PANEL_W * 3, loadplot.PANEL_H * 2 + 0.8, loadplot.DPI).canvas.get_width_height()
    for p in written:
        with Image.open(p) as im:
            assert im.size == want
    # a crossover found is drawn on its panel
    data = json.loads(path.read_text())
    data["crossovers"][0]["x"] = 1.5
    c = data["crossovers"][0]
    fig = loadplot.load_figure(data, c["trace"], c["setting"])
    row = [a for a, _ in loadplot.AXES].index(c["axis"])
    col = [m for m, _, _ in loadplot.METRICS].index(c["metric"])
    ax = fig.axes[row * 3 + col]
    assert any(list(line.get_xdata()) == [1.5, 1.5] for line in ax.lines)


@pytest.mark.parametrize("content,message", [
    (None, "cannot read"),
    ("{not json", "not JSON"),
    ("[]", "no points"),
    ('{"points": []}', "points: empty"),
    ('{"points": [{"trace": "t", "setting": "s", "axis": "batch", "x": 1, "method": "ar", "configuration": "ar",'
     ' "tokens_per_s": 1, "p50_token_latency_s": 0.1}]}', "field p99_token_latency_s"),
    ('{"points": [{"trace": "t", "setting": "s", "axis": "load", "x": 1, "method": "ar", "configuration": "ar",'
     ' "tokens_per_s": 1, "p50_token_latency_s": 0.1, "p99_token_latency_s": 0.2}]}', "field axis"),
    ('{"points": [{"trace": "t", "setting": "s", "axis": "rate", "x": 0, "method": "ar", "configuration": "ar",'
     ' "tokens_per_s": 1, "p50_token_latency_s": 0.1, "p99_token_latency_s": 0.2}]}', "field x"),
])
def test_bad_results_file_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "load_curves.json"
    if content is not None:
        path.write_text(content)
    assert main(["load", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err and str(path) in err, err


@pytest.fixture(scope="module")
def retuned(tmp_path_factory):
    d = tmp_path_factory.mktemp("retune")
    save_trace(synth_trace("gemma3-270m", 4, 8, depths="every:3", ead="beta:1.2,2", seed=3), d / "tiny.npz")
    lc = _bench()
    # the same trials as the batch-1 search: the re-tune at batch 1, closed loop, for tokens/s is that search
    result = lc.run([str(d / "tiny.npz")], 3, [1, 2], [1.0], 4, 2, d / "out", max_tokens=8, log=lambda _: None,
                    retune_trials=3, synth_seqs=6)
    lc.write(d / "out", result)
    return lc, result, d


def test_synthetic_trace_grown_from_its_own_arguments(retuned):
    lc, result, d = retuned
    (name, info), = result["traces"].items()
    assert info["from"] == "tiny.npz" and info["sequences"] == 6 and info["synthetic"]
    path = d / "out" / "traces" / name
    want = synth_trace("gemma3-270m", 6, 8, depths="every:3", ead="beta:1.2,2", seed=4)
    assert load_trace(path).meta["sha256"] == want.meta["sha256"] == info["sha256"]
    assert lc.grown(str(path), 6, d / "again") == str(path)  # already that large: used as given
    assert not (d / "again").exists()


def test_retuned_points_are_each_metrics_own_winner(retuned):
    lc, result, d = retuned
    base, again = result["points"], result["retuned"]["points"]
    key = lambda p: (p["setting"], p["axis"], p["x"], p["method"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, base))
    at = {key(p): p for p in again}
    won = result["retuned"]["winners"]
    assert len(won) == len(again) // 3 * 2 * 3  # per point: two methods, three objectives
    first = {(st["setting"], m): (v["policy"], v["params"]) for st in result["settings"] for m, v in st["methods"].items()}
    for w in won:
        metric = next(m for m, o in lc.OBJECTIVE.items() if o == w["objective"])
        assert at[w["setting"], w["axis"], w["x"], w["method"]][metric] == w["held_out"]
        if w["batch1_winner"]:  # kept because it did better on the tuning half than the point's own search
            assert (w["policy"], w["params"]) == first[w["setting"], w["method"]]
    for p in base:
        if p["method"] == "ar":
            assert at[key(p)] == p
        elif p["axis"] == "batch" and p["x"] == 1:
            # the same search as the batch-1 winner's, so the same configuration timed the same way
            w = next(w for w in won if (w["setting"], w["axis"], w["x"], w["method"], w["objective"])
                     == (p["setting"], "batch", 1, p["method"], "tokens_per_s"))
            assert w["configuration"] == p["configuration"] and w["held_out"] == p["tokens_per_s"]
    assert json.loads((d / "out" / "retuned" / "load_curves.json").read_text())["points"] == json.loads(json.dumps(again))
    rows = lc.compare(result).splitlines()
    assert len(rows) == 2 + len(result["crossovers"])


def test_rate_points_time_ar_under_the_tunes_arrivals(retuned):
    """A re-tune's load is the curve's: AR timed as a tune times its winners is the curve's AR, at every point."""
    lc, result, d = retuned
    from dexsim.hardware.pricing import HardwareConfig
    (name, _), = result["traces"].items()
    for st in result["settings"]:
        for axis, x, batch, arrival in lc.load_points(result["batches"], result["rate_factors"],
                                                      st["ar_saturation_qps"], st["poisson_batch"]):
            row = lc.timed(str(d / "out" / "traces" / name), HardwareConfig(gpu=lc.GPU, pp=st["pp"], batch=batch),
                           d / "t", arrival, st["requests"], 8, 0, "ar", {})
            ar = next(p for p in result["points"] if (p["setting"], p["axis"], p["x"], p["method"])
                      == (st["setting"], axis, x, "ar"))
            assert (row["tokens_per_s"], row["p50_token_latency_s"], row["p99_token_latency_s"]) == \
                (ar["tokens_per_s"], ar["p50_token_latency_s"], ar["p99_token_latency_s"])


def test_rate_tokens_per_s_is_the_caps_closed_loop_winner(retuned):
    _, result, _ = retuned
    won = {(w["setting"], w["axis"], w["x"], w["method"], w["objective"]): w for w in result["retuned"]["winners"]}
    for (setting, axis, x, method, objective), w in won.items():
        if axis == "rate" and objective == "tokens_per_s":
            cap = won[setting, "batch", result["settings"][0]["poisson_batch"], method, "tokens_per_s"]
            assert (w["policy"], w["params"]) == (cap["policy"], cap["params"])


@pytest.mark.parametrize("flag", [["--retune-trials", "0"], ["--synth-seqs", "-1"], ["--retune-batches", "3"],
                                  ["--retune-rates", "0.5,x"]])
def test_bad_flag_is_one_line_and_exit_2(flag):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_curves.py"), *flag], capture_output=True, check=False,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and flag[0] in r.stderr, r.stderr


def test_viz_load_plots_the_retuned_curves(retuned, tmp_path, capsys):
    lc, result, d = retuned
    path = d / "out" / "retuned" / "load_curves.json"
    assert main(["load", str(path), "--out", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.split()) == len(lc.SETTINGS)
    c = result["retuned"]["crossovers"][0]
    fig = loadplot.load_figure(json.loads(path.read_text()), c["trace"], c["setting"])
    assert "re-tuned at each point" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("dex: re-tuned at each point") for t in labels) and "ar: ar" in labels


def test_retune_at_a_subset_resumes_the_searches_a_full_run_made(retuned):
    """A re-tune at some load points only: those points, and (the searches resumed from the full run's
    folder, as a killed run's are) the same winners and values there."""
    lc, result, d = retuned
    (name, _), = result["traces"].items()
    sub = lc.run([str(d / "out" / "traces" / name)], 3, [1, 2], [1.0], 4, 2, d / "out", max_tokens=8,
                 log=lambda _: None, retune_trials=3, retune_batches=[2], retune_rates=[])
    full = {(p["setting"], p["axis"], p["x"], p["method"]): p for p in result["retuned"]["points"]}
    got = sub["retuned"]["points"]
    assert sorted({(p["axis"], p["x"]) for p in got}) == [("batch", 2)]
    for p in got:
        assert p == full[p["setting"], p["axis"], p["x"], p["method"]]


def test_out_holding_another_traces_searches_is_one_line_and_exit_2(retuned, tmp_path):
    """The searches resume from --out, so a folder of another trace's (same name) is refused, not mixed in."""
    import shutil
    import subprocess
    import sys
    _, result, d = retuned
    (name, _), = result["traces"].items()
    other = tmp_path / name
    save_trace(synth_trace("gemma3-270m", 6, 8, depths="every:3", ead="beta:2,1", seed=9), other)
    out = tmp_path / "out"
    shutil.copytree(d / "out" / "tune", out / "tune")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_curves.py"), "--traces", str(other),
                        "--trials", "3", "--batches", "1,2", "--rates", "1.0", "--poisson-batch", "2", "--requests", "4",
                        "--max-tokens", "8", "--synth-seqs", "0", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "another setting" in r.stderr, r.stderr


def test_batch1_winner_is_kept_where_the_points_search_does_worse_in_sample(retuned, tmp_path, monkeypatch):
    """A point's search that does worse on the tuning half than the batch-1 winner gives way to it: the
    point then holds the batch-1 winner's held-out values, the curve's own (closed loop: the same rows)."""
    lc, result, d = retuned
    (name, _), = result["traces"].items()
    real = lc.winner

    def worse(*args):
        s, found, entry = real(*args)
        if "retune" not in str(args[4]):  # the batch-1 searches themselves
            return s, found, entry
        bad = 0.0 if lc.tuning.OBJECTIVES[args[-1]][1] == "maximize" else 1e9
        return s, ("ar", {}), {**entry, "in_sample": {**entry["in_sample"], "value": bad}}

    monkeypatch.setattr(lc, "winner", worse)
    got = lc.run([str(d / "out" / "traces" / name)], 3, [1, 2], [1.0], 4, 2, tmp_path / "out", max_tokens=8,
                 log=lambda _: None, retune_trials=2, retune_rates=[])
    base = {(p["setting"], p["axis"], p["x"], p["method"]): p for p in got["points"]}
    won = got["retuned"]["winners"]
    assert won and all(w["batch1_winner"] for w in won)
    for p in got["retuned"]["points"]:
        for metric in lc.METRICS:
            assert p[metric] == base[p["setting"], p["axis"], p["x"], p["method"]][metric]
