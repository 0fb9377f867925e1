"""The roofline cost model: seconds for a layer step, an exit-head group, a stage transfer and AR decoding.

DESIGN.md section 6. Every hardware and calibration number comes from the GPU catalog
(`dexsim/specs/data/gpus.json`); this module only counts what a decoder-only transformer moves and computes:

    step = max(FLOPs / (peak x compute eff), bytes / (bandwidth x bandwidth eff)) + fixed overhead
           (+ two ring all-reduces per layer under tensor parallelism)

Rows sharing one step share one weight load: that is the whole reason speculative work can be cheap.
Two properties of how an engine runs a step are data of the device's calibration class (gpus.json,
each with the measurement behind it): whether streaming the weights overlaps the arithmetic
(`memory_compute_overlap`: the max above; else the sum, as an eager single-threaded CPU GEMM packs
its weights and then computes), and whether the rows of one sequence at a layer read that
sequence's KV prefix once (`kv_prefix_shared`: tree attention, one product of all rows' queries
with the cached keys) or each row its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dexsim.specs.catalog import GPUSpec, ModelSpec, memory_fit
from dexsim.specs.profile import Profile
from dexsim.errors import UserError

# The parts a priced run is split into; `seconds` is always their sum.
PARTS = ("layers", "heads", "overhead", "collectives", "transfers")

# Logits are upcast to fp32 before argmax/softmax (gpt-fast, HF), so the head writes and reads 4 B each.
LOGIT_BYTES = 4
# A tensor-parallel exit head gathers each shard's (max, argmax) pair per row, 4 B each, not the logits.
SHARD_ARGMAX_BYTES = 8


@dataclass(frozen=True)
class Hardware:
    gpu: GPUSpec
    tp: int = 1
    pp: int = 1
    batch: int = 1
    profile: Profile | None = None  # measured tables of this device and model shape: priced instead of the roofline

    @property
    def round_s(self) -> float:
        """The host's control cost of one lattice-core round."""
        return self.gpu.round_overhead_s if self.profile is None else self.profile.host_round_s

    @property
    def exit_s(self) -> float:
        """The host's control cost of one exit read (the answer read back, the decision on it)."""
        return self.gpu.exit_overhead_s if self.profile is None else self.profile.host_exit_s

    @property
    def refill(self) -> float:
        """Layer steps' worth of time an exit-head group adds to the layer calls after it (its stream
        evicts what they reuse from the cache)."""
        return self.gpu.head_refill if self.profile is None else self.profile.head_refill


# --- what a model moves and computes ---------------------------------------------------------------

def layer_params(model: ModelSpec) -> int:
    """Weights of one transformer block: attention projections, gated MLP, two norms."""
    q_o = 2 * model.hidden * model.heads * model.head_dim
    k_v = 2 * model.hidden * model.kv_heads * model.head_dim
    mlp = 3 * model.hidden * model.intermediate
    return q_o + k_v + mlp + 2 * model.hidden


def head_params(model: ModelSpec) -> int:
    """Final norm + LM head (vocab x hidden), read once per exit-head group whether tied or not."""
    return model.vocab * model.hidden + model.hidden


def kv_bytes_per_token(model: ModelSpec) -> float:
    """K and V of one position in one layer."""
    return 2 * model.kv_heads * model.head_dim * model.bytes_per_weight


def _activation_elems(model: ModelSpec) -> tuple[int, int]:
    """Elements one row reads and writes in a layer besides weights and KV: (replicated, split under TP).

    Hidden-sized tensors (norm in/out 4h, residual adds 6h, inputs of qkv and gate/up, outputs of o and
    down 4h) exist whole on every TP rank; head- and intermediate-sized ones are sharded.
    """
    replicated = 14 * model.hidden
    split = (2 * model.heads + 2 * model.kv_heads) * model.head_dim + 6 * model.intermediate
    return replicated, split


# --- collectives and transfers ---------------------------------------------------------------------

def _ring_allreduce(hw: Hardware, nbytes):
    if hw.tp == 1:
        return np.zeros_like(nbytes, dtype=float)
    ic, steps = hw.gpu.interconnect, 2 * (hw.tp - 1)
    return hw.gpu.collective_overhead_s + steps * ic.latency_s + steps / hw.tp * nbytes / ic.bandwidth


def _ring_allgather(hw: Hardware, nbytes):
    if hw.tp == 1:
        return np.zeros_like(nbytes, dtype=float)
    ic, steps = hw.gpu.interconnect, hw.tp - 1
    return hw.gpu.collective_overhead_s + steps * ic.latency_s + steps / hw.tp * nbytes / ic.bandwidth


