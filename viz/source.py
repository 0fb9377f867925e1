"""Where an animation's event log comes from: a trace replayed under a policy, an events file, or a
run of the reference engine (dexref) on a real model.

Each gives a `RunLog`: the events of one sequence and what is needed to label them.
A trace is replayed by the lattice core itself (dexsim/lattice.py with the replay executor), all of
its sequences together exactly as `python -m dexsim replay` does, so with the same seed the events are
those `dexsim replay --events` writes. The run is stepped only until the chosen sequence has committed
the last token shown: the rounds before that do not depend on what comes after, and replaying a whole
trace under a slow policy can take minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from dexsim import lattice as core
from dexsim.errors import UserError
from dexsim.replay import ReplayExecutor, policy_params
from dexsim.trace import Trace, load_trace

EVENTS_FORMAT = f"dex-events/{core.EVENTS_VERSION}"


@dataclass
class RunLog:
    """The events of one sequence under one policy, plus what labels them."""

    events: np.ndarray  # EVENT_DTYPE, this sequence only, in log order
    L: int
    label: str  # the policy in a few words
    total_tokens: int  # tokens the sequence commits when run to its end
    exits: list | None = None  # the policy's exit set, if known
    trace: Trace | None = None  # the trace it came from, if known (token labels)
    lattice: core.Lattice | None = None  # the core's lattice where the run stopped (trace replays)
    tokenizer: object = None  # a `tokenizers.Tokenizer` of the model, when the run had one
    vocab: int | None = None  # the model's vocabulary size, when known without a trace


def describe(policy_name: str, params: dict, L: int) -> str:
    """A policy and its parameters in a few words, as a panel title."""
    exits = params.get("exits")
    if isinstance(exits, str) and exits == ",".join(map(str, range(1, L + 1))):
        exits = "all"
    if policy_name == "ar":
        return "ar"
    if policy_name == "layerskip":
        return f"layerskip e={params.get('exit')} g={params.get('draft')}"
    if policy_name == "adaptive":
        return f"adaptive tau={params.get('threshold')} B={params.get('buffer')} E={exits}"
    if policy_name == "dex":
        return f"dex k={params.get('explorers')} B={params.get('buffer')} {params.get('priority')} E={exits}"
    return policy_name


def _check_exits(trace: Trace, policy) -> None:
    # the same check as dexsim.replay: a policy may only read depths the trace recorded
    bad = np.setdiff1d(policy.exits, trace.depths)
    if len(bad):
        raise UserError(f"{trace.path or 'trace'}: exit depth {int(bad[0])} is not recorded in field 'depths' "
                        f"(recorded: {','.join(map(str, trace.depths))})")


def replay_until(trace: Trace, policy, seq: int, tokens: int, *, seed: int = 0) -> core.Lattice:
    """The core run over the whole trace, as `dexsim.replay.replay` builds it, stepped until sequence
    `seq` has committed `tokens` tokens (or stopped). The event log is recorded."""
    _check_exits(trace, policy)
    lengths = np.diff(trace.seq_offsets)
    lat = core.Lattice(L=trace.L, exits=policy.exits, capacity=policy.buffer + 1,
                       root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                       max_tokens=lengths, record_events=True)
    executor = ReplayExecutor(trace, seed)
    core.start(lat, executor)
    while lat.active[seq] and lat.counters.tokens[seq] < tokens:
        core.step(lat, policy, executor)
    return lat


def check_seq(seq: int, n_seqs: int) -> None:
    if not 0 <= seq < n_seqs:
        raise UserError(f"--seq {seq}: out of range (the trace has sequences 0..{n_seqs - 1})")


def from_trace(trace: Trace, policy, seq: int, until_tokens: int, *, seed: int = 0) -> RunLog:
    """Replay `trace` under `policy` until sequence `seq` has committed `until_tokens` tokens."""
    check_seq(seq, trace.n_seqs)
    lat = replay_until(trace, policy, seq, until_tokens, seed=seed)
    ev = lat.events()
    params = policy_params(policy)
    return RunLog(ev[ev["seq"] == seq], trace.L, describe(policy.name, params, trace.L),
                  int(np.diff(trace.seq_offsets)[seq]), [int(d) for d in policy.exits], trace, lat)


def load_events(path: str) -> tuple[np.ndarray, dict]:
    """An events file (`dexsim replay --events`): its events and meta, checked for format and version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "events" not in z.files or "meta" not in z.files:
                raise UserError(f"{path}: not an events file (needs arrays 'events' and 'meta')")
            events, meta_text = z["events"], str(z["meta"])
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: cannot read as .npz ({e})") from None
    try:
        meta = json.loads(meta_text)
    except ValueError:
        raise UserError(f"{path}: field 'meta' is not JSON") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != EVENTS_FORMAT:
        raise UserError(f"{path}: field 'meta.format' is {fmt!r}; this viz reads {EVENTS_FORMAT!r} "
                        f"(an incompatible version: re-record it with `python -m dexsim replay --events`)")
    if meta.get("kinds", list(core.EVENT_NAMES)) != list(core.EVENT_NAMES):
        raise UserError(f"{path}: field 'meta.kinds' differs from this core's event kinds")
    if events.dtype != core.EVENT_DTYPE:
        raise UserError(f"{path}: field 'events' has dtype {events.dtype}, expected {core.EVENT_DTYPE}")
    if not isinstance(meta.get("L"), int) or meta["L"] < 1:
        raise UserError(f"{path}: field 'meta.L' must be a positive integer")
    return events, meta


