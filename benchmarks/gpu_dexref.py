"""The one prepared GPU run of dexref (issue 15): a random-weight catalog shape (default llama2-7b) in
bfloat16 on one device, everything timed in the same process.

1. `static`: engine AR tokens/s against a static-cache decoder of the same shape and weights (gpt-fast
   style: one token a step over a preallocated KV cache, masks as tensors), `torch.compile`d (on CUDA
   with mode="reduce-overhead", i.e. CUDA graphs), the goal being engine AR within 10% of it; engine
   AR is timed both as is and with its layer calls as CUDA graphs (`graphs=True`, dexref/graphs.py).
   Also where the engine's time goes: inside the executor hooks (layers, heads, syncs) vs the core's
   own per-round bookkeeping (wall minus hooks), per round.
2. `policies`: DEX / LayerSkip / adaptive wall-clock against AR on a synthetic trace's decisions: the
   model computes every layer and exit head the policy asks for (real work on the device), but each
   exit's token and confidence come from the trace (`TraceDriven`), so the policies decide as they
   would on a model with that depth profile, and every run must commit the trace's tokens.
3. `divergence`: the bf16 divergence of every policy from the engine's AR, per mode, with the logit
   margin at each divergence (benchmarks/dexref_divergence.py), on SmolLM2-135M if it is in the
   dexref cache ($DEXREF_CACHE, default ~/.cache/dexref) with its prompt sets; otherwise the section
   says why it was skipped. The GPU machine has no network: copy ~/.cache/dexref/smollm2-135m and
   ~/.cache/dexref/data there first (540 MB + the prompt sets; too large for the 64 MiB carry), and
   set DEXREF_CACHE to the copy.

    python benchmarks/gpu_dexref.py [--shape llama2-7b] [--device cuda] [--dtype bfloat16] [--new 64] \
        [--prompt-len 128] [--seqs 2] [--no-compile] [--graphs] [--divergence-model smollm2-135m] [--out F.json]
    python benchmarks/gpu_dexref.py --shape tiny --device cpu --new 8 --no-compile   # the CPU check (tests)

Prints one JSON object (also to --out) and a table. Never a figure that was not measured in this run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dexref.checkpoint import random_args, random_model  # noqa: E402
from dexref.engine import TorchExecutor, generate  # noqa: E402
from dexref.load import resolve_device, resolve_dtype  # noqa: E402
from dexref.model import ModelArgs, attend, attn_scale, embed, finish, head, prefill, qkv, window  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402

TINY = ModelArgs(n_layer=4, dim=64, n_head=4, n_kv_head=2, head_dim=16, intermediate=128, vocab=256, tied=False,
                 max_len=1024)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- the static-cache decoder

class StaticDecoder(torch.nn.Module):
    """Greedy decoding of one sequence over a preallocated KV cache [L, Hkv, T, hd]: every step has the
    same shapes (the position and the visibility mask are tensors), so it compiles to one graph. The
    cache is a module buffer, as in gpt-fast, so a compiled step may update it in place."""

    def __init__(self, model, T: int, compile_mode: str | None):
        super().__init__()
        a, dev = model.args, model.device
        self.model, self.T = model, T
        self.register_buffer("K", torch.zeros(a.n_layer, a.n_kv_head, T, a.head_dim, dtype=model.dtype, device=dev))
        self.register_buffer("V", torch.zeros_like(self.K))
        self.register_buffer("at", torch.arange(T, device=dev))
        self.step = self._step if compile_mode is None else torch.compile(self._step, mode=compile_mode, fullgraph=True)

    def _step(self, tok, pos):  # tok [1], pos [1] -> next token [1]
        m, a = self.model, self.model.args
        x = embed(m, tok)
        for layer in range(a.n_layer):
            q, k, v = qkv(m, layer, x, pos)
            self.K[layer].index_copy_(1, pos, k.transpose(0, 1))
            self.V[layer].index_copy_(1, pos, v.transpose(0, 1))
            w = window(a, layer)
            vis = (self.at <= pos) if not w else (self.at <= pos) & (self.at > pos - w)
            x = finish(m, layer, x, attend(q, [(self.K[layer], self.V[layer], vis[None])], attn_scale(a)))
        return head(m, x).argmax(-1)

    @torch.inference_mode()
    def generate(self, prompt: list[int], new: int) -> list[int]:
        dev, P = self.model.device, len(prompt)
        K, V = prefill(self.model, torch.tensor(prompt[:-1], device=dev))
        self.K[:, :, : P - 1], self.V[:, :, : P - 1] = K, V
        tok = torch.tensor(prompt[-1:], device=dev)
        out = []
        for i in range(new):
            tok = self.step(tok, torch.tensor([P - 1 + i], device=dev)).clone()
            out.append(tok)
        return torch.cat(out).tolist()


# ---------------------------------------------------------------------------- executors

def _timed(name: str):
    hook = getattr(TorchExecutor, name)

    def wrap(self, *args):
        t = time.perf_counter()
        r = hook(self, *args)
        Timed.hooks_s += time.perf_counter() - t
        return r
    return wrap


class Timed(TorchExecutor):
    """Seconds spent inside the executor's hooks (layers, heads, sampling and the host-device syncs it
    implies); the rest of the wall time is the core's own bookkeeping."""
    hooks_s = 0.0
    compute, read_exits, spawned, committed, discarded = map(
        _timed, ("compute", "read_exits", "spawned", "committed", "discarded"))


