"""One writer per results folder: real concurrent `python -m dexsim sweep` processes on one --out.

The second writer is refused with one line naming the folder and the holder (its pid, from the lock's
sidecar) and exit status 2; the holder's rows are all there; temporary files are each writer's own
and none is left behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dexsim.errors import UserError
from dexsim.sweep.store import FILES, HOLDER, LOCK, RowStore, lock_folder, unlock_folder
from dexsim.traces.format import save_trace
from dexsim.traces.synth import synth_trace

ROOT = Path(__file__).resolve().parents[2]
# a grid that takes a few seconds, so that a second writer starts while the first holds the folder
SLOW = ["--policies", "ar,dex", "--explorers", "1,2,3,4,6,8", "--priorities", "eager", "--exits", "all",
        "--gpus", "a100-sxm4-80gb", "--pp", "1", "--scheduler", "lockstep", "--jobs", "1", "--max-tokens", "0"]
FAST = ["--policies", "ar,layerskip", "--exits", "all", "--drafts", "1", "--gpus", "l4-24gb", "--pp", "1",
        "--scheduler", "lockstep", "--jobs", "1"]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "lock.npz"
    save_trace(synth_trace("smollm2-135m", 6, 200, depths="every:3", seed=3), path)
    return str(path)


def _start(trace, out, grid) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dexsim", "sweep", "--traces", trace, "--out", str(out), *grid],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait_for_holder(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.monotonic()
    while not (out / HOLDER).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t < timeout, "the first sweep never took the folder"
        time.sleep(0.05)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_second_writer_is_refused_naming_folder_and_holder(trace, tmp_path):
    out = tmp_path / "res"
    first = _start(trace, out, SLOW)
    try:
        _wait_for_holder(out, first)
        second = subprocess.run([sys.executable, "-m", "dexsim", "sweep", "--traces", trace, "--out", str(out),
                                 *FAST], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        still_running = first.poll() is None
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert still_running, "the first sweep ended before the second started: the grid is too small"
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert str(out) in lines[0] and f"pid {first.pid}" in lines[0] and "in use by another sweep" in lines[0]
    # the holder finished its own grid, untouched: 1 ar row + 6 dex rows
    assert first.returncode == 0, stderr
    rows = json.loads((out / "sweep.json").read_text())
    assert sorted(r["policy"] for r in rows) == ["ar"] + ["dex"] * 6
    assert not (out / HOLDER).exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_three_writers_at_once_lose_nothing(trace, tmp_path):
    """Three sweeps of one grid started together: each either runs (exit 0) or is refused in one line (exit
    2); the folder ends with exactly the grid's rows, consistent across its three files."""
    out = tmp_path / "res"
    procs = [_start(trace, out, FAST) for _ in range(3)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for rc, _, err in results:
        assert rc in (0, 2) and "Traceback" not in err, err
        if rc == 2:
            assert len(err.strip().splitlines()) == 1 and "in use by another sweep" in err
    assert any(rc == 0 for rc, _, _ in results)
    rows = json.loads((out / "sweep.json").read_text())
    lines = [json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines()]
    assert rows == lines and len(rows) == 2  # ar + layerskip e=.. g=1
    assert len({r["key"] for r in rows}) == len(rows)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_held_folder_names_its_holder_in_process(tmp_path):
    lock = lock_folder(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"in use by another sweep \(pid {os.getpid()} on "):
            RowStore(str(tmp_path), resume=False)
    finally:
        unlock_folder(tmp_path, lock)
    store = RowStore(str(tmp_path), resume=False)  # released: the next writer gets it
    store.finish([])
    assert (tmp_path / LOCK).exists() and not (tmp_path / HOLDER).exists()
    assert all((tmp_path / f).exists() for f in FILES)


def test_a_killed_holder_frees_the_folder(trace, tmp_path):
    """The lock is the OS's: it dies with its process, whatever the sidecar still says."""
    out = tmp_path / "res"
    first = _start(trace, out, SLOW)
    _wait_for_holder(out, first)
    first.kill()
    first.communicate()
    assert (out / HOLDER).exists()  # stale, and harmless
    store = RowStore(str(out), resume=True)
    store.finish([])
