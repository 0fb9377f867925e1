"""A replay's work for the discrete-event simulator (dexsim/des/simulate.py).

The scheduler decides timing, never tokens (DESIGN.md section 3), so the DES does not drive the
lattice: the lattice core runs exactly as under `lockstep` (same policy objects, same rounds, same
counters, the same one compiled loop), and writes down as it advances, per core step, what each
sequence computed (`Lattice.work_log`). The DES later prices and times that record on any hardware
configuration, which is also why a sweep replays once and simulates every GPU configuration from it.

What is recorded (a `WorkLog`, hardware-independent):

- groups: the node-layers of one sequence in one core step that start at the same depth. They share
  one weight load per round (the core's own grouping, the same count that lockstep pricing reads); a
  core step of m rounds advances each group m layers. Per group: rows, and the KV positions its rows
  read (sum of pos + 1, as `context_sum`).
- first-layer dependencies that may cross devices: for a node at depth 0, the step whose exit read
  spawned it (or, for a fresh anchor after a fallback, the step that read the committed token); for a
  node whose next layer may start a pipeline stage (depths in `cut_after`), the step that computed its
  previous layer. Every other dependency (a node's previous layer, an ancestor's KV at the same layer)
  lies on the same device and earlier in that device's in-order queue, so it needs no record.
- commits (the step in which each committed node read its final token). Exit reads need no record:
  every node of a group ends the step at the same depth, so all of them read an exit head there or
  none does (the exit set is in the log).

A step of a sequence is its "call": sequences advance one core step at a time side by side, so the
k-th step of every sequence is call k. Arrays are sorted by call, then sequence, then depth; group
arrays are int32 (and a bool marking each (call, sequence)'s first group): the DES makes a few passes
over millions of groups, and on this machine those passes are bound by memory bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from dexsim.hardware.pricing import stage_first_layers, tally_of
from dexsim.core import lattice as core
from dexsim.replay.executor import ReplayExecutor, replay_lattice


@dataclass
class WorkLog:
    """The work of one replay, per core step ("call"), for the DES. Arrays are sorted by call, then
    sequence (then depth, for groups; slot order, for dependencies)."""

    L: int
    n_seqs: int
    n_calls: int
    cut_after: np.ndarray  # [L+1] bool: depths whose data dependency was recorded
    is_exit: np.ndarray  # [L+1] bool: the policy's exit set
    g_call: np.ndarray  # groups (int32, to keep the passes over millions of them cheap)
    g_seq: np.ndarray
    g_first: np.ndarray  # bool: the first group of its (call, sequence)
    g_d0: np.ndarray  # depth before the step
    g_m: np.ndarray  # layers (rounds) in this step
    g_rows: np.ndarray
    g_ctx: np.ndarray  # KV positions read per layer, summed over the rows (float64, exact)
    g_round: np.ndarray  # the sequence's round at the step's first round (tests map rounds to steps)
    d_group: np.ndarray  # first-layer dependencies: the group,
    d_call: np.ndarray  # the call of the step it waits for (-1: the request's arrival),
    d_depth: np.ndarray  # and the depth whose device that step ran on
    c_seq: np.ndarray  # commits, in commit order: the sequence and the call in which the
    c_call: np.ndarray  # committed node read its final token
    counters: dict  # per-sequence lattice counters ([S] arrays), to add up over requests


def cut_mask(L: int, pps) -> np.ndarray:
    """`cut_after` for pipelines of the given stage counts: the depths after which a stage starts."""
    mask = np.zeros(L + 1, bool)
    for pp in pps:
        mask[stage_first_layers(L, int(pp)) - 1] = True
    return mask


def worklog(lat) -> WorkLog:
    """The WorkLog of a finished run on `lat` (made with `work_cuts`)."""
    g, d, c = lat.work_log()  # already by call, then sequence: the core takes the sequences side by side
    counters = {k: np.array(getattr(lat.counters, k)) for k in core.COUNTER_NAMES}
    cols = _columns(g)
    return WorkLog(lat.L, lat.S, int(lat.steps.max(initial=0)), np.array(lat.cut_after), np.array(lat.is_exit),
                   cols[1], cols[0], cols[7].astype(bool), cols[2], cols[3], cols[4], cols[5].astype(np.float64),
                   cols[6].astype(np.int64), d[:, 0].copy(), d[:, 1].copy(), d[:, 2].copy(), c[:, 0].copy(),
                   c[:, 1].copy(), counters)


@njit(cache=True)
def _columns(rows):
    """[k, n] from [n, k] in one pass (rows are a cache line each; columns are what the DES reads)."""
    out = np.empty((rows.shape[1], rows.shape[0]), rows.dtype)
    for i in range(rows.shape[0]):
        for k in range(rows.shape[1]):
            out[k, i] = rows[i, k]
    return out


def record(trace, policy, *, seed: int = 0, pps=(1,), record_events: bool = False):
    """Replay `policy` on `trace` exactly as `replay.replay` does, recording its work for the DES on
    pipelines of `pps` stages. Returns (lattice, Tally for lockstep pricing, WorkLog)."""
    lat = replay_lattice(trace, policy, record_events, work_cuts=cut_mask(trace.L, pps))
    core.run(lat, policy, ReplayExecutor(trace, seed))
    return lat, tally_of(lat), worklog(lat)
