"""`python -m viz sweep` and `python -m viz trace`: the PNGs are written with their sizes, from real sweep
results and from hand-made rows with extra columns; bad input is one line and exit status 2."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dexsim.cli.main import main as dexsim_main
from dexsim.traces.synth import synth_trace
from dexsim.traces.format import save_trace
from viz import plots, traceplot
from viz.cli import main
from viz.output import new_figure


def _size(path):
    with Image.open(path) as im:
        return im.size


def _px(w, h, dpi):
    """Pixels of a w x h inch figure at dpi, as Agg sizes it."""
    return new_figure(w, h, dpi).canvas.get_width_height()


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real (tiny) sweep: two GPUs, ar, layerskip and dex at k = 1, 2."""
    d = tmp_path_factory.mktemp("sweep")
    save_trace(synth_trace("gemma3-270m", 2, 8, depths="every:3", seed=4), d / "tiny.npz")
    out = d / "results"
    assert dexsim_main(["sweep", "--traces", str(d / "tiny.npz"), "--out", str(out), "--policies",
                        "ar,layerskip,dex", "--explorers", "1,2", "--exits", "all", "--priorities", "eager",
                        "--drafts", "2", "--gpus", "a100-sxm4-80gb,l4-24gb", "--jobs", "1",
                        "--pp", "1", "--scheduler", "lockstep"]) == 0
    return out


def test_sweep_plots_from_real_results(swept, capsys):
    paths = plots.sweep_plots(swept)
    names = sorted(Path(p).name for p in paths)
    assert names == ["ead-tiny.png", "speedup_heatmap-tiny.png", "throughput_vs_explorers-tiny.png"]
    by = {Path(p).name: p for p in paths}
    dpi = plots.DPI
    # one throughput panel per GPU configuration
    assert _size(by["throughput_vs_explorers-tiny.png"]) == _px(2 * plots.PANEL_W, plots.PANEL_H + 0.9, dpi)
    # heatmap: 2 GPU columns, 3 policy rows
    assert _size(by["speedup_heatmap-tiny.png"]) == _px(1.6 + 1.35 * 2, 1.3 + 0.45 * 3, dpi)
    assert _size(by["ead-tiny.png"]) == _px(7.5, 4.0, dpi)
    assert all(Path(p).parent == swept / "plots" for p in paths)


def test_plots_drawn_by_two_processes_are_the_ones_one_process_draws(swept, tmp_path):
    one = plots.sweep_plots(swept, tmp_path / "one", procs=1)
    two = plots.sweep_plots(swept, tmp_path / "two", procs=2)
    assert [Path(p).name for p in one] == [Path(p).name for p in two]
    assert all(Path(a).read_bytes() == Path(b).read_bytes() for a, b in zip(one, two))


def test_wait_draws_only_once_its_input_ends(swept, tmp_path):
    """`--wait`: a plotter started before its results exist reads them once told (its input closes)."""
    results = tmp_path / "later"
    plotter = subprocess.Popen([sys.executable, "-m", "viz", "--wait", "sweep", str(results), "--jobs", "1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shutil.copytree(swept, results)  # the results appear only now
    out, err = plotter.communicate("", timeout=120)
    assert plotter.returncode == 0, err
    assert sorted(Path(p).name for p in out.split()) == ["speedup_heatmap-tiny.png", "throughput_vs_explorers-tiny.png"]


def test_a_failed_run_kills_its_plotter(tmp_path, monkeypatch):
    from dexsim.cli import sweep as sweep_cli
    started = []
    monkeypatch.setattr(sweep_cli, "start_plots", lambda out, command: started.append(
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE)) or started[-1])
    with pytest.raises(ValueError):
        with sweep_cli.plots_of(str(tmp_path), "sweep", True):
            raise ValueError("the run failed")
    assert started[0].returncode is not None  # killed and reaped, not left waiting


def test_sweep_cli_reads_csv_with_extra_columns_and_skips_what_it_cannot_plot(swept, tmp_path, capsys):
    rows = json.loads((swept / "sweep.json").read_text())
    d = tmp_path / "csvonly"
    d.mkdir()
    cols = list(rows[0]) + ["p50_latency_s", "note"]
    with open(d / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: ("" if v is None else v) for k, v in r.items()}, "p50_latency_s": 0.1, "note": "x"})
    # a trace of that name elsewhere, not the swept one: its checksum differs, so no EAD plot
    assert main(["sweep", str(d), "--out", str(tmp_path / "png")]) == 0
    out, err = capsys.readouterr()
    written = sorted(Path(p).name for p in out.split())
    assert written == ["speedup_heatmap-tiny.png", "throughput_vs_explorers-tiny.png"]
    assert "trace file not found" in err
    # given the trace, the EAD histogram comes too
    assert main(["sweep", str(d), "--out", str(tmp_path / "png"), "--traces", str(swept.parent / "*.npz")]) == 0
    assert "ead-tiny.png" in capsys.readouterr().out


def test_trace_plot_one_and_two_traces(tmp_path, capsys):
    a, b = tmp_path / "lens.npz", tmp_path / "trained.npz"
    save_trace(synth_trace("gemma3-270m", 2, 20, seed=5), a)
    save_trace(synth_trace("gemma3-270m", 2, 20, ead="beta:1.2,2", seed=6, heads="trained:adapters"), b)
    assert main(["trace", str(a), "--out", str(tmp_path / "one.png")]) == 0
    assert main(["trace", str(a), str(b), "--out", str(tmp_path / "two.png")]) == 0
    for p in ("one.png", "two.png"):
        assert _size(tmp_path / p) == _px(*traceplot.FIGSIZE, traceplot.DPI)
    # different depths L: one plot over relative depth
    c = tmp_path / "llama.npz"
    save_trace(synth_trace("llama2-7b", 1, 10, seed=7), c)
    fig = traceplot.trace_figure([str(a), str(c)])
    assert fig.axes[0].get_xlabel() == "relative depth d / L"


@pytest.mark.parametrize("args,message", [
    (["sweep", "/nonexistent/results"], "no such folder or file"),
    (["trace", "/nonexistent/t.npz", "--out", "x.png"], "/nonexistent/t.npz"),
    (["trace", "T", "--out", "plot.gif"], "must end in .png"),
    (["trace", "T", "--out", "/nonexistent/dir/p.png"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    t = tmp_path / "t.npz"
    save_trace(synth_trace("gemma3-270m", 1, 5, seed=1), t)
    args = [str(t) if a == "T" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_results_without_needed_columns_is_an_error(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps([{"trace": "t.npz", "policy": "ar"}]))
    assert main(["sweep", str(tmp_path)]) == 2
    assert "lack column(s)" in capsys.readouterr().err