def transfer_time(model: ModelSpec, hw: Hardware, rows) -> float:
    """Pipeline point-to-point of `rows` hidden states across one stage boundary."""
    if hw.profile is not None and hw.profile.transfer_s is not None:
        return hw.profile.transfer(rows)
    ic = hw.gpu.interconnect
    if ic.bandwidth <= 0:
        return math.inf  # no link: check_hardware refuses pp > 1 on such a device
    return ic.latency_s + rows * model.hidden * model.bytes_per_weight / ic.bandwidth


# --- one step, split into its parts ----------------------------------------------------------------

def _roofline(hw: Hardware, nbytes, flops) -> tuple[np.ndarray, np.ndarray]:
    gpu = hw.gpu
    memory_s = nbytes / (gpu.memory_bandwidth * gpu.bandwidth_efficiency)
    compute_s = flops / (gpu.peak_flops * gpu.compute_efficiency)
    return memory_s, compute_s


def _per_row(ctx, rows):
    """Mean KV positions per row (0 where there are no rows), broadcast."""
    rows, ctx = np.broadcast_arrays(rows, ctx)
    return np.divide(ctx, rows, out=np.zeros_like(ctx), where=rows > 0)


def _measured(seconds, rows) -> dict:
    """A measured step as parts: all of it in `memory` (no roofline side, overhead or collective apart)."""
    zero = np.zeros_like(rows)
    return {"memory": np.where(rows > 0, seconds, 0.0), "compute": zero, "overhead": zero, "collectives": zero}


def layer_parts(model: ModelSpec, hw: Hardware, rows, ctx_tokens, seqs=None) -> dict:
    """One layer step's memory time, compute time, fixed overhead and TP collectives (arrays broadcast).
    `ctx_tokens`: KV positions the rows read, summed over the rows; `seqs`: how many sequences the rows
    belong to (None: each row its own, as in AR), which matters where the KV prefix is shared."""
    rows = np.asarray(rows, dtype=float)
    ctx = np.asarray(ctx_tokens, dtype=float)
    if hw.profile is not None:
        rows, ctx = np.broadcast_arrays(rows, ctx)
        return _measured(hw.profile.layer(np.maximum(rows, 1), _per_row(ctx, rows)), rows)
    tp, bpw, kvb = hw.tp, model.bytes_per_weight, kv_bytes_per_token(model)
    replicated, split = _activation_elems(model)
    kv_read = ctx
    if hw.gpu.kv_prefix_shared and seqs is not None:  # each sequence's prefix once, at its rows' mean context
        kv_read = np.asarray(seqs, float) * _per_row(ctx, rows)
    nbytes = (layer_params(model) * bpw / tp
              + (kv_read + rows) * kvb / tp  # read the context, write the new rows' K and V
              + rows * (replicated + split / tp) * bpw)
    attention_flops = 4 * model.heads * model.head_dim * ctx  # QK^T and AV over every context position
    flops = (2 * layer_params(model) * rows + attention_flops) / tp
    memory_s, compute_s = _roofline(hw, nbytes, flops)
    activation_bytes = rows * model.hidden * bpw
    return {"memory": memory_s, "compute": compute_s,
            "overhead": np.full_like(rows, hw.gpu.layer_overhead_s),
            "collectives": 2 * _ring_allreduce(hw, activation_bytes)}


def head_parts(model: ModelSpec, hw: Hardware, rows) -> dict:
    """One exit-head group (final norm + LM head + argmax) for `rows` rows sharing one head weight load.

    Trained exit heads (`model.head_adapter_params` > 0) add an adapter before the shared head, charged
    per row: its weights read and applied for every row, replicated on each TP rank (it is tiny and
    its output is the whole hidden state). Rows at the same depth share one adapter and depth-L rows
    use none, so this is an upper bound; on SmolLM2 a rank-64 adapter is 0.26% of the head's weights."""
    rows = np.asarray(rows, dtype=float)
    if hw.profile is not None:
        return _measured(hw.profile.head(np.maximum(rows, 1)), rows)
    tp, bpw = hw.tp, model.bytes_per_weight
    io_per_row = 3 * model.hidden * bpw + 2 * model.vocab / tp * LOGIT_BYTES
    adapter = model.head_adapter_params
    nbytes = head_params(model) * bpw / tp + rows * (io_per_row + adapter * bpw)
    flops = 2 * model.vocab * model.hidden * rows / tp + 2 * adapter * rows
    memory_s, compute_s = _roofline(hw, nbytes, flops)
    return {"memory": memory_s, "compute": compute_s,
            "overhead": np.full_like(rows, hw.gpu.layer_overhead_s),
            "collectives": _ring_allgather(hw, rows * SHARD_ARGMAX_BYTES)}


