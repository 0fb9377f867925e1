"""`python -m dexref profile`: time what DEX's cost depends on, on one device, for one model shape.

The profile (`dex-profile/1`, read by dexsim/specs/profile.py) holds, each the mean of several
repeats after a warm-up (a decode is one long run of such calls, so its time is the sum of their
means; the best of the repeats, the run least disturbed by the machine, priced 2-12% short here):

- `layer_s[r][c]`: one layer step of r rows each reading c KV positions, exactly the engine's call
  (`TorchExecutor._round`: a lone row through the one-row path, several batched with the tree mask;
  static-shape steps replayed as CUDA graphs on a GPU), timed over every layer of the model in turn
  (as decoding streams them, so no layer's weights are still in a cache) and divided by the depth;
- `head_s[r]`: one exit-head group of r rows with the sampling (`TorchExecutor.read_exits`);
- `head_refill`: how much slower the layer calls right after an exit-head group run than back to
  back, in layer steps (the head's weights stream through the last-level cache and evict what the
  layer calls reuse; on this CPU most of it in the first call, none after the third): the extra time
  of the first REFILL_CALLS calls after a one-row head over one layer step, the mean over the rows of
  the grid at its first context;
- `host_round_s`, `host_exit_s`: the host's control per lattice-core round and per exit read (the
  core's rules, the replay's decisions and the engine's bookkeeping: pool slots, KV promotion,
  embedding spawns), from emulations of a synthetic trace of the shape's depth under several
  policies, fitted by least squares to each run's rounds and exit reads: with the layer and head
  computations stubbed, and in situ (`time_host` says which is priced where, and why);
- `transfer`: with two or more devices, a hidden-state message of r rows from one to the next;
  null (and a note) otherwise;
- `rates`: the roofline's numbers for this device as the engine meets them: `python -m dexsim
  calibrate`'s memory bandwidth (a plain copy), with the engine's own per-op time (one small torch op,
  where the roofline's numpy op is far cheaper), FLOP/s (on a CPU: the layer's gate/up product at the
  most rows profiled, on the run's threads, not numpy's square product on every core) and bandwidth
  efficiency (one row's layer step against the copy), so a CPU profile can also serve as the
  cpu-local catalog entry.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import torch

from dexsim.errors import UserError
from dexsim.specs import calibrate
from dexsim.specs.catalog import get_model
from dexsim.specs.profile import FORMAT

from .engine import TorchExecutor

CPU_ROWS = (1, 2, 4, 8, 16, 32)
CPU_CONTEXTS = (128, 512, 2048, 8192)
REFILL_CALLS = 4  # layer calls timed after a head: on this CPU the refill is over by the third
HOST_POLICIES = (("ar", {}), ("layerskip", {}), ("adaptive", {"threshold": 0.5}),
                 ("dex", {"explorers": 4, "buffer": 8}), ("dex", {"explorers": 8, "buffer": 16, "priority": "deep"}))


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = ["wall"]  # the clock of this process's measurements (`--clock`)


def clock() -> float:
    """Seconds on the chosen clock: wall (what a user waits), or this process's CPU time (on a CPU
    shared with other jobs: the time the work took while it ran, not while others did)."""
    return CLOCKS[CLOCK[0]]()


def _times(fn, repeats: int, dev) -> np.ndarray:
    """Seconds of fn() in each of `repeats` runs, after one warm-up run."""
    fn()
    out = np.zeros(max(repeats, 1))
    for i in range(len(out)):
        _sync(dev)
        t0 = clock()
        fn()
        _sync(dev)
        out[i] = clock() - t0
    return out


def _best(fn, repeats: int, dev) -> float:
    """A rate's time: the best run (what the device can do; a table's time is the mean run: what a long
    run of such calls takes per call)."""
    return float(_times(fn, repeats, dev).min())


def _rows_at(ex: TorchExecutor, rows: int, ctx: int) -> SimpleNamespace:
    """A lattice view of `rows` nodes at one layer over `ctx` committed positions: the anchor and its
    children (alternative guesses at the next position), each in its own pool slot."""
    M = ex.slots
    lat = SimpleNamespace(tag=np.zeros((1, M), np.int64), pos=np.full((1, M), ctx + 1, np.int64),
                          parent=np.zeros((1, M), np.int64), depth=np.zeros((1, M), np.int64))
    lat.tag[0, :rows] = np.arange(rows)
    lat.pos[0, 0], lat.parent[0, 0] = ctx, -1
    ex.n_cached[0] = ctx
    ex.slot_pos[0, :rows] = lat.pos[0, :rows]
    return lat


def time_layers(model, rows, contexts, repeats: int, graphs: bool, bar) -> tuple[np.ndarray, np.ndarray]:
    """[R, C] seconds of one layer step (see the module): the mean of the repeats, and their best."""
    L, dev = model.args.n_layer, model.device
    ex = TorchExecutor(model, [[0]], max(rows) + 1, max(contexts) + 2, graphs=graphs)
    out, best = np.zeros((2, len(rows), len(contexts)))
    for a, r in enumerate(rows):
        s, j = np.zeros(r, np.int64), np.arange(r)
        for b, c in enumerate(contexts):
            lat = _rows_at(ex, r, c)

            def sweep():
                for layer in range(L):
                    ex._round(lat, s, j, np.full(r, layer))
            t = _times(sweep, repeats, dev) / L
            out[a, b], best[a, b] = t.mean(), t.min()
            bar.update(1)
    return out, best


def time_heads(model, rows, repeats: int, bar) -> tuple[np.ndarray, np.ndarray]:
    """[R] seconds of one exit-head group of r rows, sampling included (it ends in a host copy): the
    mean of the repeats, and their best."""
    dev = model.device
    ex = TorchExecutor(model, [[0]], max(rows) + 1, 4)
    out, best = np.zeros((2, len(rows)))
    for a, r in enumerate(rows):
        lat = _rows_at(ex, r, 1)
        s, j = np.zeros(r, np.int64), np.arange(r)
        calls = 4
        t = _times(lambda: [ex.read_exits(lat, s, j) for _ in range(calls)], repeats, dev) / calls
        out[a], best[a] = t.mean(), t.min()
        bar.update(1)
    return out, best


def time_refill(model, rows, ctx: int, layer_s, repeats: int, graphs: bool, bar) -> dict:
    """`head_refill` (see the module): at each row count, the first REFILL_CALLS layer calls timed right
    after a one-row exit head and right after the last layers' calls (back to back, as the layer table
    times them), alternately, `repeats` x 4 times each; their mean difference over `layer_s[r]`."""
    L, dev = model.args.n_layer, model.device
    ex = TorchExecutor(model, [[0]], max(rows) + 1, ctx + 2, graphs=graphs)
    hx = TorchExecutor(model, [[0]], 2, 4)
    hlat, one = _rows_at(hx, 1, 1), (np.zeros(1, np.int64), np.arange(1))
    k = min(REFILL_CALLS, L)
    points = []
    for r, step in zip(rows, layer_s):
        lat = _rows_at(ex, r, ctx)
        s, j = np.zeros(r, np.int64), np.arange(r)

        def calls(layers, timed):
            t = 0.0
            for layer in layers:
                _sync(dev)
                t0 = clock()
                ex._round(lat, s, j, np.full(r, layer))
                _sync(dev)
                t += clock() - t0 if timed else 0.0
            return t
        extra = []
        calls(range(L), False)
        for _ in range(4 * max(repeats, 1)):
            calls(range(L - k, L), False)
            plain = calls(range(k), True)
            hx.read_exits(hlat, *one)
            extra.append(calls(range(k), True) - plain)
        points.append({"rows": int(r), "extra_s": float(np.mean(extra)), "layer_steps": float(np.mean(extra) / step)})
        bar.update(1)
    return {"head_refill": max(0.0, float(np.mean([p["layer_steps"] for p in points]))),
            "calls": k, "context": int(ctx), "points": points,
            "source": f"extra seconds of the first {k} layer calls after a one-row exit head against the same "
                      f"calls back to back, over one layer step (layer_s at the same rows, context {ctx}); "
                      f"the mean over the rows, never below 0"}


def time_host(model, spec_name: str, repeats: int, bar, tokens: int = 8, seqs: int = 2) -> dict:
    """Seconds of the host's control per lattice-core round and per exit read, from emulations of a
    synthetic trace of the model's depth under HOST_POLICIES, two ways: `stubbed` (layer and head
    computations skipped: the host's code alone) and `in_situ` (everything computed, the time outside
    the engine's layer and head calls: the same code, run between real layer calls). On a CPU the
    host's code shares the core and its caches with the computation, and runs slower in situ, so the
    in-situ figures are the profile's; on a GPU the host runs beside the device, and the stubbed are."""
    from dexsim.core import registry
    from dexsim.traces.synth import synth_trace
    from dexsim.traces.transforms import rescale_depths

    from .emulate import emulate

    L = model.args.n_layer
    trace = synth_trace("smollm2-135m", seqs, tokens, ead="beta:2,1.2", depths="every:3", seed=0)
    if trace.L != L:
        trace = rescale_depths(trace, replace(get_model("smollm2-135m"), name=spec_name, layers=L))
    runs = {"stubbed": {}, "in_situ": {}}
    for name, params in HOST_POLICIES:
        policy = registry.make_policy(name, L, exits=trace.depths, depths=trace.depths, **params)
        label = name + "".join(f" {k}={v}" for k, v in params.items())
        for way, stub in (("stubbed", True), ("in_situ", False)):
            seconds, counters = [], None
            for _ in range(max(repeats, 1) if stub else 1):
                run = emulate(trace, policy, model, stub=stub)
                seconds.append(run.host_seconds(CLOCK[0]))
                counters = run.counters
            runs[way][label] = {"rounds": counters["rounds"], "head_evals": counters["head_evals"],
                                "seconds": float(np.mean(seconds))}
        bar.update(1)
    out = {"fit": "seconds = per_round_s x rounds + per_exit_s x head_evals, least squares over the policies",
           "trace": f"synthetic, {seqs} sequences x {tokens} tokens, depth {L}, exits every 3rd layer"}
    for way, per in runs.items():
        round_s, exit_s = fit_host(per.values())
        out[way] = {"per_round_s": round_s, "per_exit_s": exit_s, "policies": per}
    out["priced"] = "stubbed" if model.device.type == "cuda" else "in_situ"
    return out