def trace_driven(trace, seq: int, vocab: int):
    """A TorchExecutor class for trace sequence `seq`: every layer and head is computed as asked, then
    each exit's token and confidence are replaced by the trace's (on the true path: the recorded exit
    token at that depth; off it: a token that is not the true one), ids taken modulo `vocab`."""
    off, P = int(trace.seq_offsets[seq]), int(trace.prompt_len[seq])
    n = int(trace.seq_offsets[seq + 1]) - off
    col = np.full(trace.L + 1, -1, np.int64)
    col[trace.depths] = np.arange(len(trace.depths))
    final = trace.final[off: off + n].astype(np.int64) % vocab
    et = trace.exit_tokens[off: off + n].astype(np.int64) % vocab
    ec = trace.exit_conf[off: off + n].astype(np.float32)

    class TraceDriven(Timed):
        def read_exits(self, lat, s, j):
            tok, conf = super().read_exits(lat, s, j)  # the real head and its sync
            for r, (si, ji) in enumerate(zip(s.tolist(), j.tolist())):
                row = min(int(lat.pos[si, ji]) + 1 - P, n - 1)  # the token this exit predicts
                c = col[lat.depth[si, ji]]
                on = self._on_path(lat, si, ji)
                tok[r] = et[row, c] if on else (final[row] + 1 + ji) % vocab
                conf[r] = ec[row, c]
            return tok, conf

        @staticmethod
        def _on_path(lat, si, ji) -> bool:
            while lat.parent[si, ji] >= 0:
                i = int(lat.pos[si, ji]) - P  # the generated token this node stands for
                if i >= n or lat.token[si, ji] != final[i]:
                    return False
                ji = int(lat.parent[si, ji])
            return True

    return TraceDriven, final.tolist()


# ---------------------------------------------------------------------------- sections

def timed_ar(model, prompt, new, repeats, graphs: bool) -> tuple[list, list, int, list]:
    """(walls, hook seconds, rounds, tokens) of engine AR runs (the first one untimed: warm-up, and on a
    GPU with graphs the captures)."""
    dev, ar = model.device, make_policy("ar", model.args.n_layer)
    generate(model, [prompt], ar, new, graphs=graphs)
    walls, hooks, rounds, outs = [], [], 0, None
    for _ in range(repeats):
        Timed.hooks_s = 0.0
        sync(dev)
        t = time.perf_counter()
        run = generate(model, [prompt], ar, new, executor=Timed, graphs=graphs)
        sync(dev)
        walls.append(time.perf_counter() - t)
        hooks.append(Timed.hooks_s)
        rounds, outs = int(run.counters()["rounds"]), run.outputs[0]
    return walls, hooks, rounds, outs