def busy(hw: Hardware, parts: dict):
    """The streaming-and-arithmetic time of a step: the longer of the two where the device overlaps
    them, their sum where it does not (its calibration class says which)."""
    if hw.gpu.memory_compute_overlap:
        return np.maximum(parts["memory"], parts["compute"])
    return parts["memory"] + parts["compute"]


def _step_time(hw: Hardware, parts: dict):
    t = busy(hw, parts) + parts["overhead"] + parts["collectives"]
    return float(t) if t.ndim == 0 else t


def layer_time(model: ModelSpec, hw: Hardware, rows, ctx_tokens, seqs=None):
    """Seconds for one layer step of `rows` rows sharing one weight load, reading `ctx_tokens` KV positions
    in all (of `seqs` sequences; None: one per row).

    `rows`, `ctx_tokens` and `seqs` may be arrays (broadcast); a scalar in gives a float out.
    """
    return _step_time(hw, layer_parts(model, hw, rows, ctx_tokens, seqs))


def head_time(model: ModelSpec, hw: Hardware, rows):
    """Seconds for one exit-head group of `rows` rows (on gemma3-270m this exceeds a layer step)."""
    return _step_time(hw, head_parts(model, hw, rows))


# --- plain AR decoding -----------------------------------------------------------------------------

def ar_breakdown(model: ModelSpec, hw: Hardware, context: float) -> dict:
    """One AR decode step of `hw.batch` sequences at `context` KV positions each, split into PARTS.

    Also returns `memory` and `compute` (roofline sides summed over the step) and `bound`.
    Pipeline stages run one after the other (no asynchrony yet), so stage times add up.
    """
    rows = hw.batch
    lp = layer_parts(model, hw, rows, rows * context)
    hp = head_parts(model, hw, rows)
    L = model.layers
    parts = {
        "layers": L * float(busy(hw, lp)),
        "heads": float(busy(hw, hp)) + hw.refill * float(_step_time(hw, lp)),  # the next token's first layers refill
        # AR: L rounds and one exit read per token
        "overhead": L * float(lp["overhead"]) + float(hp["overhead"]) + L * hw.round_s + rows * hw.exit_s,
        "collectives": L * float(lp["collectives"]) + float(hp["collectives"]),
        "transfers": (hw.pp - 1) * transfer_time(model, hw, rows) if hw.pp > 1 else 0.0,
    }
    memory = L * float(lp["memory"]) + float(hp["memory"])
    compute = L * float(lp["compute"]) + float(hp["compute"])
    return {"seconds": sum(parts[p] for p in PARTS), **parts,
            "memory": memory, "compute": compute, "bound": "memory" if memory >= compute else "compute"}


def ar_token_time(model: ModelSpec, hw: Hardware, context: float) -> float:
    """Seconds per AR decode step (one token for each of `hw.batch` sequences); tokens/s = batch / this."""
    return ar_breakdown(model, hw, context)["seconds"]


# --- pricing a replay's counters -------------------------------------------------------------------

def _histogram(name: str, counts) -> np.ndarray:
    counts = np.array(counts, dtype=float)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise ValueError(f"{name}: expected a 1-D histogram of non-negative counts indexed by rows")
    if counts.size:
        counts[0] = 0  # an entry with no rows moved nothing (e.g. rounds that read no exit head)
    return counts


