"""The transitions compiled ahead in a forked process are the very overloads the replay loop calls: a
changed call in the loop would otherwise leave that work unused, silently (nothing else would fail)."""
from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import multiprocessing
from dexsim.core import registry
from dexsim.replay import compile_ahead
from dexsim.replay.executor import replay
from dexsim.traces.synth import synth_trace

trace = synth_trace("smollm2-135m", 2, 6, seed=1)
policy = registry.make_policy("dex", trace.L, depths=trace.depths)
lat = replay(trace, policy)
for child in multiprocessing.active_children():
    child.join()
for fn, sig in compile_ahead.signatures(lat.st, policy.params):
    assert tuple(sig) in [tuple(s) for s in fn.signatures], (fn, sig, fn.signatures)
print("same overloads")
"""


def test_the_transitions_compiled_ahead_are_the_ones_the_replay_loop_calls(tmp_path):
    # a cold cache of its own, so that this process compiles (or loads what the forked one compiled)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "same overloads" in run.stdout, run.stderr[-3000:]

IN_A_POOL = """
import multiprocessing
from dexsim.core import registry
from dexsim.replay.executor import replay
from dexsim.traces.synth import synth_trace

def tokens(seed):
    trace = synth_trace("smollm2-135m", 2, 6, seed=seed)
    return int(replay(trace, registry.make_policy("dex", trace.L, depths=trace.depths)).counters.totals()["tokens"])

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(1) as pool:  # its worker is daemonic: no children allowed
        print(pool.map(tokens, [1]))
"""


def test_a_daemonic_pool_worker_replays_without_compiling_ahead(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(IN_A_POOL)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "[12]", run.stderr[-3000:]