def section_static(model, prompt, new, compile_mode, repeats) -> dict:
    dev = model.device
    walls, hooks, rounds, outs = timed_ar(model, prompt, new, repeats, graphs=False)
    gwalls, ghooks, _, gouts = timed_ar(model, prompt, new, repeats, graphs=True)
    dec = StaticDecoder(model, len(prompt) + new + 1, compile_mode)
    t = time.perf_counter()
    compile_error = None
    try:
        dec.generate(prompt, 4)  # compiles (and captures the CUDA graph) on the first calls
    except Exception as e:  # a compiler failure must not cost the rest of the run: time it eager
        compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        dec = StaticDecoder(model, len(prompt) + new + 1, None)
        compile_mode = None
    compile_s = time.perf_counter() - t
    swalls, souts = [], None
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        souts = dec.generate(prompt, new)
        sync(dev)
        swalls.append(time.perf_counter() - t)
    w, sw, h = min(walls), min(swalls), hooks[int(np.argmin(walls))]
    gw, gh = min(gwalls), ghooks[int(np.argmin(gwalls))]
    return {"new_tokens": new, "prompt_tokens": len(prompt), "repeats": repeats,
            "engine_ar_tokens_per_s": round(new / w, 2), "static_tokens_per_s": round(new / sw, 2),
            "engine_vs_static": round(sw / w, 4), "static_compile_error": compile_error,
            "engine_ar_graphs_tokens_per_s": round(new / gw, 2), "engine_graphs_vs_static": round(sw / gw, 4),
            "graphs": "cuda graphs" if dev.type == "cuda" else "static steps, eager",
            "engine_graphs_hooks_s": round(gh, 4), "engine_graphs_core_s": round(gw - gh, 4),
            "graphs_tokens_equal_engine_ar": gouts == outs, "static_compile": compile_mode or "eager",
            "static_compile_s": round(compile_s, 2),
            "engine_wall_s": round(w, 4), "engine_hooks_s": round(h, 4), "engine_core_s": round(w - h, 4),
            "rounds": rounds, "core_us_per_round": round((w - h) / max(rounds, 1) * 1e6, 1),
            "hooks_us_per_round": round(h / max(rounds, 1) * 1e6, 1),
            "static_tokens_equal_engine_ar": souts == outs,
            "first_token_differs_at": next((i for i, (x, y) in enumerate(zip(souts, outs)) if x != y), None)}


def trace_for(model, args):
    """A synthetic trace of the shape's catalog model (every depth recorded), mapped to the model's
    depth when the shape is not a catalog one."""
    from dexsim.specs.catalog import spec_from_arch
    from dexsim.traces.synth import synth_trace
    from dexsim.traces.transforms import rescale_depths

    catalog = args.shape if args.shape != "tiny" else "smollm2-135m"
    tr = synth_trace(catalog, args.seqs, args.new, prompt_len=args.prompt_len, seed=args.seed)
    if tr.L != model.args.n_layer:
        a = model.args
        spec = spec_from_arch("tiny", dict(layers=a.n_layer, hidden=a.dim, intermediate=a.intermediate,
                                           heads=a.n_head, kv_heads=a.n_kv_head, vocab=a.vocab, params=1,
                                           dtype="bfloat16"))
        tr = rescale_depths(tr, spec)
    return tr


def trace_policies(L: int) -> dict:
    half, every4 = L // 2, np.r_[np.arange(4, L, 4), L]
    late = np.r_[np.unique(np.round(L * np.array([0.5, 0.67, 0.8, 0.9])).astype(int)), L]
    return {"ar": make_policy("ar", L),
            "layerskip e=L/2 g=4": make_policy("layerskip", L, exit=half, draft=4),
            "adaptive tau=0.8 E=every4": make_policy("adaptive", L, exits=every4, threshold=0.8, buffer=4),
            "dex k=2 B=4 E=late": make_policy("dex", L, exits=late, explorers=2, buffer=4),
            "dex k=4 B=8 E=every4": make_policy("dex", L, exits=every4, explorers=4, buffer=8)}


def section_policies(model, args) -> dict:
    dev, vocab = model.device, model.args.vocab
    trace = trace_for(model, args)
    g = torch.Generator().manual_seed(args.seed)
    rows = {}
    for name, policy in trace_policies(model.args.n_layer).items():
        wall = hooks = 0.0
        counters = {}
        for s in range(trace.n_seqs):  # one sequence at a time (batch 1, as served)
            ex, want = trace_driven(trace, s, vocab)
            prompt = torch.randint(0, vocab, (int(trace.prompt_len[s]),), generator=g).tolist()
            Timed.hooks_s = 0.0
            sync(dev)
            t = time.perf_counter()
            run = generate(model, [prompt], policy, len(want), executor=ex, graphs=args.graphs)
            sync(dev)
            wall += time.perf_counter() - t
            hooks += Timed.hooks_s
            assert run.outputs[0] == want, f"{name}: the trace-driven run did not commit the trace's tokens"
            for k, v in run.counters().items():
                counters[k] = counters.get(k, 0) + int(v)
        rows[name] = {"wall_s": round(wall, 4), "hooks_s": round(hooks, 4), "core_s": round(wall - hooks, 4),
                      "tokens_per_s": round(counters["tokens"] / wall, 2), **counters}
    ar = rows["ar"]["wall_s"]
    for r in rows.values():
        r["speedup_vs_ar"] = round(ar / r["wall_s"], 4)
    return {"trace": {"model": trace.meta["model"], "seqs": trace.n_seqs, "tokens": trace.n_tokens,
                      "L": trace.L, "synthetic": True}, "graphs": args.graphs, "policies": rows}


