"""The model and GPU catalogs: data files in `dexsim/specs/data/`, read into frozen dataclasses."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from dexsim.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int
    tied_embeddings: bool
    dtype: str
    bytes_per_weight: float
    source: str
    # Weights one exit-head read adds before the shared head: 0 for the logit lens, an adapter's
    # parameters with trained exit heads (`with_heads`, dexsim/specs/data/exit_heads.json).
    head_adapter_params: int = 0

    def arch(self) -> dict:
        """The `arch` object of a trace's meta (DESIGN.md section 5)."""
        keys = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "params", "dtype")
        return {k: asdict(self)[k] for k in keys}


@lru_cache(maxsize=None)
def _load(filename: str) -> dict:
    text = (Path(__file__).parent / "data" / filename).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def models() -> dict[str, ModelSpec]:
    return {name: ModelSpec(name=name, **entry) for name, entry in _load("models.json").items()}


def get_model(name: str) -> ModelSpec:
    catalog = models()
    if name not in catalog:
        raise UserError(f"unknown model {name!r} (known: {', '.join(sorted(catalog))})")
    return catalog[name]


DTYPE_BYTES = {"float64": 8, "fp64": 8, "float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


def spec_from_arch(name: str, arch: dict, where: str = "trace") -> ModelSpec:
    """The ModelSpec of a model outside the catalog, from a trace's `meta.arch` (a checkpoint recorded
    with `dexref record --model PATH`): layers, hidden, intermediate, heads, kv_heads, vocab, params and
    dtype, with head_dim (default hidden / heads), bytes_per_weight (default: the dtype's) and
    tied_embeddings (default false) where given. A missing or bad field is one line naming it."""
    def positive(key, default=None):
        v = arch.get(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise UserError(f"{where}: meta.arch.{key}: {v!r} is not a positive number "
                            f"(needed to price model {name!r}, which is not in the catalog)")
        return v

    if not isinstance(arch, dict):
        raise UserError(f"{where}: meta.arch: not a JSON object")
    dtype = arch.get("dtype")
    bpw = arch.get("bytes_per_weight", DTYPE_BYTES.get(dtype))
    if bpw is None:
        raise UserError(f"{where}: meta.arch.dtype: {dtype!r} is unknown and there is no bytes_per_weight "
                        f"(needed to price model {name!r}, which is not in the catalog; known dtypes: "
                        f"{', '.join(DTYPE_BYTES)})")
    ints = {k: int(positive(k)) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "params")}
    return ModelSpec(name=name, **ints, head_dim=int(positive("head_dim", ints["hidden"] // ints["heads"])),
                     tied_embeddings=bool(arch.get("tied_embeddings", False)), dtype=str(dtype),
                     bytes_per_weight=float(positive("bytes_per_weight", bpw)), source=f"meta.arch of {where}")


def model_spec(name: str, arch: dict | None = None, where: str = "trace") -> ModelSpec:
    """The catalog's model `name`, or, for a name the catalog does not hold, the one `arch` describes."""
    if name in models() or arch is None:
        return get_model(name)
    return spec_from_arch(name, arch, where)


# --- exit heads -------------------------------------------------------------------------------------

LENS = "lens"
TRAINED = "trained:"


def exit_heads() -> dict[str, dict]:
    """Trained exit heads by manifest name (`dexref train-exits`): their model, shape and parameters."""
    return dict(_load("exit_heads.json"))


def adapter_params(entry: dict, hidden: int) -> int:
    """Parameters of one exit adapter of `entry`'s kind at width `hidden` (A [r, D] and B [D, r])."""
    if entry["kind"] != "lowrank-residual":
        raise UserError(f"exit_heads.json: unknown adapter kind {entry['kind']!r}")
    return 2 * entry["rank"] * hidden


def with_heads(model: ModelSpec, heads: str) -> ModelSpec:
    """The model priced with a trace's exit heads (its meta `heads`): the lens as is; trained heads add
    their adapter's parameters to every head read. On another model than the adapters' own (a replay
    mapped by relative depth) the same adapter shape at that model's width is charged."""
    if heads == LENS:
        return model
    name = heads.removeprefix(TRAINED)
    known = exit_heads()
    if not heads.startswith(TRAINED) or name not in known:
        raise UserError(f"heads {heads!r}: unknown (lens, or trained:NAME with NAME in dexsim/specs/data/exit_heads.json: "
                        f"{', '.join(sorted(known))})")
    entry = known[name]
    params = entry["params_per_exit"] if entry["model"] == model.name else adapter_params(entry, model.hidden)
    return replace(model, head_adapter_params=params)


# --- GPUs -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interconnect:
    kind: str            # "nvlink", "pcie" or "none"
    bandwidth: float     # B/s, per GPU per direction
    latency_s: float     # one hop (one ring step or one point-to-point send)


@dataclass(frozen=True)
class GPUSpec:
    """One device and the achieved-efficiency calibration it is priced with."""
    name: str
    peak_flops: float            # dense bf16 (fp32 for a CPU) FLOP/s, datasheet or measured
    memory_bandwidth: float      # B/s, datasheet or measured
    memory_bytes: float
    bandwidth_efficiency: float  # achieved / memory_bandwidth for decode kernels
    compute_efficiency: float    # achieved / peak_flops for large matmuls
    kernels_per_layer: int       # kernel launches of one layer step (one exit-head group counts as a layer)
    kernel_overhead_s: float     # time per kernel not spent moving bytes (launch gap, ramp-up, tail)
    collective_overhead_s: float # launch + synchronisation of one TP collective
    interconnect: Interconnect
    calibration: str             # name of the calibration class in gpus.json
    source: str
    round_overhead_s: float = 0.0  # the host's control of one lattice-core round (its class says where from)
    exit_overhead_s: float = 0.0  # ... and of one exit read
    memory_compute_overlap: bool = True  # a step takes max(memory, compute) (True) or their sum (False)
    kv_prefix_shared: bool = False  # rows of one sequence at a layer read its KV prefix once (tree attention)
    head_refill: float = 0.0  # layer steps' worth of time an exit-head group adds to the layer calls after it

    @property
    def layer_overhead_s(self) -> float:
        return self.kernels_per_layer * self.kernel_overhead_s


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dexsim"


def cpu_profile_path() -> Path:
    """Where `python -m dexsim calibrate` writes the measured `cpu-local` profile by default."""
    return _user_cache_dir() / "cpu-local.json"


# A GPU entry's numbers: (smallest allowed, whether 0 itself is allowed); every one finite.
_GPU_NUMBERS = {"peak_flops": False, "memory_bandwidth": False, "memory_bytes": False,
                "bandwidth_efficiency": False, "compute_efficiency": False, "kernels_per_layer": True,
                "kernel_overhead_s": True, "collective_overhead_s": True, "round_overhead_s": True,
                "exit_overhead_s": True, "head_refill": True}
_LINK_NUMBERS = {"bandwidth": True, "latency_s": True}
_GPU_FLAGS = ("memory_compute_overlap", "kv_prefix_shared")


def _number_problem(key: str, value, zero_ok: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero_ok):
        return f"field {key}: {value!r} is not a {'non-negative' if zero_ok else 'positive'} number"
    return None


def _entry_problem(entry: dict) -> str | None:
    """What is wrong with the fields a GPU entry (or a cpu-local profile) holds, or None."""
    for key, zero_ok in _GPU_NUMBERS.items():
        if key in entry and (problem := _number_problem(key, entry[key], zero_ok)):
            return problem
    for key in _GPU_FLAGS:
        if key in entry and not isinstance(entry[key], bool):
            return f"field {key}: {entry[key]!r} is not true or false"
    if "interconnect" in entry:
        link = entry["interconnect"]
        if not isinstance(link, dict) or not isinstance(link.get("kind"), str):
            return f"field interconnect: {link!r} is not an object with a kind"
        for key, zero_ok in _LINK_NUMBERS.items():
            if (problem := _number_problem(f"interconnect.{key}", link.get(key), zero_ok)):
                return problem
    return None


def _read_cpu_overlay(path: Path) -> dict:
    """The cpu-local fields of the measured profile at `path` (`calibrate`'s or `dexref profile`'s; a
    flat entry of gpus.json fields, as older versions wrote, is read as it is)."""
    from dexsim.specs.profile import FORMAT, rates_entry

    if not path.is_file():
        return {}
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: unreadable cpu-local profile ({e}); rerun `python -m dexsim calibrate`")
    if not isinstance(entry, dict):
        raise UserError(f"{path}: cpu-local profile must be a JSON object")
    if entry.get("format") == FORMAT:
        try:
            entry = rates_entry(entry)
        except UserError as e:
            raise UserError(f"{path}: cpu-local profile: {e}; rerun `python -m dexsim calibrate`") from None
    problem = _entry_problem(entry)
    if problem:
        raise UserError(f"{path}: cpu-local profile: {problem}; rerun `python -m dexsim calibrate`")
    return entry


def _gpu_from_entry(name: str, entry: dict, classes: dict) -> GPUSpec:
    cls_name = entry.get("calibration")
    if cls_name not in classes:
        raise UserError(f"gpus.json: GPU {name!r} names unknown calibration {cls_name!r}")
    # the calibration class gives shared efficiencies; a GPU entry may override them (a measured profile does)
    merged = {k: v for k, v in classes[cls_name].items() if k != "source"}
    merged.update(entry)
    if (problem := _entry_problem({k: merged[k] for k in _GPU_FLAGS if k in merged})):
        raise UserError(f"gpus.json: GPU {name!r}: {problem}")
    fields = {f for f in GPUSpec.__dataclass_fields__ if f not in ("name", "interconnect")}
    try:
        return GPUSpec(name=name, interconnect=Interconnect(**merged["interconnect"]),
                       **{k: merged[k] for k in fields if k in merged})
    except (KeyError, TypeError) as e:
        raise UserError(f"gpus.json: GPU {name!r}: bad or missing field ({e})")


def gpu_calibrations() -> dict[str, dict]:
    """The calibration classes (shared achieved efficiencies and overheads, each with its derivation)."""
    return dict(_load("gpus.json")["calibration"])


def gpus() -> dict[str, GPUSpec]:
    """The bundled GPU catalog; a measured `cpu-local` profile in the user cache overrides the bundled one."""
    data = _load("gpus.json")
    entries = dict(data["gpus"])
    overlay = _read_cpu_overlay(cpu_profile_path())
    if overlay:
        entries["cpu-local"] = {**entries["cpu-local"], **overlay}
    return {name: _gpu_from_entry(name, entry, data["calibration"]) for name, entry in entries.items()}


def get_gpu(name: str) -> GPUSpec:
    catalog = gpus()
    if name not in catalog:
        raise UserError(f"unknown GPU {name!r} (known: {', '.join(sorted(catalog))})")
    return catalog[name]


def memory_fit() -> dict:
    """What `check_hardware` reserves besides the weights (KV tokens, runtime fraction), with its source."""
    return dict(_load("gpus.json")["memory_fit"])


def published_measurements() -> list[dict]:
    """Published decode measurements: the calibration point and the cross-checks, each with its source."""
    return [dict(m) for m in _load("gpus.json")["published"]]