def from_events(path: str, seq: int, policy_flag: str | None = None) -> RunLog:
    """One sequence of an events file. `policy_flag`, if given, must name the policy that recorded it."""
    events, meta = load_events(path)
    name = meta.get("policy", "?")
    if policy_flag is not None and policy_flag != name:
        raise UserError(f"--policy {policy_flag}: {path} was recorded under --policy {name}")
    seqs = np.unique(events["seq"])
    if seq not in seqs:
        have = f"{seqs.min()}..{seqs.max()}" if len(seqs) else "none"
        raise UserError(f"--seq {seq}: not in {path} (sequences {have})")
    ev = events[events["seq"] == seq]
    L = int(meta["L"])
    exits = meta.get("exits")
    exit_list = [int(x) for x in exits.split(",")] if isinstance(exits, str) and exits else None
    trace = _trace_beside(meta.get("trace"))
    # the whole run is in the file: the sequence commits what its commit events say
    total = int((ev["kind"] == core.COMMIT).sum())
    return RunLog(ev, L, describe(name, meta, L), total, exit_list, trace)


def _trace_beside(path) -> Trace | None:
    """The trace an events file names, if it is still there (only for token labels; never required)."""
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        return load_trace(path)
    except UserError:
        return None


def from_model(args, names: list[str], tokens: int) -> list[RunLog]:
    """Runs of the reference engine (dexref) on `args.prompt`, one per policy name, each generating
    `tokens` tokens (fewer if the model stops at EOS). The engine computes every layer (no jumps)."""
    try:
        from dexref.cli import load_model
        from dexref.cli import policy_from_args as ref_policy
        from dexref.engine import generate
    except ImportError as e:
        raise UserError(f"--model {args.model}: needs the reference engine dexref and its extras "
                        f"(pip install -e '.[ref]'): {e}") from None
    ref_args = argparse.Namespace(model=args.model, dtype="float32", template=args.template, threads=None)
    model, tok, _ = load_model(ref_args)
    ids = tok.apply(args.prompt, args.template)
    if not ids:
        raise UserError("--prompt: no tokens")
    eos = model.args.eos if model.args.eos >= 0 else None
    L = model.args.n_layer
    runs = []
    for name in names:
        policy = ref_policy(argparse.Namespace(**{**vars(args), "policy": name}), L)
        run = generate(model, [ids], policy, tokens, eos=eos, record_events=True)
        ev = run.lattice.events()
        runs.append(RunLog(ev, L, describe(policy.name, policy_params(policy), L),
                           int(run.lattice.counters.tokens[0]), [int(d) for d in policy.exits],
                           lattice=run.lattice, tokenizer=tok.tk, vocab=model.args.vocab))
    return runs
