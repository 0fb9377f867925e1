"""Hypothesis strategies shared by the suites: tiny random traces and policies on them.

Vocabularies are tiny so guesses collide with the final token, and with each other, often."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from dexsim.policies import PRIORITIES
from dexsim.replay import make_policy
from dexsim.trace import Trace


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


@st.composite
def policies(draw, trace: Trace):
    L, depths = trace.L, [int(d) for d in trace.depths]
    name = draw(st.sampled_from(["ar", "layerskip", "adaptive", "dex"]))
    exits = sorted(set(draw(st.lists(st.sampled_from(depths), max_size=len(depths)))) | {L})
    return make_policy(name, L, exits=exits, explorers=draw(st.integers(1, 6)), buffer=draw(st.integers(0, 5)),
                       priority=draw(st.sampled_from(PRIORITIES)), exit=draw(st.sampled_from(depths)),
                       draft=draw(st.integers(0, 4)), threshold=draw(st.floats(0, 1)))