def section_divergence(args, device) -> dict:
    from dexref_divergence import divergence, load_prompt_sets, policies

    from dexref.assets.sources import is_cached
    from dexref.load import ModelConfig, load_model

    name = args.divergence_model
    if name in ("", "none"):
        return {"skipped": "--divergence-model none"}
    if "/" not in name and not is_cached(name):
        return {"skipped": f"{name} is not in the dexref cache here (copy ~/.cache/dexref/{name} and set DEXREF_CACHE)"}
    out = {"model": name, "dtype": args.dtype, "rows": []}
    model, tok, _ = load_model(ModelConfig(model=name, dtype=args.dtype, device=str(device)))
    sets, missing = load_prompt_sets(tok, args.datasets.split(","), args.divergence_prompts, 256)
    out["datasets_missing"] = missing
    if not sets:
        out["skipped"] = "no prompt set in the cache"
        return out
    out["prompts"] = [f"{s['dataset']}:{s['id']}" for s in sets]
    eos = model.args.eos if model.args.eos >= 0 else None
    for mode in ("fast", "bi"):
        for row in divergence(model, [s["ids"] for s in sets], policies(model.args.n_layer), args.divergence_new,
                              eos, mode == "bi"):
            out["rows"].append({"mode": mode, **row})
    return out


def guarded(section, *args) -> dict:
    """A section's result, or {"error": ...} with its traceback on stderr: one failing section (a
    compiler or driver problem on the GPU machine) must not cost the others, there is one run."""
    try:
        return section(*args)
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"}


def table(res: dict) -> str:
    lines = [f"shape {res['shape']} {res['dtype']} on {res['device']} ({res['device_name']})"]
    st, pol, dv = res["static"], res["policies"], res["divergence"]
    for name, sec in (("static", st), ("policies", pol), ("divergence", dv)):
        if "error" in sec:
            lines.append(f"  {name}: FAILED {sec['error']}")
    if "error" not in st:
        lines.append(f"  engine AR {st['engine_ar_tokens_per_s']:.1f} tok/s, with {st['graphs']} "
                     f"{st['engine_ar_graphs_tokens_per_s']:.1f} tok/s, vs static ({st['static_compile']}) "
                     f"{st['static_tokens_per_s']:.1f} tok/s -> engine/static {st['engine_vs_static']:.3f} "
                     f"(graphs {st['engine_graphs_vs_static']:.3f}); "
                     f"core {st['core_us_per_round']:.0f} us/round, hooks {st['hooks_us_per_round']:.0f} us/round")
    if "error" not in pol:
        lines.append(f"  {'policy':<26}{'wall s':>9}{'core s':>9}{'x AR':>8}{'rounds':>8}{'node-layers':>12}")
        for name, r in pol["policies"].items():
            lines.append(f"  {name:<26}{r['wall_s']:9.3f}{r['core_s']:9.3f}{r['speedup_vs_ar']:8.3f}"
                         f"{r['rounds']:8d}{r['node_layers']:12d}")
    if "skipped" in dv:
        lines.append(f"  divergence: skipped ({dv['skipped']})")
    for r in dv.get("rows", []):
        lines.append(f"  divergence {r['mode']:<4} {r['policy']:<28} {r['seqs_differ_from_ar']}/{r['sequences']} "
                     f"margins {[f['margin'] for f in r['flips']]}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama2-7b", help="a dexsim catalog model, or tiny")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--seqs", type=int, default=2, help="trace sequences per policy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true", help="the static decoder eager (CPU checks)")
    ap.add_argument("--graphs", action="store_true", help="the policies section with the engine's static steps "
                                                          "(CUDA graphs on a GPU); AR is timed both ways regardless")
    ap.add_argument("--divergence-model", default="smollm2-135m", help="cached model, checkpoint folder, or none")
    ap.add_argument("--datasets", default="humaneval,mtbench,sharegpt")
    ap.add_argument("--divergence-prompts", type=int, default=2, help="per prompt set")
    ap.add_argument("--divergence-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    a = TINY if args.shape == "tiny" else random_args(args.shape)
    a.max_len = max(a.max_len, args.prompt_len + args.new + 64)
    t = time.perf_counter()
    model = random_model(a, dtype, device, seed=args.seed)
    sync(device)
    res = {"shape": args.shape, "dtype": args.dtype, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "params": sum(p.numel() for p in model.parameters()), "build_s": round(time.perf_counter() - t, 2)}
    prompt = torch.randint(0, a.vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    mode = None if args.no_compile else ("reduce-overhead" if device.type == "cuda" else "default")
    res["static"] = guarded(section_static, model, prompt, args.new, mode, args.repeats)
    res["policies"] = guarded(section_policies, model, args)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    res["divergence"] = guarded(section_divergence, args, device)
    print(json.dumps(res))
    print(table(res))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
