"""Synthetic traces from a parametric EAD distribution, and the `synth` subcommand.

Per token, independently: the final token is uniform over the vocabulary; the EAD (earliest recorded
depth whose exit token is the final one) is drawn from an `--ead` distribution. From the EAD up, the
exit token is the final one, except that with probability `flicker` it reverts to a wrong token over
one run of depths between the EAD and L-1 (so the stable EAD lies above the EAD). Wrong tokens never
equal the final one and change between consecutive depths at `change_rate` per layer, as a real
model's intermediate guesses do (DESIGN.md section 5). Confidences rise with depth and are higher on
correct exits, so confidence-ranked policies get a signal that is informative but not a tell.
"""
from __future__ import annotations

from importlib.metadata import version

import numpy as np

from dexsim.config import check_fits
from dexsim.depths import check_depths, parse_depths
from dexsim.errors import UserError
from dexsim.specs.catalog import get_model
from dexsim.traces.analyze import ead_indices
from dexsim.traces.format import ARRAYS, Trace, heads_ok, load_trace, make_meta, trace_checksum

# Bytes per (token, depth) cell of the [N, D] arrays alive at once while drawing: the correct mask (bool),
# the wrong tokens and the exit tokens (int64), the exit tokens as stored (int32), the confidence
# logits (float64) and the confidences as stored (float16).
CELL_BYTES = 1 + 8 + 8 + 4 + 8 + 2
EAD_FORMS = "fixed:D, uniform:LO,HI, beta:A,B[,LATE], two-point:E,ALPHA, points:D1=P1,D2=P2,... or empirical:TRACE.npz"


def _numbers(spec: str, arg: str, count: int, expected: str) -> list[float]:
    try:
        nums = [float(x) for x in arg.split(",")]
    except ValueError:
        nums = []
    if len(nums) != count:
        raise UserError(f"--ead {spec!r}: expected {expected}")
    return nums


def _layer(spec: str, x: float, L: int) -> int:
    if not (x.is_integer() and 1 <= x <= L):
        raise UserError(f"--ead {spec!r}: depth {x:g} is not an integer in [1, {L}]")
    return int(x)


