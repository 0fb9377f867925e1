"""CLI for the cost model: `cost` (AR decode on a GPU config), `gpus`, `models` and `calibrate`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from dexsim.specs import calibrate as calib
from dexsim.specs.catalog import get_gpu, get_model, gpus, model_spec, models
from dexsim.traces.format import load_trace
from dexsim.hardware.cost import PARTS, ar_breakdown, check_hardware
from dexsim.hardware.pricing import hardware, profile_gpu
from dexsim.specs.profile import load_profile
from dexsim.config import check_writable
from dexsim.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _named(flag: str, lookup, name: str):
    try:
        return lookup(name)
    except UserError as e:
        raise UserError(f"{flag}: {e}") from None


def cost_report(model_name: str, gpu_name: str | None, tp: int = 1, pp: int = 1, batch: int = 1,
                context: int = 128, profile_path: str | None = None) -> dict:
    """AR decoding of `model_name` on a GPU configuration: the roofline, or a measured profile's tables."""
    model = _named("--model", get_model, model_name)
    profile = None if profile_path is None else load_profile(profile_path)
    if gpu_name is None:
        if profile is None:
            raise UserError("--gpu: required (or --profile, which names the catalog entry it was measured as)")
        gpu_name = profile_gpu(profile)
    gpu = _named("--gpu", get_gpu, gpu_name)
    _, hw = hardware(model.name, gpu.name, tp, pp, batch, profile=profile)
    check_hardware(model, hw, context)
    b = ar_breakdown(model, hw, context)
    dominant = max(PARTS, key=lambda p: b[p])
    out = {"model": model.name, "gpu": hw.gpu.name, "tp": tp, "pp": pp, "batch": batch, "context": context,
           "seconds_per_token": b["seconds"], "tokens_per_s": batch / b["seconds"],
           "parts": {p: b[p] for p in PARTS}, "memory_s": b["memory"], "compute_s": b["compute"],
           "bound": b["bound"], "dominant": dominant}
    if profile is not None:
        notes = profile.extrapolated([batch], context, [batch], [batch] if pp > 1 else [])
        out.update(profile=profile.path, profile_extrapolated=bool(notes), profile_notes=notes)
        out["bound"] = "measured"
    return out


def _cmd_cost(args) -> int:
    r = cost_report(args.model, args.gpu, args.tp, args.pp, args.batch, args.context, args.profile)
    for note in r.pop("profile_notes", ()):
        print(f"note: --profile {r['profile']}: extrapolated: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['model']} on {r['tp']}x{r['pp']} {r['gpu']} (tp x pp), batch {r['batch']}, context {r['context']}")
    print(f"  AR step      {r['seconds_per_token'] * 1e3:9.3f} ms   ({r['tokens_per_s']:.1f} tokens/s)")
    for p, s in r["parts"].items():
        print(f"  {p:<12} {s * 1e3:9.3f} ms")
    if "profile" in r:
        print(f"  measured: {r['profile']}; largest part: {r['dominant']}")
    else:
        print(f"  roofline: memory {r['memory_s'] * 1e3:.3f} ms vs compute {r['compute_s'] * 1e3:.3f} ms "
              f"-> {r['bound']}-bound; largest part: {r['dominant']}")
    return 0


def _list(args, catalog: dict, as_dict, header: str, line) -> int:
    """A catalog as JSON (--json) or as a table, one line per entry."""
    if args.json:
        print(json.dumps({n: as_dict(x) for n, x in catalog.items()}, indent=2))
        return 0
    print(header)
    for n, x in catalog.items():
        print(line(n, x))
    return 0


def _cmd_gpus(args) -> int:
    return _list(args, gpus(), lambda g: {**asdict(g), "layer_overhead_s": g.layer_overhead_s},
                 f"{'name':<22}{'TFLOP/s':>9}{'GB/s':>8}{'GB':>7}{'bw eff':>8}{'layer ovh':>11}  link",
                 lambda n, g: f"{n:<22}{g.peak_flops / 1e12:9.1f}{g.memory_bandwidth / 1e9:8.0f}"
                              f"{g.memory_bytes / 1e9:7.1f}{g.bandwidth_efficiency:8.3f}"
                              f"{g.layer_overhead_s * 1e6:9.1f}us  {g.interconnect.kind}")


def _cmd_models(args) -> int:
    catalog = models()
    for path in args.trace or ():  # a model read from a trace's meta.arch (catalog entries keep theirs)
        meta = load_trace(path).meta
        name = str(meta["model"])
        catalog[name] = model_spec(name, meta["arch"], path)
    return _list(args, catalog, asdict,
                 f"{'name':<16}{'layers':>7}{'hidden':>7}{'heads':>6}{'kv':>4}{'vocab':>8}{'params':>9}",
                 lambda n, m: f"{n:<16}{m.layers:7}{m.hidden:7}{m.heads:6}{m.kv_heads:4}{m.vocab:8}"
                              f"{m.params / 1e9:8.2f}B")


def _cmd_calibrate(args) -> int:
    if args.out is not None:
        check_writable("--out", args.out)
    profile = calib.measure(args.seconds)
    path = calib.write_profile(calib.rates_profile(profile), args.out)
    print(f"cpu-local: {profile['memory_bandwidth'] / 1e9:.1f} GB/s, {profile['peak_flops'] / 1e9:.1f} GFLOP/s "
          f"fp32, {profile['kernel_overhead_s'] * 1e6:.2f} us per op -> {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cost", help="roofline cost of plain AR decoding on a GPU configuration")
    p.add_argument("--model", required=True)
    p.add_argument("--gpu", default=None, help="catalog GPU (default with --profile: the one it was measured as)")
    p.add_argument("--profile", default=None, help="price from this measured profile (`python -m dexref profile`) "
                                                   "instead of the roofline")
    p.add_argument("--tp", type=_positive_int, default=1, help="tensor-parallel GPUs per stage")
    p.add_argument("--pp", type=_positive_int, default=1, help="pipeline stages")
    p.add_argument("--batch", type=_positive_int, default=1, help="sequences decoded together")
    p.add_argument("--context", type=_positive_int, default=128, help="KV positions each sequence reads")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cost)

    p = sub.add_parser("gpus", help="list the GPU catalog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_gpus)

    p = sub.add_parser("models", help="list the model catalog")
    p.add_argument("--trace", action="append", default=None,
                   help="also list the model of this trace (its meta.arch where the catalog lacks it); repeatable")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("calibrate", help="measure this machine and write the cpu-local profile")
    p.add_argument("--out", default=None, help="profile path (default: the user cache file gpus() overlays)")
    p.add_argument("--seconds", type=_positive_float, default=3.0, help="time budget, about")
    p.set_defaults(func=_cmd_calibrate)
