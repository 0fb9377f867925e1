"""Where an animation's event log comes from: a trace replayed under a policy, an events file, or a
run of the reference engine (dexref) on a real model.

Each gives a `RunLog`: the events of one sequence and what is needed to label them.
A trace is replayed by the lattice core itself (dexsim/core/lattice.py with the replay executor), all of
its sequences together exactly as `python -m dexsim replay` does, so with the same seed the events are
those `dexsim replay --events` writes. The run is stepped only until the chosen sequence has committed
the last token shown: the rounds before that do not depend on what comes after, and replaying a whole
trace under a slow policy can take minutes.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from dexsim.core import lattice as core
from dexsim.core import registry
from dexsim.core.registry import policy_params
from dexsim.errors import UserError
from dexsim.replay.executor import ReplayExecutor, replay_lattice
from dexsim.traces.format import Trace, load_trace

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
    """A policy and its parameters in a few words, as a panel title (`E=all`: every layer)."""
    exits = params.get("exits")
    if isinstance(exits, str) and exits == ",".join(map(str, range(1, L + 1))):
        exits = "all"
    return registry.describe({**params, "policy": policy_name, "exits": exits})


def replay_until(trace: Trace, policy, seq: int, tokens: int, *, seed: int = 0) -> core.Lattice:
    """The core run over the whole trace, as `dexsim.replay.executor.replay` builds it, stepped until
    sequence `seq` has committed `tokens` tokens (or stopped). The event log is recorded."""
    lat = replay_lattice(trace, policy, record_events=True)
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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as e:
        raise UserError(f"{path}: cannot read as .npz ({e})") from None
    try:
        meta = json.loads(meta_text)
    except (ValueError, RecursionError):
        raise UserError(f"{path}: field 'meta' is not JSON") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != EVENTS_FORMAT:
        raise UserError(f"{path}: field 'meta.format' is {fmt!r}; this viz reads {EVENTS_FORMAT!r} "
                        f"(an incompatible version: re-record it with `python -m dexsim replay --events`)")
    if meta.get("kinds", list(core.EVENT_NAMES)) != list(core.EVENT_NAMES):
        raise UserError(f"{path}: field 'meta.kinds' differs from this core's event kinds")
    if events.dtype != core.EVENT_DTYPE:
        raise UserError(f"{path}: field 'events' has dtype {events.dtype}, expected {core.EVENT_DTYPE}")
    L = meta.get("L")
    if not isinstance(L, int) or isinstance(L, bool) or not 1 <= L <= np.iinfo(events.dtype["depth"]).max:
        raise UserError(f"{path}: field 'meta.L' must be a positive integer (at most "
                        f"{np.iinfo(events.dtype['depth']).max})")
    _check_values(events, L, path)
    return events, meta


def _check_values(ev: np.ndarray, L: int, path: str) -> None:
    """Every event's fields in range (DESIGN.md section 3): one line naming the field and the first bad event."""
    if ev.ndim != 1:
        raise UserError(f"{path}: field 'events' is {ev.ndim}-d, expected 1-d")
    advance = ev["kind"] == core.ADVANCE
    checks = [("kind", ev["kind"] >= len(core.EVENT_NAMES), f"not an event kind (0..{len(core.EVENT_NAMES) - 1})"),
              ("seq", ev["seq"] < 0, "negative"), ("round", ev["round"] < 0, "negative"),
              ("node", ev["node"] < 0, "negative"), ("parent", ev["parent"] < -1, "below -1"),
              ("pos", ev["pos"] < 0, "negative"),
              ("depth", (ev["depth"] < 0) | (ev["depth"] > L), f"outside 0..meta.L={L}"),
              ("n", advance & ((ev["n"] < 1) | (ev["n"] > L - ev["depth"])),
               f"an advance past meta.L={L} or of no layer"),
              ("conf", ~np.isfinite(ev["conf"]), "NaN or inf")]
    for field, bad, what in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path}: field 'events.{field}': {ev[field][i]} at event {i} is {what}")


def check_references(ev: np.ndarray, path: str, seq: int) -> None:
    """One sequence's events refer only to nodes spawned before them and not yet discarded, in round order."""
    spawned, gone = set(), set()
    last_round = -1
    for i, (kind, rnd, node, parent) in enumerate(zip(ev["kind"].tolist(), ev["round"].tolist(),
                                                      ev["node"].tolist(), ev["parent"].tolist())):
        where = f"{path}: sequence {seq}, event {i}"
        if rnd < last_round:
            raise UserError(f"{where}: field 'events.round' goes back from {last_round} to {rnd}")
        last_round = rnd
        if kind == core.SPAWN:
            if node in spawned:
                raise UserError(f"{where}: field 'events.node': node {node} spawned twice")
            if parent != -1 and parent not in spawned:
                raise UserError(f"{where}: field 'events.parent': node {parent} was never spawned")
            spawned.add(node)
            continue
        if node not in spawned or node in gone:
            raise UserError(f"{where}: field 'events.node': node {node} is not live "
                            f"({'discarded' if node in gone else 'never spawned'})")
        if kind == core.COLLAPSE and parent not in spawned:
            raise UserError(f"{where}: field 'events.parent': node {parent} was never spawned")
        if kind == core.DISCARD:
            gone.add(node)


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
    check_references(ev, path, seq)
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


def from_model(model_name: str, template: str, prompt: str, policies, tokens: int) -> list[RunLog]:
    """Runs of the reference engine (dexref) on `prompt`, one per PolicyConfig, each generating
    `tokens` tokens (fewer if the model stops at EOS). The engine computes every layer (no jumps)."""
    try:
        from dexref.engine import generate
        from dexref.load import ModelConfig, exit_set, load_model
    except ImportError as e:
        raise UserError(f"--model {model_name}: needs the reference engine dexref and its extras "
                        f"(pip install -e '.[ref]'): {e}") from None
    model, tok, _ = load_model(ModelConfig(model=model_name, template=template))
    ids = tok.apply(prompt, template)
    if not ids:
        raise UserError("--prompt: no tokens")
    eos = model.args.eos if model.args.eos >= 0 else None
    L = model.args.n_layer
    runs = []
    for pc in policies:
        policy = pc.policy(L, exit_set(pc.params["exits"], L, None, "--exits"))
        run = generate(model, [ids], policy, tokens, eos=eos, record_events=True)
        ev = run.lattice.events()
        runs.append(RunLog(ev, L, describe(policy.name, policy_params(policy), L),
                           int(run.lattice.counters.tokens[0]), [int(d) for d in policy.exits],
                           lattice=run.lattice, tokenizer=tok.tk, vocab=model.args.vocab))
    return runs
