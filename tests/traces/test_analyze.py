"""analyze() on a hand-built trace against hand-computed numbers, and the analyze CLI."""
import json

import numpy as np
import pytest

from dexsim.cli import main as cli
from dexsim.traces.analyze import analyze, ead_indices, stable_ead_indices
from dexsim.traces.format import Trace, make_meta, save_trace


def hand_trace() -> Trace:
    """Depths 10/20/30 of L=30. Per token: (EAD, stable EAD) = (10,10) (20,20) (10,30) (30,30) (30,30)."""
    meta = make_meta("smollm2-135m", heads="lens", dataset="hand", template="none",
                     sampling={"rule": "greedy", "seed": 0, "temperature": 0.0}, synthetic=False,
                     recorder={"tool": "test", "version": "0"})
    return Trace(
        depths=np.array([10, 20, 30], np.int16),
        final=np.array([5, 6, 7, 8, 9], np.int32),
        exit_tokens=np.array([[5, 5, 5],   # right from the first depth
                              [1, 6, 6],   # right from 20
                              [7, 1, 7],   # right at 10, flickers at 20
                              [1, 2, 8],   # wrong twice, and the wrong token changes
                              [3, 3, 9]],  # wrong twice, the same wrong token
                             np.int32),
        exit_conf=np.full((5, 3), 0.5, np.float16),
        seq_offsets=np.array([0, 2, 5], np.int64),
        prompt_len=np.array([3, 4], np.int32),
        meta=meta,
    )


def test_ead_indices():
    t = hand_trace()
    np.testing.assert_array_equal(ead_indices(t.exit_tokens, t.final), [0, 1, 0, 2, 2])
    np.testing.assert_array_equal(stable_ead_indices(t.exit_tokens, t.final), [0, 1, 2, 2, 2])


def test_analyze_hand_numbers():
    r = analyze(hand_trace())
    assert (r["model"], r["heads"], r["synthetic"], r["L"]) == ("smollm2-135m", "lens", False, 30)
    assert (r["n_seqs"], r["n_tokens"], r["depths"]) == (2, 5, [10, 20, 30])
    assert r["match_rate"] == pytest.approx([0.4, 0.4, 1.0])
    assert r["ead_hist"] == [2, 1, 2]
    assert r["stable_ead_hist"] == [1, 1, 3]
    assert r["mean_ead"] == pytest.approx(20.0)          # (10 + 20 + 10 + 30 + 30) / 5
    assert r["mean_stable_ead"] == pytest.approx(24.0)   # (10 + 20 + 30 + 30 + 30) / 5
    assert r["ceiling_ead"] == pytest.approx(1.5)
    assert r["ceiling_stable_ead"] == pytest.approx(1.25)
    # two both-wrong pairs (tokens 3 and 4 at 10->20), one changed, over a 10-layer gap
    assert r["wrong_change_rate"] == pytest.approx(1 - 0.5 ** 0.1)


def test_cli_json_and_table(tmp_path, capsys):
    path = tmp_path / "hand.npz"
    save_trace(hand_trace(), path)
    assert cli.main(["analyze", "--trace", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mean_ead"] == pytest.approx(20.0) and out["trace"] == str(path)
    assert cli.main(["analyze", "--trace", str(path)]) == 0
    table = capsys.readouterr().out
    assert "mean EAD         20.00  ceiling L/EAD 1.500x" in table
    assert "   20  0.400      1       1" in table
