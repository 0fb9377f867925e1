"""Trace format: save/load round trip, and one-line errors naming the file and field for every bad input."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from dexsim.cli import main as cli
from dexsim.errors import UserError
from dexsim.traces.format import ARRAYS, Trace, load_trace, make_meta, save_trace, trace_checksum, validate


def tiny_trace() -> Trace:
    """smollm2-135m (L=30, vocab 49152), depths 10/20/30, two sequences of 2 and 3 tokens."""
    final = np.array([5, 6, 7, 8, 9], np.int32)
    exit_tokens = np.array([[5, 5, 5], [1, 6, 6], [7, 1, 7], [1, 2, 8], [3, 3, 9]], np.int32)
    meta = make_meta("smollm2-135m", heads="lens", dataset="hand", template="none",
                     sampling={"rule": "greedy", "seed": 0, "temperature": 0.0}, synthetic=True,
                     recorder={"tool": "test", "version": "0"})
    trace = Trace(
        depths=np.array([10, 20, 30], np.int16),
        final=final,
        exit_tokens=exit_tokens,
        exit_conf=np.linspace(0, 1, 15).reshape(5, 3).astype(np.float16),
        seq_offsets=np.array([0, 2, 5], np.int64),
        prompt_len=np.array([3, 4], np.int32),
        meta=meta,
    )
    trace.meta["sha256"] = trace_checksum(trace)
    return trace


def write_raw(path, arrays: dict, meta, fix_checksum=True):
    """Write an npz with no validation, so a test can plant one defect and nothing else."""
    if fix_checksum and isinstance(meta, dict) and arrays.keys() == ARRAYS.keys():
        meta = dict(meta, sha256=trace_checksum(Trace(**arrays, meta=meta)))
    if isinstance(meta, dict):
        meta = np.array(json.dumps(meta))
    np.savez(path, **arrays, meta=meta)


def raw_arrays(trace: Trace) -> dict:
    return {name: getattr(trace, name).copy() for name in ARRAYS}


def test_round_trip(tmp_path):
    trace = tiny_trace()
    path = tmp_path / "t.npz"
    save_trace(trace, path)
    loaded = load_trace(path)
    for name, dtype in ARRAYS.items():
        assert getattr(loaded, name).dtype == dtype
        np.testing.assert_array_equal(getattr(loaded, name), getattr(trace, name))
    assert loaded.meta == trace.meta
    assert loaded.meta["format"] == "dex-trace/1" and len(loaded.meta["sha256"]) == 64
    assert loaded.path == str(path)
    assert (loaded.L, loaded.n_seqs, loaded.n_tokens, loaded.vocab) == (30, 2, 5, 49152)
    np.testing.assert_array_equal(loaded.final[loaded.seq_slice(1)], [7, 8, 9])
    assert os.listdir(tmp_path) == ["t.npz"]  # the temp file of the atomic write is gone


def test_save_fills_checksum_and_rejects_bad_trace(tmp_path):
    trace = tiny_trace()
    trace.meta["sha256"] = ""
    save_trace(trace, tmp_path / "ok.npz")
    assert trace.meta["sha256"] == trace_checksum(trace)
    trace.exit_tokens[0, -1] = 1
    with pytest.raises(UserError, match="exit_tokens"):
        save_trace(trace, tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()
    with pytest.raises(UserError, match="cannot write"):
        save_trace(tiny_trace(), tmp_path / "no-such-dir" / "t.npz")


def test_make_meta_has_every_key():
    meta = tiny_trace().meta
    assert meta["arch"]["layers"] == 30 and meta["arch"]["vocab"] == 49152
    assert meta["created"].endswith("+00:00")
    validate(tiny_trace())


def _set(name, index, value):
    def mutate(arrays, meta):
        arrays[name][index] = value
    return mutate


def _replace(name, fn):
    def mutate(arrays, meta):
        arrays[name] = fn(arrays[name])
    return mutate


def _meta(fn):
    def mutate(arrays, meta):
        fn(meta)
    return mutate


def _final_and_last(value):
    def mutate(arrays, meta):
        arrays["final"][0] = value
        arrays["exit_tokens"][0, -1] = value
    return mutate


def _offsets_decreasing(arrays, meta):
    arrays["seq_offsets"] = np.array([0, 4, 3, 5], np.int64)
    arrays["prompt_len"] = np.array([3, 4, 5], np.int32)  # one more sequence, so only the order is wrong


# (case id, mutation of a valid trace's arrays/meta, field the error must name)
ARRAY_CASES = [
    ("missing-array", lambda a, m: a.pop("prompt_len"), "prompt_len: missing array"),
    ("dtype-final", _replace("final", lambda x: x.astype(np.int64)), "final: dtype"),
    ("dtype-conf", _replace("exit_conf", lambda x: x.astype(np.float32)), "exit_conf: dtype"),
    ("big-endian", _replace("depths", lambda x: x.astype(">i2")), "depths: dtype"),
    ("ndim-exit-tokens", _replace("exit_tokens", lambda x: x.ravel()), "exit_tokens: 1-d"),
    ("ndim-depths", _replace("depths", lambda x: np.array(30, np.int16)), "depths: 0-d"),
    ("shape-conf", _replace("exit_conf", lambda x: x[:, 1:]), "exit_conf: shape"),
    ("shape-prompt-len", _replace("prompt_len", lambda x: x[:1]), "prompt_len: shape"),
    ("no-sequences", _replace("seq_offsets", lambda x: x[:1]), "seq_offsets"),
    ("depths-not-increasing", _set("depths", 1, 10), "depths: not strictly increasing"),
    ("depth-below-1", _set("depths", 0, 0), "depths: depth 0 < 1"),
    ("depth-above-layers", _set("depths", 2, 31), "depths: last depth 31"),
    ("L-below-layers", _set("depths", 2, 25), "depths: last depth 25"),
    ("last-exit-not-final", _set("exit_tokens", (1, 2), 1), "exit_tokens: last depth differs"),
    ("final-out-of-range", _final_and_last(49152), "final: token out of range"),
    ("exit-negative", _set("exit_tokens", (0, 0), -1), "exit_tokens: token out of range"),
    ("conf-nan", _set("exit_conf", (0, 0), np.nan), "exit_conf: NaN"),
    ("conf-inf", _set("exit_conf", (2, 1), np.inf), "exit_conf: NaN or inf"),
    ("conf-above-1", _set("exit_conf", (0, 0), 1.5), "exit_conf: outside [0, 1]"),
    ("conf-negative", _set("exit_conf", (0, 0), -0.25), "exit_conf: outside [0, 1]"),
    ("offsets-start", _set("seq_offsets", 0, 1), "seq_offsets: starts at 1"),
    ("offsets-decreasing", _offsets_decreasing, "seq_offsets: decreasing"),
    ("offsets-end", _set("seq_offsets", 2, 4), "seq_offsets: ends at 4"),
    ("empty-sequence", _set("seq_offsets", 1, 0), "seq_offsets: sequence 0 is empty"),
    ("prompt-len-zero", _set("prompt_len", 1, 0), "prompt_len: value 0 < 1"),
    ("meta-missing-key", _meta(lambda m: m.pop("template")), "meta: missing key 'template'"),
    ("meta-format", _meta(lambda m: m.update(format="dex-trace/0")), "meta.format"),
    ("meta-arch-key", _meta(lambda m: m["arch"].pop("vocab")), "meta.arch: missing key 'vocab'"),
    ("meta-layers", _meta(lambda m: m["arch"].update(layers="30")), "meta.arch.layers"),
    ("meta-synthetic", _meta(lambda m: m.update(synthetic="yes")), "meta.synthetic"),
]


@pytest.mark.parametrize("mutate,field", [c[1:] for c in ARRAY_CASES], ids=[c[0] for c in ARRAY_CASES])
def test_bad_arrays_and_meta(tmp_path, capsys, mutate, field):
    trace = tiny_trace()
    arrays, meta = raw_arrays(trace), json.loads(json.dumps(trace.meta))
    mutate(arrays, meta)
    path = tmp_path / "bad.npz"
    write_raw(path, arrays, meta)
    with pytest.raises(UserError) as err:
        load_trace(path)
    assert str(err.value).startswith(f"{path}: ") and field in str(err.value)
    assert "\n" not in str(err.value)
    assert cli.main(["analyze", "--trace", str(path)]) == 2
    out, stderr = capsys.readouterr()
    assert out == "" and stderr == f"error: {err.value}\n"


def _corrupt_member(path, member):
    """Overwrite bytes in the middle of one member's compressed data."""
    info = zipfile.ZipFile(path).getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len) + info.compress_size // 2)
        f.write(b"\xff\x00\xff\x00\xff\x00")