def sample_ead(spec: str, rng: np.random.Generator, n: int, L: int) -> np.ndarray:
    """n EADs in layers 1..L drawn from an `--ead` spec (before snapping up to a recorded depth)."""
    kind, _, arg = spec.partition(":")
    if kind == "fixed":
        (d,) = _numbers(spec, arg, 1, "fixed:D")
        return np.full(n, _layer(spec, d, L))
    if kind == "uniform":
        lo, hi = (_layer(spec, x, L) for x in _numbers(spec, arg, 2, "uniform:LO,HI"))
        if lo > hi:
            raise UserError(f"--ead {spec!r}: LO > HI")
        return rng.integers(lo, hi + 1, n)
    if kind == "beta":
        nums = _numbers(spec, arg, 3 if arg.count(",") == 2 else 2, "beta:A,B or beta:A,B,LATE with A, B > 0")
        a, b, late = (*nums, 0.0)[:3]
        if not (a > 0 and b > 0 and 0 <= late <= 1):
            raise UserError(f"--ead {spec!r}: expected beta:A,B[,LATE] with A, B > 0 and LATE in [0, 1]")
        ead = np.clip(np.ceil(rng.beta(a, b, n) * L), 1, L).astype(np.int64)
        # LATE: the share of tokens only the full model gets right (43% on SmolLM2's logit lens)
        return np.where(rng.random(n) < late, L, ead)
    if kind == "two-point":
        e, alpha = _numbers(spec, arg, 2, "two-point:E,ALPHA")
        if not 0 <= alpha <= 1:
            raise UserError(f"--ead {spec!r}: ALPHA must be in [0, 1]")
        return np.where(rng.random(n) < alpha, _layer(spec, e, L), L)
    if kind == "points":  # EAD at D_i with probability P_i, at L otherwise: a profile known by construction
        try:
            pairs = [(float(d), float(q)) for d, q in (x.split("=") for x in arg.split(","))]
        except ValueError:
            raise UserError(f"--ead {spec!r}: expected points:D1=P1,D2=P2,...") from None
        depths = [_layer(spec, d, L) for d, _ in pairs]
        probs = np.array([q for _, q in pairs])
        if (probs < 0).any() or probs.sum() > 1 + 1e-9:
            raise UserError(f"--ead {spec!r}: probabilities must be >= 0 and sum to at most 1")
        return np.array([*depths, L])[rng.choice(len(depths) + 1, n, p=np.append(probs, max(0.0, 1 - probs.sum())))]
    if kind == "empirical":
        try:
            source = load_trace(arg)
        except UserError as e:
            raise UserError(f"--ead {spec!r}: {e}") from None
        ead = source.depths[ead_indices(source.exit_tokens, source.final)].astype(np.int64)
        # rescale to this model's depth in integers, rounding up, so equal L reproduces the EADs exactly
        return -(-rng.choice(ead, n) * L // source.L)
    raise UserError(f"--ead {spec!r}: expected {EAD_FORMS}")


def _draw_other(rng: np.random.Generator, vocab: int, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Uniform tokens avoiding a (and b, which must differ from a): draw from fewer ids, then skip the holes."""
    if b is None:
        u = rng.integers(0, vocab - 1, len(a))
        return u + (u >= a)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    u = rng.integers(0, vocab - 2, len(a))
    u = u + (u >= lo)
    return u + (u >= hi)


def _wrong_tokens(rng, final, depths, vocab, change_rate) -> np.ndarray:
    """[N, D] tokens that never equal `final`, changing between consecutive depths at change_rate per layer."""
    n, D = len(final), len(depths)
    out = np.empty((n, D), np.int64)
    out[:, 0] = _draw_other(rng, vocab, final)
    # a gap of several layers between recorded depths gives several chances to change
    p_change = 1 - (1 - change_rate) ** np.diff(depths.astype(np.int64))
    for j in range(1, D):
        change = rng.random(n) < p_change[j - 1]
        out[:, j] = np.where(change, _draw_other(rng, vocab, final, out[:, j - 1]), out[:, j - 1])
    return out


def _flicker_runs(rng, ead_idx, D, flicker) -> tuple[np.ndarray, np.ndarray]:
    """Per token, one run [start, end] of depth indices strictly between the EAD and L that goes wrong."""
    n = len(ead_idx)
    room = D - 2 - ead_idx  # indices ead+1 .. D-2 may flicker; the last depth is the final token by definition
    on = (rng.random(n) < flicker) & (room >= 1)
    start = ead_idx + 1 + np.floor(rng.random(n) * room).astype(np.int64)
    end = start + np.floor(rng.random(n) * (D - 1 - start)).astype(np.int64)
    return np.where(on, start, D), np.where(on, end, -1)


def _confidences(rng, correct, depths, L) -> np.ndarray:
    # logistic in depth with a bonus for being right and enough noise that the classes overlap
    logit = -3.0 + 4.0 * depths / L + 2.5 * correct + 0.8 * rng.standard_normal(correct.shape, dtype=np.float32)
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float16)


def synth_trace(model: str, n_seqs: int, tokens_per_seq: int, *, depths=None, ead: str = "beta:2,1.2",
                flicker: float = 0.1, change_rate: float = 0.3, prompt_len: int = 64, seed: int = 0,
                heads: str = "lens") -> Trace:
    """A synthetic trace; `depths` is None (every layer), a spec for `parse_depths`, or a list of depths."""
    try:
        spec = get_model(model)
    except UserError as e:
        raise UserError(f"--model: {e}") from None
    if not heads_ok(heads):
        raise UserError(f"--heads {heads!r}: expected lens or trained:NAME")
    L, vocab = spec.layers, spec.vocab
    if isinstance(depths, str):
        depths = parse_depths(depths, L)
    else:
        depths = check_depths(np.arange(1, L + 1) if depths is None else depths, L)
    for flag, value, ok in [("--seqs", n_seqs, n_seqs >= 1), ("--tokens", tokens_per_seq, tokens_per_seq >= 1),
                            ("--prompt-len", prompt_len, prompt_len >= 1),
                            ("--flicker", flicker, 0 <= flicker <= 1),
                            ("--change-rate", change_rate, 0 <= change_rate <= 1)]:
        if not ok:
            raise UserError(f"{flag}: {value} out of range")
    if prompt_len > np.iinfo(ARRAYS["prompt_len"]).max:
        raise UserError(f"--prompt-len: {prompt_len} out of range (at most {np.iinfo(ARRAYS['prompt_len']).max})")
    check_fits(f"--seqs {n_seqs} --tokens {tokens_per_seq}", n_seqs * tokens_per_seq * len(depths) * CELL_BYTES,
               f"a trace of {n_seqs * tokens_per_seq:,} tokens at {len(depths)} depths")
    rng = np.random.default_rng(seed)
    n, D = n_seqs * tokens_per_seq, len(depths)
    final = rng.integers(0, vocab, n)
    ead_idx = np.searchsorted(depths, sample_ead(ead, rng, n, L))  # snap up: first recorded depth >= EAD
    start, end = _flicker_runs(rng, ead_idx, D, flicker)
    col = np.arange(D)[None, :]
    correct = (col >= ead_idx[:, None]) & ~((col >= start[:, None]) & (col <= end[:, None]))
    exit_tokens = np.where(correct, final[:, None], _wrong_tokens(rng, final, depths, vocab, change_rate))
    params = dict(n_seqs=n_seqs, tokens_per_seq=tokens_per_seq, depths=depths.tolist(), ead=ead,
                  flicker=flicker, change_rate=change_rate, prompt_len=prompt_len, seed=seed)
    meta = make_meta(model, heads=heads, dataset=f"synthetic:{ead}", template="none",
                     sampling={"rule": "greedy", "seed": 0, "temperature": 0.0}, synthetic=True,
                     recorder={"tool": "dexsim synth", "version": version("dex-sandbox"), "params": params})
    trace = Trace(
        depths=depths,
        final=final.astype(np.int32),
        exit_tokens=exit_tokens.astype(np.int32),
        exit_conf=_confidences(rng, correct, depths[None, :], L),
        seq_offsets=np.arange(n_seqs + 1, dtype=np.int64) * tokens_per_seq,
        prompt_len=np.full(n_seqs, prompt_len, np.int32),
        meta=meta,
    )
    trace.meta["sha256"] = trace_checksum(trace)
    return trace