def price_counts(model: ModelSpec, hw: Hardware, load_rows, ctx_per_row: float, head_rows,
                 rounds: int, stage_crossings: int = 0) -> dict:
    """Seconds for a replay's counters, split into PARTS (seconds == their sum).

    load_rows[r]: layer weight loads shared by r rows. head_rows[r]: rounds that evaluated r exit heads
    (one head weight load each). Entries at index 0 cost nothing. ctx_per_row: mean KV positions a row
    reads. stage_crossings: pipeline
    point-to-point transfers, each carrying one `hw.batch`-row group. rounds: each pays the host's
    control (`hw.round_s`; a batch shares its rounds) and each exit read its own (`hw.exit_s`),
    besides the loads and heads it did. A head group also slows the layer calls after it by
    `hw.refill` layer steps, priced at the run's mean step (which step follows it, the counters do
    not say).
    """
    loads = _histogram("load_rows", load_rows)
    heads = _histogram("head_rows", head_rows)
    if rounds < 0 or stage_crossings < 0:
        raise ValueError("rounds and stage_crossings must be non-negative")
    r = np.arange(loads.size, dtype=float)
    lp = layer_parts(model, hw, r, r * ctx_per_row, seqs=hw.batch)  # a load spans the batch's sequences
    h = np.arange(heads.size, dtype=float)
    hp = head_parts(model, hw, h)
    refill = 0.0
    if hw.refill and loads.sum():
        refill = hw.refill * heads.sum() * float(loads @ _step_time(hw, lp)) / loads.sum()
    parts = {
        "layers": float(loads @ busy(hw, lp)),
        "heads": float(heads @ busy(hw, hp)) + refill,
        "overhead": (float(loads @ lp["overhead"] + heads @ hp["overhead"]) + rounds * hw.round_s
                     + float(heads @ h) * hw.exit_s),
        "collectives": float(loads @ lp["collectives"] + heads @ hp["collectives"]),
        "transfers": stage_crossings * transfer_time(model, hw, hw.batch) if stage_crossings else 0.0,
    }
    return {"seconds": sum(parts[p] for p in PARTS), **parts,
            "weight_loads": int(loads.sum()), "layer_rows": int(loads @ r),
            "head_groups": int(heads.sum()), "head_evals": int(heads @ h), "rounds": int(rounds)}


# --- does it fit ------------------------------------------------------------------------------------

def _positive_int(flag: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{flag} must be a positive integer, got {value!r}")


def weight_bytes_per_gpu(model: ModelSpec, hw: Hardware) -> float:
    """Weights on the fullest GPU: the largest stage's layers, charged with embedding and head as well."""
    bpw = model.bytes_per_weight
    other = model.params * bpw - model.layers * layer_params(model) * bpw  # embedding, final norm, head
    return (math.ceil(model.layers / hw.pp) * layer_params(model) * bpw + other) / hw.tp


def kv_reserve_bytes_per_gpu(model: ModelSpec, hw: Hardware, context: int = 0) -> float:
    """The KV cache a GPU keeps for a batch: the reserve's positions per sequence, or `context` if more."""
    tokens = max(memory_fit()["kv_reserve_tokens_per_sequence"], context) * hw.batch
    return math.ceil(model.layers / hw.pp) * tokens * kv_bytes_per_token(model) / hw.tp


def check_hardware(model: ModelSpec, hw: Hardware, context: int = 0) -> None:
    """Raise UserError (naming the flag) when `model` cannot run as `hw` describes, with `context` KV
    positions per sequence (0: the reserve's)."""
    for flag, value in (("--tp", hw.tp), ("--pp", hw.pp), ("--batch", hw.batch)):
        _positive_int(flag, value)
    for what, n in (("attention heads", model.heads), ("KV heads", model.kv_heads)):
        if n % hw.tp:
            raise UserError(f"--tp {hw.tp} does not divide the {n} {what} of {model.name}")
    if hw.pp > model.layers:
        raise UserError(f"--pp {hw.pp} exceeds the {model.layers} layers of {model.name}")
    if hw.tp * hw.pp > 1 and hw.gpu.interconnect.kind == "none":
        raise UserError(f"--tp/--pp: {hw.gpu.name} has no interconnect, so tp x pp must be 1")
    usable = hw.gpu.memory_bytes * (1 - memory_fit()["runtime_reserve_fraction"])
    weights, kv = weight_bytes_per_gpu(model, hw), kv_reserve_bytes_per_gpu(model, hw, context)
    if weights + kv <= usable:
        return
    # blame what does not fit: one sequence already (the split), else the batch, else the context
    one = Hardware(hw.gpu, tp=hw.tp, pp=hw.pp, batch=1)
    if weights + kv_reserve_bytes_per_gpu(model, one) > usable:
        flag, hint = "--tp/--pp", "raise --tp or --pp"
    elif weights + kv_reserve_bytes_per_gpu(model, hw) > usable:
        flag, hint = f"--batch {hw.batch}", "lower --batch or raise --tp/--pp"
    else:
        flag, hint = f"--context {context}", "lower --context or raise --tp/--pp"
    raise UserError(f"{flag}: {model.name} needs {(weights + kv) / 1e9:,.1f} GB per GPU (weights "
                    f"{weights / 1e9:,.1f} GB + KV cache {kv / 1e9:,.1f} GB) at tp={hw.tp} pp={hw.pp} "
                    f"batch={hw.batch}{f' context={context}' if context else ''}, but {hw.gpu.name} offers "
                    f"{usable / 1e9:.1f} GB; {hint}")