def fit_host(runs) -> tuple[float, float]:
    """(seconds per round, seconds per exit read) of the host's control, least squares over stubbed runs
    (a round's rules, plus the replay's read and the engine's bookkeeping of each exit read); per round
    only where the fit would make either negative."""
    runs = list(runs)
    A = np.array([[r["rounds"], r["head_evals"]] for r in runs], float)
    y = np.array([r["seconds"] for r in runs])
    (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    if a < 0 or b < 0:
        return float(y.sum() / A[:, 0].sum()), 0.0
    return float(a), float(b)


def time_transfer(model, rows, repeats: int, bar) -> tuple[dict | None, str | None]:
    """One hidden-state message of r rows from device 0 to device 1; None and a note with fewer than two."""
    dev = model.device
    n = torch.cuda.device_count() if dev.type == "cuda" else 0
    if n < 2:
        return None, f"stage-to-stage transfer not measured: {max(n, 1)} {dev.type} device on this machine (needs 2)"
    dst = torch.device("cuda", ((dev.index or 0) + 1) % n)
    out = []
    for r in rows:
        x = torch.zeros(r, model.args.dim, dtype=model.dtype, device=dev)
        out.append(float(_times(lambda: x.to(dst, non_blocking=False), repeats, dev).mean()))
        bar.update(1)
    return {"rows": list(rows), "seconds": out, "from": str(dev), "to": str(dst)}, None


def engine_rates(dtype, dev, repeats: int, arch: dict, batch: int, rows: int = 8192, cols: int = 4096,
                 calls: int = 200) -> dict:
    """(seconds per small torch op, bytes/s of a one-row product, FLOP/s of the layer's largest product
    at `batch` rows) on `dev` in `dtype` with this process's threads (see the module)."""
    w = torch.randn(rows, cols, device=dev).to(dtype)
    x = torch.randn(1, cols, device=dev).to(dtype)
    gemv = _best(lambda: x @ w.T, repeats, dev)
    a = torch.ones(64, device=dev, dtype=dtype)
    op = _best(lambda: [torch.add(a, a) for _ in range(calls)], repeats, dev) / calls
    # the arithmetic rate as a layer step meets it: its four products (qkv, o, gate/up, down; F.linear,
    # the engine's call) at the most rows profiled, on weights a few calls keep in cache, so that
    # streaming them is not timed
    h, hd, i = arch["hidden"], arch["head_dim"], arch["intermediate"]
    shapes = (((arch["heads"] + 2 * arch["kv_heads"]) * hd, h), (h, arch["heads"] * hd), (2 * i, h), (h, i))
    ws = [torch.randn(o, n, device=dev).to(dtype) for o, n in shapes]
    xs = [torch.randn(batch, n, device=dev).to(dtype) for _, n in shapes]
    k = 8
    gemm = _best(lambda: [torch.nn.functional.linear(x, w) for _ in range(k) for x, w in zip(xs, ws)],
                 repeats, dev) / k
    return {"kernel_overhead_s": op, "gemv_bytes_per_s": w.numel() * w.element_size() / gemv,
            "product_flops": 2 * batch * sum(o * n for o, n in shapes) / gemm,
            "source": f"one torch.add of 64 elements ({calls} calls), one [1, {cols}] x [{cols}, {rows}] "
                      f"product and a layer's four products at {batch} rows (cached weights), {dtype}, on "
                      f"{dev}, {torch.get_num_threads()} thread(s), best of {repeats}"}


def layer_efficiency(arch: dict, dtype: str, rates: dict, seconds: float, ctx: int) -> float:
    """The share of the copy bandwidth a one-row layer step reaches: dexsim's byte count of that step
    over its measured time, less the fixed per-op overhead of its ops (the cpu-measured class's count)
    and, where the class says streaming and arithmetic do not overlap, less its arithmetic."""
    from dexsim.hardware import cost
    from dexsim.specs.catalog import DTYPE_BYTES, get_gpu, spec_from_arch

    model = spec_from_arch("profiled", {**arch, "params": 1, "dtype": dtype, "bytes_per_weight": DTYPE_BYTES[dtype]})
    gpu = replace(get_gpu("cpu-local"), memory_bandwidth=rates["memory_bandwidth"], bandwidth_efficiency=1.0,
                  peak_flops=rates["peak_flops"], compute_efficiency=1.0, kernel_overhead_s=rates["kernel_overhead_s"])
    parts = cost.layer_parts(model, cost.Hardware(gpu), 1.0, float(ctx))
    streaming = seconds - float(parts["overhead"]) - (0.0 if gpu.memory_compute_overlap else float(parts["compute"]))
    return float(min(1.0, float(parts["memory"]) / streaming)) if streaming > 0 else 1.0


def device_info(dev) -> dict:
    info = {"kind": dev.type, "count": torch.cuda.device_count() if dev.type == "cuda" else 1}
    if dev.type == "cuda":
        info.update(name=torch.cuda.get_device_name(dev), driver=_nvidia_driver(), cuda=torch.version.cuda)
    else:
        info.update(name=cpu_model(), driver=None)
    return info


def _nvidia_driver() -> str | None:
    try:
        return open("/proc/driver/nvidia/version").read().split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        return None


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile(model, shape: dict, dtype: str, rows, contexts, head_rows, repeats: int, argv: list,
            rates_seconds: float = 2.0) -> dict:
    """The whole profile as a JSON-ready dict (see the module)."""
    from tqdm import tqdm

    dev = model.device
    graphs = dev.type == "cuda"
    n_t = len(head_rows) if dev.type == "cuda" and torch.cuda.device_count() > 1 else 0
    total = len(rows) * (len(contexts) + 1) + len(head_rows) + len(HOST_POLICIES) + n_t
    with torch.inference_mode(), tqdm(total=total, desc="profile", unit="point", file=sys.stderr, mininterval=1) as bar:
        layer_s, layer_best = time_layers(model, rows, contexts, repeats, graphs, bar)
        head_s, head_best = time_heads(model, head_rows, repeats, bar)
        refill = time_refill(model, rows, contexts[0], layer_s[:, 0], repeats, graphs, bar)
        host = time_host(model, shape["name"], max(1, repeats // 2), bar)
        transfer, note = time_transfer(model, head_rows, repeats, bar)
    with torch.inference_mode():
        eng = engine_rates(model.dtype, dev, repeats, shape["arch"], max(rows))
    if dev.type == "cpu":
        rates = calibrate.measure(rates_seconds)
        # the engine's arithmetic runs on its own threads and shapes, not numpy's square product on all cores
        rates.update(kernel_overhead_s=eng["kernel_overhead_s"], peak_flops=eng["product_flops"])
        rates["bandwidth_efficiency"] = layer_efficiency(shape["arch"], dtype, rates, layer_s[0, 0], contexts[0])
    else:  # calibrate measures the host; a GPU's rates are the engine's alone
        rates = {"peak_flops": float("nan"), "memory_bandwidth": eng["gemv_bytes_per_s"], "bandwidth_efficiency": 1.0,
                 "kernel_overhead_s": eng["kernel_overhead_s"], "memory_bytes": torch.cuda.get_device_properties(dev).total_memory,
                 "source": "the device's one-row product bandwidth (no FLOP/s measured)"}
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m dexref " + " ".join(argv),
        "device": device_info(dev),
        "catalog_gpu": "cpu-local" if dev.type == "cpu" else None,
        "host": {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                 "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "shape": shape, "dtype": dtype, "repeats": repeats, "statistic": "mean over repeats after a warm-up",
        "cuda_graphs": graphs, "clock": CLOCK[0],
        "rows": list(rows), "contexts": list(contexts), "layer_s": layer_s.tolist(),
        "head_rows": list(head_rows), "head_s": head_s.tolist(),
        "head_refill": refill.pop("head_refill"), "head_refill_measured": refill,
        "best_of_repeats": {"layer_s": layer_best.tolist(), "head_s": head_best.tolist(),
                            "note": "not priced: the run least disturbed, for comparison with the means"},
        "host_round_s": host[host["priced"]]["per_round_s"], "host_exit_s": host[host["priced"]]["per_exit_s"],
        "host_control": host,
        "transfer": transfer, "notes": [note] if note else [],
        "rates": {k: rates[k] for k in ("peak_flops", "memory_bandwidth", "kernel_overhead_s", "memory_bytes",
                                        "bandwidth_efficiency")},
        "rates_source": f"{rates['source']}; kernel_overhead_s and (on a CPU) peak_flops are the engine's "
                        f"({eng['source']}); "
                        f"bandwidth_efficiency: the bytes of one layer step of one row at context {contexts[0]} "
                        f"(dexsim's roofline count) over the measured layer_s[0][0] less its ops' overhead, "
                        f"as a share of the copy bandwidth (one calibration point, as gpt-fast's is for the GPUs)",
    }


def parse_grid(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated positive integers") from None
    if not values or min(values) < 1 or sorted(set(values)) != values:
        raise UserError(f"{flag} {text!r}: expected increasing positive integers")
    return values
