"""Real per-token depth traces (DESIGN.md section 5) recorded on the engine.

Recording is a policy like any other on the one core: `dex` with the exit set = the recorded depths,
one explorer and no branch buffer, i.e. AR decoding that reads the exit head at every recorded depth
of the anchor. Each committed anchor's exit tokens and confidences become one trace row. By default
in batch-invariant mode, so the recorded states are bitwise AR's, whatever else runs alongside.
"""
from __future__ import annotations

import numpy as np

from dexsim.core.policies import DEX
from dexsim.traces.format import Trace, make_meta, save_trace

from . import __version__
from .engine import Sampling, generate


def record_policy(L: int, depths) -> DEX:
    return DEX(L, np.asarray(depths), explorers=1, buffer=0)


def batches(lengths: list[int], batch: int, per_position: int, budget: int) -> list[slice]:
    """Consecutive groups of at most `batch` sequences whose KV cache (sequences x the longest context
    length x bytes per position) stays within `budget` bytes; a sequence that alone exceeds it gets a
    group of its own. (ShareGPT holds prompts of 6k tokens among ones of 60: a fixed batch size either
    crawls or runs out of memory.)"""
    out, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        grown = max(longest, n)
        if i > start and (i - start == batch or (i - start + 1) * grown * per_position > budget):
            out.append(slice(start, i))
            start, grown = i, n
        longest = grown
    if lengths:
        out.append(slice(start, len(lengths)))
    return out


def record(model, prompts: list[list[int]], *, max_new_tokens: int, depths, eos: int | None,
           sampling: Sampling = Sampling(), batch_invariant: bool = True, batch: int = 8, progress=None,
           heads=None, cache_budget: int = 2 << 30):
    """Decode every prompt, up to `batch` sequences at a time and within `cache_budget` bytes of
    committed KV cache (`batches`); returns the trace arrays (no meta). `heads`: trained exit heads
    (`exits.Adapters`) or None for the logit lens."""
    a = model.args
    L = a.n_layer
    per_position = 2 * L * a.n_kv_head * a.head_dim * model.tok_embeddings.weight.element_size()  # K and V
    depths = np.asarray(depths, np.int64)
    finals, toks, confs, lengths = [], [], [], []
    for part in batches([len(p) + max_new_tokens for p in prompts], batch, per_position, cache_budget):
        chunk = prompts[part]
        run = generate(model, chunk, record_policy(L, depths), max_new_tokens, sampling=sampling, eos=eos,
                       batch_invariant=batch_invariant, record_depths=depths, heads=heads)
        for s, out in enumerate(run.outputs):
            t, c = run.executor.recorded(s)
            assert t.shape == (len(out), len(depths)) and (t[:, -1] == out).all()
            finals.append(np.asarray(out))
            toks.append(t)
            confs.append(c)
            lengths.append(len(out))
        del run  # its cache goes before the next batch allocates one
        if progress:
            progress(len(chunk))
    return dict(
        depths=depths.astype(np.int16),
        final=np.concatenate(finals).astype(np.int32),
        exit_tokens=np.concatenate(toks).astype(np.int32),
        exit_conf=np.concatenate(confs).astype(np.float16),
        seq_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        prompt_len=np.array([len(p) for p in prompts], np.int32),
    )


def arch_of(model, architecture: str | None = None) -> dict:
    """meta.arch of a model outside the catalog: what dexsim prices it from (`spec_from_arch`)."""
    a = model.args
    arch = dict(layers=a.n_layer, hidden=a.dim, intermediate=a.intermediate, heads=a.n_head,
                kv_heads=a.n_kv_head, head_dim=a.head_dim, vocab=a.vocab,
                params=sum(p.numel() for p in model.parameters()), tied_embeddings=a.tied,
                dtype=str(model.dtype).removeprefix("torch."), bytes_per_weight=model.dtype.itemsize)
    if architecture:
        arch["architecture"] = architecture
    return arch


def save(arrays: dict, path: str, *, catalog_name: str, dataset: str, template: str, sampling: Sampling,
         params: dict, arch: dict | None = None, model_name: str | None = None, heads: str = "lens") -> Trace:
    """Write the trace with complete meta. `arch` and `model_name` override the catalog's (for models
    outside the catalog); `heads` is "lens" or "trained:<manifest name>"."""
    meta = make_meta(catalog_name, heads=heads, dataset=dataset, template=template, sampling=sampling.meta(),
                     synthetic=False, recorder={"tool": "dexref", "version": __version__, "params": params})
    if arch is not None:
        meta["arch"] = arch
    if model_name is not None:
        meta["model"] = model_name
    trace = Trace(**arrays, meta=meta)
    save_trace(trace, path)
    trace.path = path
    return trace