def _file_cases(tmp_path):
    good = tmp_path / "good.npz"
    save_trace(tiny_trace(), good)
    data = good.read_bytes()
    (tmp_path / "text.npz").write_text("not a zip\n")
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    np.save(tmp_path / "bare.npy", np.zeros(3))
    big = tiny_trace()
    big.exit_tokens = np.tile(big.exit_tokens, (400, 1))  # enough data that the middle is in the deflate stream
    big.exit_tokens[:, 0] = np.arange(2000) % 977
    big.final = big.exit_tokens[:, -1].copy()
    big.exit_conf = np.tile(big.exit_conf, (400, 1))
    big.seq_offsets = np.array([0, 1000, 2000], np.int64)
    save_trace(big, tmp_path / "corrupt.npz")
    _corrupt_member(tmp_path / "corrupt.npz", "exit_tokens.npy")
    arrays, meta = raw_arrays(tiny_trace()), tiny_trace().meta
    write_raw(tmp_path / "notjson.npz", arrays, np.array("{not json"))
    write_raw(tmp_path / "meta1d.npz", arrays, np.array([json.dumps(meta)]))
    write_raw(tmp_path / "metabytes.npz", arrays, np.array(json.dumps(meta).encode()))
    write_raw(tmp_path / "metalist.npz", arrays, np.array("[1, 2]"))
    meta_bad_sha = dict(meta, sha256="0" * 64)
    write_raw(tmp_path / "checksum.npz", arrays, meta_bad_sha, fix_checksum=False)
    tampered = raw_arrays(tiny_trace())
    tampered["exit_tokens"][0, 0] = 4  # a valid change the checksum still catches
    write_raw(tmp_path / "tampered.npz", tampered, meta, fix_checksum=False)
    return {
        "missing.npz": "file: no such file",
        "text.npz": "file: not a readable npz",
        "trunc.npz": "file: not a readable npz",
        "bare.npy": "file: not a readable npz",
        "corrupt.npz": "exit_tokens: unreadable",
        "notjson.npz": "meta: not JSON",
        "meta1d.npz": "meta: expected a 0-d unicode array",
        "metabytes.npz": "meta: expected a 0-d unicode array",
        "metalist.npz": "meta: not a JSON object",
        "checksum.npz": "meta.sha256: checksum mismatch",
        "tampered.npz": "meta.sha256: checksum mismatch",
    }


def test_bad_files(tmp_path, capsys):
    for name, field in _file_cases(tmp_path).items():
        path = tmp_path / name
        with pytest.raises(UserError) as err:
            load_trace(path)
        assert str(err.value).startswith(f"{path}: ") and field in str(err.value), name
        assert "\n" not in str(err.value)
        assert cli.main(["analyze", "--trace", str(path)]) == 2
        assert capsys.readouterr().err == f"error: {err.value}\n"


@pytest.mark.parametrize("name", ["missing.npz", "corrupt.npz", "checksum.npz"])
def test_cli_bad_trace_subprocess(tmp_path, name):
    _file_cases(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dexsim", "analyze", "--trace", str(tmp_path / name)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {tmp_path / name}: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
