"""Hypothesis strategies shared by the suites: tiny random traces and policies on them.

Vocabularies are tiny so guesses collide with the final token, and with each other, often."""
from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from dexsim.core import registry
from dexsim.core.params import PARAMS
from dexsim.core.registry import make_policy
from dexsim.traces.format import Trace


def tiny_trace(final, exit_tokens, depths, seq_lengths, prompt_len, conf=None, vocab=None) -> Trace:
    """A Trace built in memory (no file, no checksum): what the replay reads."""
    final = np.asarray(final, np.int32)
    exit_tokens = np.asarray(exit_tokens, np.int32).reshape(len(final), len(depths))
    conf = np.full(exit_tokens.shape, 0.5, np.float16) if conf is None else np.asarray(conf, np.float16)
    vocab = int(max(final.max(initial=0), exit_tokens.max(initial=0)) + 1) if vocab is None else vocab
    return Trace(depths=np.asarray(depths, np.int16), final=final, exit_tokens=exit_tokens, exit_conf=conf,
                 seq_offsets=np.concatenate([[0], np.cumsum(seq_lengths)]).astype(np.int64),
                 prompt_len=np.asarray(prompt_len, np.int32),
                 meta={"arch": {"layers": int(depths[-1]), "vocab": vocab}})


@st.composite
def traces(draw, max_layers=8, max_seqs=3, max_tokens=12):
    L = draw(st.integers(1, max_layers))
    inner = draw(st.lists(st.integers(1, L - 1), unique=True, max_size=L - 1)) if L > 1 else []
    depths = sorted(inner) + [L]
    lengths = draw(st.lists(st.integers(1, max_tokens), min_size=1, max_size=max_seqs))
    vocab = draw(st.integers(2, 5))
    n, D = sum(lengths), len(depths)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    exit_tokens = rng.integers(0, vocab, (n, D))
    final = exit_tokens[:, -1]
    conf = rng.random((n, D))
    prompt_len = draw(st.lists(st.integers(1, 4), min_size=len(lengths), max_size=len(lengths)))
    return tiny_trace(final, exit_tokens, depths, lengths, prompt_len, conf, vocab)


def param_values(name: str, depths: list[int]):
    """Values of a policy parameter worth drawing on a tiny trace (small counts make buffers fill and
    explorers run short)."""
    p = PARAMS[name]
    L = depths[-1]
    if name == "exits":
        return st.lists(st.sampled_from(depths), max_size=len(depths)).map(lambda e: sorted(set(e) | {L}))
    if p.on_model is not None:  # a depth
        return st.sampled_from(depths)
    if p.choices:
        return st.sampled_from(p.choices)
    if p.kind is float:
        return st.floats(p.low, p.high)
    return st.integers(int(p.low), int(p.low) + 5)


@st.composite
def policies(draw, trace: Trace):
    """Any policy of the registry that has a policy object, with parameters drawn for this trace."""
    depths = [int(d) for d in trace.depths]
    name = draw(st.sampled_from(registry.names(hindsight=False)))
    params = {p: draw(param_values(p, depths)) for p in registry.get(name).params}
    return make_policy(name, trace.L, exits=params.pop("exits", None), depths=trace.depths, **params)


def examples(n_ci: int) -> int:
    """`n_ci` examples under the `ci` profile (150 by default), scaled for the others
    (dev 60 -> 40%, thorough 2000 -> 13x, mutation 12 -> 8%)."""
    return max(2, round(n_ci * settings.default.max_examples / 150))
