"""Emulation: a trace's replay, every node-layer it schedules really computed on a device.

The replay (dexsim/replay/executor.py) decides what an exit reads from a trace; the engine
(engine.py) computes layers on a model. `EmulateExecutor` is the replay's executor with the engine's
work attached: every decision (exit tokens, confidences, which node is on the true path) is the
replay's own code, so the lattice core takes exactly the replay's transitions and its counters equal
`dexsim replay`'s; every node-layer the core schedules runs on the model (rows at one layer batched
with the tree mask, as the engine does), every exit read evaluates the head and samples, and KV is
promoted on commit and freed on discard by the engine's own `TorchExecutor`. Weights may be random
(`random:NAME`): the time of a layer does not depend on what the weights say, and the tokens come from
the trace. That times DEX's schedule on a model whose weights or trace quality one does not have.

The sequences run one after another, each alone (batch 1, as the simulator prices a replay), in a
lattice of its own; the replay's off-path draws are keyed by (seed, node, depth) and its per-depth
statistics are the whole trace's, so the sequences' counters sum to the side-by-side replay's.
Prefill is not timed (the simulator does not price it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from dexsim.core import lattice as core
from dexsim.hardware.pricing import Tally, tally_of
from dexsim.replay.executor import ReplayData, ReplayExecutor, _REPLAY_FIELDS, replay_lattice
from dexsim.traces.format import Trace

from .engine import TorchExecutor


class EmulateExecutor(ReplayExecutor):
    """The replay's executor for sequence `seq` of `trace`, computing on `model` what the core schedules.

    The lattice's `tag` is the replay's (on the true path or not); the engine's pool slots are kept by
    node id in the engine (`slot_of`) and handed to it as its own view of the lattice. `stub`: the
    layer and head computations are skipped (the host's control alone: how `profile` measures it)."""

    def __init__(self, trace: Trace, seq: int, model, capacity: int, *, seed: int = 0, jump: bool = False,
                 graphs: bool = False, stub: bool = False):
        super().__init__(trace, seed)
        self.can_jump = jump
        f = dict(self.fields)
        for k in ("offset", "length", "prompt_len"):  # this sequence is sequence 0 of its lattice
            f[k] = f[k][seq: seq + 1].copy()
        self.rx = ReplayData(*(f[k] for k in _REPLAY_FIELDS))
        self.vocab = model.args.vocab
        n_prompt, n_new = int(trace.prompt_len[seq]), int(f["length"][0])
        prompt = np.random.default_rng([seed, seq]).integers(0, self.vocab, n_prompt).tolist()  # its contents do not matter
        self.engine = TorchExecutor(model, [prompt], capacity, n_new, graphs=graphs)
        self.slots = np.zeros((1, capacity), np.int64)
        self.stub = stub
        if stub:
            self.engine._round = lambda *a: None
        self.inside = np.zeros(2)  # [wall, cpu] seconds spent in the engine's layer and head calls

    def _view(self, lat) -> SimpleNamespace:
        """The lattice as the engine sees it: `tag` = each live node's pool slot, tokens within the vocabulary
        (off-path tokens are fresh ids >= vocab, the root has none: any id serves, no decision reads it)."""
        slot_of = self.engine.slot_of[0]
        self.slots[0, : lat.n[0]] = [slot_of.get(i, (0,))[0] for i in lat.node_id[0, : lat.n[0]].tolist()]
        return SimpleNamespace(tag=self.slots, pos=lat.pos, parent=lat.parent, depth=lat.depth,
                               node_id=lat.node_id, token=lat.token % self.vocab)

    def spawned(self, lat, s, j):
        super().spawned(lat, s, j)
        self.engine.spawned(self._view(lat), s, j)

    def compute(self, lat, s, j, layers):
        view = self._view(lat)
        t = _clocks()
        self.engine.compute(view, s, j, layers)
        self.inside += _clocks() - t

    def read_exits(self, lat, s, j):
        tok, conf = super().read_exits(lat, s, j)
        if not self.stub:
            view = self._view(lat)
            t = _clocks()
            self.engine.read_exits(view, s, j)  # the head and the sampling, whose answer the trace gives
            self.inside += _clocks() - t
        return tok, conf

    def committed(self, lat, s, node_ids):
        self.engine.committed(lat, s, node_ids)

    def discarded(self, lat, s, node_ids):
        self.engine.discarded(lat, s, node_ids)


@dataclass
class Emulation:
    counters: dict  # summed over sequences, as `dexsim replay --json` prints them
    tally: Tally  # what pricing reads, summed over sequences
    wall_s: float  # decoding only, every sequence (prefill and set-up excluded)
    cpu_s: float  # the same, this process's CPU time
    inside: np.ndarray  # [wall, cpu] of that in the engine's layer and head calls (the rest is the host's control)
    outputs: list  # committed tokens of each sequence
    output_matches_trace: bool

    @property
    def tokens_per_s(self) -> float:
        return self.counters["tokens"] / self.wall_s if self.wall_s > 0 else float("inf")

    def seconds(self, clock: str) -> float:
        return self.cpu_s if clock == "cpu" else self.wall_s

    def host_seconds(self, clock: str) -> float:
        """The time outside the engine's layer and head calls: the core, the replay, the bookkeeping."""
        return self.seconds(clock) - self.inside[1 if clock == "cpu" else 0]


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


@torch.inference_mode()
def emulate(trace: Trace, policy, model, *, seed: int = 0, jump: bool = False, graphs: bool = False,
            stub: bool = False, progress=None) -> Emulation:
    """Run `policy` on every sequence of `trace` (one at a time), computing on `model`; counters, tally,
    wall time of the decoding. The model must have the trace's depth."""
    if model.args.n_layer != trace.L:
        raise ValueError(f"the model has {model.args.n_layer} layers, the trace {trace.L}")
    replay_lattice(trace, policy)  # the replay's checks (recorded exit depths, lattice size), nothing run
    tallies, totals, outputs, wall, cpu, inside = [], [], [], 0.0, 0.0, np.zeros(2)
    for s in range(trace.n_seqs):
        lo, hi = int(trace.seq_offsets[s]), int(trace.seq_offsets[s + 1])
        lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1, root_tokens=[core.NO_TOKEN],
                           root_pos=[int(trace.prompt_len[s]) - 1], max_tokens=[hi - lo])
        ex = EmulateExecutor(trace, s, model, policy.buffer + 1, seed=seed, jump=jump, graphs=graphs, stub=stub)
        _sync(model)
        t0, c0 = time.perf_counter(), time.process_time()
        core.run(lat, policy, ex)
        _sync(model)
        wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
        inside += ex.inside
        tallies.append(tally_of(lat))
        totals.append(lat.counters.totals())
        outputs.append(lat.output[0, : int(lat.counters.tokens[0])].tolist())
        if progress is not None:
            progress(1)
    tally = sum_tallies(tallies)
    matches = all(out == trace.final[trace.seq_offsets[s]: trace.seq_offsets[s + 1]].tolist()
                  for s, out in enumerate(outputs))
    counters = {k: sum(t[k] for t in totals) for k in totals[0]} if totals else {}
    return Emulation(counters, tally, wall, cpu, inside, outputs, matches)


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


def sum_tallies(tallies: list) -> Tally:
    """One Tally of several runs' (histograms added entry by entry)."""
    def add(arrays):
        out = np.zeros(max(len(a) for a in arrays), np.int64)
        for a in arrays:
            out[: len(a)] += a
        return out
    ints = {k: int(sum(getattr(t, k) for t in tallies))
            for k in ("tokens", "rounds", "node_layers", "weight_loads", "head_evals", "context_sum")}
    arrays = {k: add([getattr(t, k) for t in tallies]) for k in ("load_rows", "head_rows", "layer_loads", "layer_rows")}
    return Tally(**ints, **arrays)
