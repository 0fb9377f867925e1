"""Pricing a replay on hardware: a replay's counters -> simulated seconds, tokens/s (DESIGN.md section 6).

A replay's counters do not depend on the hardware, so a `Tally` (what pricing needs of one replay) is
taken once and priced for every GPU configuration. The per-step arithmetic is `cost.price_counts`;
this module adds the two things a configuration changes about *what* is priced:

- Batch (`hw.batch` = N), an approximation: the N sequences of a batch are taken to run the same
  schedule in lockstep, so every weight load (layer or exit head) that one sequence makes carries N
  times its rows and commits N times its tokens. Real batch members diverge (different EADs, commits
  in different rounds) and would share loads less well; this is the best case for sharing.
- Pipeline (`hw.pp` = G, the lockstep scheduler): the layers are split into G contiguous stages, the
  stages run one after the other (no overlap, no bubbles modelled), so time is the sum of all stage
  times, i.e. the same layer and head steps as on one device, plus point-to-point transfers. A transfer
  happens whenever a node computes the first layer of a stage other than the first: its hidden state
  at the previous layer comes from the previous stage's device. Nodes that do so at the same layer in
  the same round of one sequence send one message together (they share the weight load there too), so
  a transfer costs one link latency per message plus the bytes of every row it carries. These are
  counted per layer by the lattice core as it advances (`Counters.per_layer`), not estimated. As in
  `cost.ar_breakdown`, the last stage's token going back to the first stage is not charged.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dexsim.config import option
from dexsim.errors import UserError
from dexsim.hardware import cost
from dexsim.replay.executor import replay
from dexsim.specs.catalog import ModelSpec, get_gpu, model_spec, with_heads
from dexsim.specs.profile import Profile, check_shape, load_profile


@dataclass(frozen=True)
class Tally:
    """What pricing needs of one replay, summed over its sequences; independent of the hardware."""

    tokens: int
    rounds: int
    node_layers: int
    weight_loads: int
    head_evals: int
    context_sum: int  # sum over node-layers of the KV positions the row reads
    load_rows: np.ndarray  # [r]: layer weight loads shared by r node-layers
    head_rows: np.ndarray  # [r]: per-sequence rounds that read r exit heads
    layer_loads: np.ndarray  # [L+1]: weight loads at layer l
    layer_rows: np.ndarray  # [L+1]: node-layers at layer l


def tally_of(lat) -> Tally:
    """The Tally of a finished lattice."""
    c = lat.counters
    t = c.totals()
    layer_loads, layer_rows = c.per_layer()
    return Tally(tokens=t["tokens"], rounds=t["rounds"], node_layers=t["node_layers"],
                 weight_loads=t["weight_loads"], head_evals=t["head_evals"], context_sum=int(c.context_sum),
                 load_rows=np.array(c.load_rows), head_rows=np.array(c.head_rows),
                 layer_loads=layer_loads, layer_rows=layer_rows)


def replay_tally(trace, policy, *, seed: int = 0, record_events: bool = False) -> tuple:
    """(lattice, Tally) of a replay of `trace` under `policy`."""
    lat = replay(trace, policy, seed=seed, record_events=record_events)
    return lat, tally_of(lat)


@dataclass(frozen=True)
class HardwareConfig:
    """What to price a replay on (flags of `replay`; None: not given)."""

    model: str | None = option(None, "catalog model to price (default: the trace's own); another model's depths "
                                     "are mapped by relative depth")
    gpu: str | None = option(None, "price the replay on this catalog GPU (`python -m dexsim gpus`)")
    tp: int | None = option(None, "with --gpu: tensor-parallel GPUs per stage (default 1)", kind=int)
    pp: int | None = option(None, "with --gpu: pipeline stages (default 1)", kind=int)
    batch: int | None = option(None, "with --gpu: sequences decoded together in lockstep (default 1); under "
                                     "--scheduler des, the most requests in flight", kind=int)
    profile: str | None = option(None, "price from this measured profile (`python -m dexref profile`) instead of "
                                       "the roofline: its layer, exit-head, per-round host and transfer times; "
                                       "--gpu defaults to the catalog entry it was measured as")

    def resolve(self, trace_model: str, heads: str, where: str, layers: int | None = None,
                arch: dict | None = None) -> tuple[ModelSpec, cost.Hardware] | None:
        """(model, Hardware) to price on, or None without --gpu; `trace_model`, `heads`, `where` (what
        names the trace's model), `layers` (its depth) and `arch` (its meta.arch: the model when the
        catalog lacks it) come from the trace."""
        profile = None if self.profile is None else load_profile(self.profile)
        gpu = self.gpu if self.gpu is not None or profile is None else profile_gpu(profile)
        if gpu is None:
            given = [f for f in ("tp", "pp", "batch") if getattr(self, f) is not None]
            if given:
                raise UserError(f"--{given[0]}: needs --gpu")
            return None
        flag = "--model" if self.model else f"{where}: meta.model"
        tp, pp, batch = (1 if v is None else v for v in (self.tp, self.pp, self.batch))
        return hardware(self.model or trace_model, gpu, tp, pp, batch, model_flag=flag, heads=heads, where=where,
                        layers=layers, arch=None if self.model else arch, profile=profile)


def profile_gpu(profile: Profile) -> str:
    """The catalog GPU a profile prices as when --gpu is not given."""
    if profile.catalog_gpu is None:
        raise UserError(f"--profile {profile.path}: measured on {profile.device}, which names no catalog GPU "
                        f"(field catalog_gpu): name the one it is with --gpu")
    return profile.catalog_gpu


def catalog_model(model_name: str, model_flag: str = "--model", where: str | None = None,
                  layers: int | None = None, arch: dict | None = None) -> ModelSpec:
    """The model a trace of `layers` layers is priced as: the catalog's, or for a name the catalog lacks,
    the one `arch` (the trace's meta.arch) describes; one line naming the flag (or field) if there is no
    such model or it has another depth."""
    try:
        model = model_spec(model_name, arch, where or "trace")
    except UserError as e:  # with an arch, only the arch can be wrong, and its line names its field
        raise (e if arch is not None else UserError(f"{model_flag}: {e}")) from None
    if layers is not None and layers != model.layers:
        raise UserError(f"{model_flag}: {model.name} has {model.layers} layers in the catalog, but "
                        f"{where or 'the trace'} records {layers}")
    return model


def hardware(model_name: str, gpu_name: str, tp: int = 1, pp: int = 1, batch: int = 1,
             model_flag: str = "--model", heads: str = "lens", where: str | None = None,
             layers: int | None = None, arch: dict | None = None,
             profile: Profile | None = None) -> tuple[ModelSpec, cost.Hardware]:
    """Catalog model (priced with the trace's exit `heads`, its meta field) and checked hardware; an
    unknown name (and no `arch`), a model of other depth than the trace's `layers` or a configuration
    that cannot run is a UserError naming the flag (or the field of the trace `where`). A `profile`
    must be of the model's shape and of one device (tp 1)."""
    model = catalog_model(model_name, model_flag, where, layers, arch)
    try:
        model = with_heads(model, heads)
    except UserError as e:
        raise UserError(f"{where + ': ' if where else ''}meta.heads: {e}") from None
    try:
        gpu = get_gpu(gpu_name)
    except UserError as e:
        raise UserError(f"--gpu: {e}") from None
    if profile is not None:
        check_shape(profile, model)
        if tp != 1:
            raise UserError(f"--tp {tp}: the profile {profile.path} times one device; tensor parallelism is "
                            f"priced by the roofline only")
        gpu = replace(gpu, name=f"{gpu.name}@{Path(profile.path).name}")  # results say what priced them
    hw = cost.Hardware(gpu, tp=tp, pp=pp, batch=batch, profile=profile)
    cost.check_hardware(model, hw)
    return model, hw


def stage_sizes(L: int, pp: int) -> np.ndarray:
    """Layers per pipeline stage: contiguous, as even as possible, the larger stages first (the largest
    has ceil(L/pp) layers, which is what `cost.check_hardware` fits in memory)."""
    return np.array([L // pp + (i < L % pp) for i in range(pp)], np.int64)


def stage_first_layers(L: int, pp: int) -> np.ndarray:
    """The first layer (1-based) of every stage but the first: computing it means a transfer."""
    return np.cumsum(stage_sizes(L, pp))[:-1] + 1


def _batched(hist: np.ndarray, n: int) -> np.ndarray:
    """A rows histogram with every entry's rows multiplied by n (entry r moves to r*n)."""
    hist = np.asarray(hist)
    if n == 1 or hist.size == 0:
        return hist
    out = np.zeros((hist.size - 1) * n + 1, hist.dtype)
    out[::n] = hist
    return out


def transfer_seconds(model: ModelSpec, hw: cost.Hardware, tally: Tally) -> tuple[float, int]:
    """Pipeline point-to-point time and message count; (0, 0) on one stage."""
    if hw.pp == 1:
        return 0.0, 0
    first = stage_first_layers(model.layers, hw.pp)
    messages = int(tally.layer_loads[first].sum())
    rows = int(tally.layer_rows[first].sum()) * hw.batch
    # transfer_time is one latency plus bytes per row: sum it per message without listing messages
    latency = cost.transfer_time(model, hw, 0)
    per_row = cost.transfer_time(model, hw, 1) - latency
    return messages * latency + rows * per_row, messages


def price(tally: Tally, model: ModelSpec, hw: cost.Hardware) -> dict:
    """Simulated seconds to decode the replayed trace on `hw`, its parts, and tokens/s.

    tokens_per_s counts every member of a batch: batch x committed tokens / seconds.
    """
    ctx_per_row = tally.context_sum / tally.node_layers if tally.node_layers else 0.0
    priced = cost.price_counts(model, hw, _batched(tally.load_rows, hw.batch), ctx_per_row,
                               _batched(tally.head_rows, hw.batch), tally.rounds)
    parts = {p: priced[p] for p in cost.PARTS}
    parts["transfers"], messages = transfer_seconds(model, hw, tally)
    seconds = sum(parts.values())
    tokens = tally.tokens * hw.batch
    return {"sim_seconds": seconds, "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"),
            "parts": parts, "stage_transfers": messages, "extrapolated": extrapolated(tally, model, hw)}


def extrapolated(tally: Tally, model: ModelSpec, hw: cost.Hardware) -> list[str]:
    """What of this replay a profile prices outside its measured grid (empty without a profile)."""
    if hw.profile is None:
        return []
    rows = lambda hist: np.flatnonzero(np.asarray(hist)) * hw.batch  # noqa: E731
    ctx = tally.context_sum / tally.node_layers if tally.node_layers else None
    moved = hw.pp > 1 and tally.layer_rows[stage_first_layers(model.layers, hw.pp)].any()
    return hw.profile.extrapolated(rows(tally.load_rows), ctx, rows(tally.head_rows),
                                   [hw.batch] if moved and hw.profile.transfer_s is not None else [])


def priced_fields(tally: Tally, ar_tally: Tally, model: ModelSpec, hw: cost.Hardware) -> dict:
    """The result fields of a priced replay; speedup against `ar` on the same trace and hardware. With a
    profile, also where it came from and whether it was extrapolated (`profile_notes` says what)."""
    p, ar = price(tally, model, hw), price(ar_tally, model, hw)
    out = {"sim_seconds": p["sim_seconds"], "tokens_per_s": p["tokens_per_s"],
           "speedup_vs_ar": p["tokens_per_s"] / ar["tokens_per_s"]}
    return {**out, **profile_fields(hw, p["extrapolated"], ar["extrapolated"])}


def profile_fields(hw: cost.Hardware, notes: list[str], ar_notes: list[str]) -> dict:
    """With a profile: which one priced a result and whether it (or the AR baseline its speedup is
    taken against) lies beyond the measured grid; `profile_notes` says what. Empty without a profile."""
    if hw.profile is None:
        return {}
    notes = notes + [n for n in ar_notes if n not in notes]
    return {"profile": hw.profile.path, "profile_extrapolated": bool(notes), "profile_notes": notes}
