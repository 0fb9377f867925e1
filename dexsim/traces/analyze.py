"""Depth statistics of a trace, and the `analyze` subcommand.

Per recorded depth: how often the exit token is already the final one. Per token: the EAD (first
recorded depth that matches) and the stable EAD (first depth from which every later one matches).
`L / mean EAD` is the speedup an oracle that exits each token at its EAD would get for free; no
lossless method can beat it on this trace, so it frames every replay result.
"""
from __future__ import annotations

import numpy as np

from dexsim.depths import on_trace
from dexsim.errors import UserError
from dexsim.traces.format import Trace
from dexsim.traces.transforms import at_depths


def ead_indices(exit_tokens: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Per token, the index (into depths) of the first exit token equal to the final one."""
    # the last column is the final token, so every row has a match and argmax finds the first one
    return (exit_tokens == final[:, None]).argmax(axis=1)


def stable_ead_indices(exit_tokens: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Per token, the index of the first depth from which every later exit token equals the final one."""
    match_from_end = (exit_tokens == final[:, None])[:, ::-1]
    D = exit_tokens.shape[1]
    trailing = np.where(match_from_end.all(axis=1), D, match_from_end.argmin(axis=1))
    return D - trailing


def ceiling(trace: Trace) -> float:
    """L / mean EAD: the speedup if every token were committed at its earliest exit depth for free."""
    return trace.L / float(trace.depths[ead_indices(trace.exit_tokens, trace.final)].astype(np.float64).mean())


def settle_order(trace: Trace) -> list[int]:
    """The recorded depths below L where tokens settle (their stable EAD), most tokens first (ties:
    the shallower first): the order `settle:N` exit sets take them in."""
    counts = np.bincount(stable_ead_indices(trace.exit_tokens, trace.final), minlength=len(trace.depths))
    below = [i for i in range(len(trace.depths)) if trace.depths[i] < trace.L and counts[i] > 0]
    return [int(trace.depths[i]) for i in sorted(below, key=lambda i: (-counts[i], i))]


def exit_set(trace: Trace, spec: str, flag: str = "--exits") -> np.ndarray:
    """The exit set `spec` names on this trace (`all`, `every:N`, `settle:N`, `d1,d2,...`: dexsim/depths.py),
    the one reading every command shares, so that replay, tune, emulate and animate agree."""
    return on_trace(spec, trace.L, trace.depths, flag, trace.path, settle_order(trace))


def wrong_change_rate(trace: Trace) -> float:
    """Per-layer rate at which a wrong exit token changes between consecutive depths that are both wrong.

    A gap of g layers changes with probability 1 - (1 - r)^g; r is solved from the pooled pairs at their
    mean gap, which is exact when the recorded depths are evenly spaced.
    """
    wrong = trace.exit_tokens != trace.final[:, None]
    both = wrong[:, 1:] & wrong[:, :-1]
    if not both.any():
        return 0.0
    changed = (both & (trace.exit_tokens[:, 1:] != trace.exit_tokens[:, :-1])).sum() / both.sum()
    gap = (both * np.diff(trace.depths.astype(np.int64))).sum() / both.sum()
    return float(1 - (1 - changed) ** (1 / gap))


def analyze(trace: Trace) -> dict:
    depths, L, D = trace.depths, trace.L, len(trace.depths)
    ead = ead_indices(trace.exit_tokens, trace.final)
    stable = stable_ead_indices(trace.exit_tokens, trace.final)
    mean_ead = float(depths[ead].astype(np.float64).mean())
    mean_stable = float(depths[stable].astype(np.float64).mean())
    return {
        "trace": trace.path,
        "model": trace.meta["model"],
        "heads": trace.meta["heads"],
        "dataset": trace.meta["dataset"],
        "synthetic": trace.meta["synthetic"],
        "L": L,
        "n_seqs": trace.n_seqs,
        "n_tokens": trace.n_tokens,
        "depths": depths.tolist(),
        "match_rate": (trace.exit_tokens == trace.final[:, None]).mean(axis=0).tolist(),
        "ead_hist": np.bincount(ead, minlength=D).tolist(),
        "stable_ead_hist": np.bincount(stable, minlength=D).tolist(),
        "mean_ead": mean_ead,
        "mean_stable_ead": mean_stable,
        "ceiling_ead": L / mean_ead,
        "ceiling_stable_ead": L / mean_stable,
        "wrong_change_rate": wrong_change_rate(trace),
    }


def format_table(r: dict) -> str:
    kind = "synthetic" if r["synthetic"] else "recorded"
    lines = [
        f"trace            {r['trace']}",
        f"model            {r['model']} (L={r['L']}), heads {r['heads']}, {kind}, {r['dataset']}",
        f"tokens           {r['n_tokens']} in {r['n_seqs']} sequences",
        f"mean EAD         {r['mean_ead']:.2f}  ceiling L/EAD {r['ceiling_ead']:.3f}x",
        f"mean stable EAD  {r['mean_stable_ead']:.2f}  ceiling L/stable {r['ceiling_stable_ead']:.3f}x",
        f"wrong-token change rate {r['wrong_change_rate']:.3f} per layer",
        "",
        "depth  match    EAD  stable",
    ]
    for d, m, e, s in zip(r["depths"], r["match_rate"], r["ead_hist"], r["stable_ead_hist"]):
        lines.append(f"{d:5d}  {m:5.3f}  {e:5d}  {s:6d}")
    return "\n".join(lines)


def compare(a: Trace, b: Trace) -> dict:
    """Two traces of the same generations (say lens and trained exit heads on the same prompts), side
    by side at the depths both recorded: an EAD depends on the exit set, so only a common one compares.
    `same_final` says whether the committed tokens agree, as they must when only the heads differ."""
    if a.L != b.L:
        raise UserError(f"--vs {b.path}: L = {b.L}, but {a.path} has L = {a.L}")
    common = np.intersect1d(a.depths, b.depths)
    same = (a.n_tokens == b.n_tokens and np.array_equal(a.seq_offsets, b.seq_offsets)
            and bool((a.final == b.final).all()))
    return {"depths": common.tolist(), "same_final": same,
            "a": analyze(at_depths(a, common)), "b": analyze(at_depths(b, common))}


def format_compare(r: dict) -> str:
    a, b = r["a"], r["b"]
    lines = [f"A  {a['trace']}: heads {a['heads']}, {a['n_tokens']} tokens",
             f"B  {b['trace']}: heads {b['heads']}, {b['n_tokens']} tokens",
             f"same final tokens: {'yes' if r['same_final'] else 'NO'}; compared at the {len(r['depths'])} "
             f"depths both recorded", "",
             f"{'':18}{'A':>9}{'B':>9}"]
    for key, label in (("mean_ead", "mean EAD"), ("ceiling_ead", "L / mean EAD"),
                       ("mean_stable_ead", "mean stable EAD"), ("ceiling_stable_ead", "L / stable EAD")):
        lines.append(f"{label:<18}{a[key]:9.3f}{b[key]:9.3f}")
    lines += ["", "depth  match A  match B"]
    for d, ma, mb in zip(r["depths"], a["match_rate"], b["match_rate"]):
        lines.append(f"{d:5d}  {ma:7.3f}  {mb:7.3f}")
    return "\n".join(lines)
