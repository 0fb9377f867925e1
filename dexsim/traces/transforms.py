"""Traces made from traces: cut to fewer tokens or sequences, read at fewer depths, or mapped onto a
model of another depth. Each result is a valid trace with its checksum recomputed (it is a
different trace) and a meta key saying what was done."""
from __future__ import annotations

import numpy as np

from dexsim.errors import UserError
from dexsim.specs.catalog import ModelSpec, get_model
from dexsim.traces.format import Trace, trace_checksum


def _derived(trace: Trace, meta: dict, **arrays) -> Trace:
    fields = dict(depths=trace.depths, final=trace.final, exit_tokens=trace.exit_tokens, exit_conf=trace.exit_conf,
                  seq_offsets=trace.seq_offsets, prompt_len=trace.prompt_len)
    out = Trace(**{**fields, **arrays}, meta={**trace.meta, **meta}, path=trace.path)
    out.meta["sha256"] = trace_checksum(out)
    return out


def first_tokens(trace: Trace, n: int | None) -> Trace:
    """The trace cut to the first n tokens of every sequence (a sweep's cheaper, smaller sample)."""
    lengths = np.diff(trace.seq_offsets)
    if n is None or lengths.max() <= n:
        return trace
    keep = np.minimum(lengths, n)
    rows = np.concatenate([np.arange(o, o + k) for o, k in zip(trace.seq_offsets[:-1], keep)])
    return _derived(trace, {"first_tokens": n}, final=trace.final[rows], exit_tokens=trace.exit_tokens[rows],
                    exit_conf=trace.exit_conf[rows], seq_offsets=np.r_[0, np.cumsum(keep)].astype(np.int64))


def first_seqs(trace: Trace, n: int | None) -> Trace:
    """The trace cut to its first n sequences."""
    if n is None or trace.n_seqs <= n:
        return trace
    end = int(trace.seq_offsets[n])
    return _derived(trace, {"first_seqs": n}, final=trace.final[:end], exit_tokens=trace.exit_tokens[:end],
                    exit_conf=trace.exit_conf[:end], seq_offsets=trace.seq_offsets[:n + 1].copy(),
                    prompt_len=trace.prompt_len[:n].copy())


def pick_seqs(trace: Trace, seqs) -> Trace:
    """The trace of the sequences `seqs` (indices, in the order given): a sample of a trace, such as the
    half `tune` searches on and the half it holds out."""
    seqs = np.asarray(seqs, np.int64)
    if seqs.size == 0 or seqs.min() < 0 or seqs.max() >= trace.n_seqs:
        raise UserError(f"{trace.path or 'trace'}: sequences {seqs.tolist()[:4]}...: not in 0..{trace.n_seqs - 1}")
    starts, ends = trace.seq_offsets[seqs], trace.seq_offsets[seqs + 1]
    rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])
    return _derived(trace, {"seqs": seqs.tolist()}, final=trace.final[rows], exit_tokens=trace.exit_tokens[rows],
                    exit_conf=trace.exit_conf[rows], seq_offsets=np.r_[0, np.cumsum(ends - starts)].astype(np.int64),
                    prompt_len=trace.prompt_len[seqs].copy())


def at_depths(trace: Trace, depths) -> Trace:
    """The trace as if only `depths` (a subset of its own, with L) had been recorded."""
    cols = np.searchsorted(trace.depths, depths)
    return _derived(trace, {"at_depths": [int(d) for d in trace.depths[cols]]}, depths=trace.depths[cols],
                    exit_tokens=trace.exit_tokens[:, cols], exit_conf=trace.exit_conf[:, cols])


def rescale_depths(trace: Trace, model: ModelSpec) -> Trace:
    """The trace mapped onto `model` by relative depth: L' = model.layers, depth d -> round(d L'/L)
    (halves up, at least 1). Depths that land together keep the deepest original column, the best
    information about that relative depth; L maps to L'. Final tokens are unchanged, so a replay of
    the result is lossless exactly when one of the original is. Token ids stay the original model's,
    so `arch.vocab` keeps the original vocabulary (the replay's off-path ids start above it); the
    cost model prices `model` from the catalog."""
    L, L2 = trace.L, model.layers
    d = trace.depths.astype(np.int64)
    mapped = np.maximum((2 * d * L2 + L) // (2 * L), 1)  # integer round-half-up of d * L2 / L
    cols = np.nonzero(np.r_[mapped[1:] != mapped[:-1], True])[0]  # last (deepest) of each run
    meta = {"model": model.name, "arch": {**model.arch(), "vocab": trace.vocab},
            "depth_rescaled_from": {"model": trace.meta.get("model"), "depths": d.tolist()}}
    return _derived(trace, meta, depths=mapped[cols].astype(np.int16),
                    exit_tokens=np.ascontiguousarray(trace.exit_tokens[:, cols]),
                    exit_conf=np.ascontiguousarray(trace.exit_conf[:, cols]))


def for_model(trace: Trace, model_name: str | None, flag: str = "--model") -> tuple[Trace, bool]:
    """The trace to replay for `model_name` (None: the trace's own model) and whether it was rescaled."""
    if model_name is None or model_name == trace.meta.get("model"):
        return trace, False
    try:
        model = get_model(model_name)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None
    return rescale_depths(trace, model), True
