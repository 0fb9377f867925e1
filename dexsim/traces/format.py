"""Per-token depth traces (DESIGN.md section 5): the `.npz` format, its validation, load and save.

A trace holds, for every committed token of every sequence, the exit token and its confidence at each
recorded depth on the true path. That is all a replay needs. Every reader and writer goes through
`validate`, so a bad file is rejected with one line naming the file and the field.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from dexsim.config import write_atomically
from dexsim.specs.catalog import get_model
from dexsim.errors import UserError

FORMAT = "dex-trace/1"
# The six arrays, in checksum order, with their on-disk dtypes (little-endian).
ARRAYS = {
    "depths": np.dtype("<i2"),
    "final": np.dtype("<i4"),
    "exit_tokens": np.dtype("<i4"),
    "exit_conf": np.dtype("<f2"),
    "seq_offsets": np.dtype("<i8"),
    "prompt_len": np.dtype("<i4"),
}
META_KEYS = ("format", "model", "arch", "heads", "dataset", "template", "sampling", "synthetic",
             "recorder", "created", "sha256")
ARCH_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "params", "dtype")


@dataclass
class Trace:
    depths: np.ndarray
    final: np.ndarray
    exit_tokens: np.ndarray
    exit_conf: np.ndarray
    seq_offsets: np.ndarray
    prompt_len: np.ndarray
    meta: dict
    path: str | None = None

    @property
    def L(self) -> int:
        return int(self.depths[-1])

    @property
    def n_seqs(self) -> int:
        return len(self.prompt_len)

    @property
    def n_tokens(self) -> int:
        return len(self.final)

    @property
    def vocab(self) -> int:
        return int(self.meta["arch"]["vocab"])

    def seq_slice(self, s: int) -> slice:
        """Rows of sequence s in `final`, `exit_tokens` and `exit_conf`."""
        return slice(int(self.seq_offsets[s]), int(self.seq_offsets[s + 1]))


def make_meta(model_name: str, *, heads: str, dataset: str, template: str, sampling: dict,
              synthetic: bool, recorder: dict) -> dict:
    """A complete meta object; `sha256` is filled by `save_trace` (or by whoever builds the arrays)."""
    return {
        "format": FORMAT,
        "model": model_name,
        "arch": get_model(model_name).arch(),
        "heads": heads,
        "dataset": dataset,
        "template": template,
        "sampling": sampling,
        "synthetic": synthetic,
        "recorder": recorder,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": "",
    }


def trace_checksum(trace: Trace) -> str:
    """sha256 of the raw bytes of the six arrays concatenated in format order."""
    h = hashlib.sha256()
    for name, dtype in ARRAYS.items():
        h.update(np.ascontiguousarray(getattr(trace, name), dtype=dtype).tobytes())
    return h.hexdigest()


def _fail(trace: Trace, field: str, problem: str):
    raise UserError(f"{trace.path or 'trace'}: {field}: {problem}")


# Each meta field's JSON type; `model` names a catalog model or, for a trace dexref recorded on a model
# outside the catalog, that model (its arch is then the trace's own).
META_TYPES = {"format": str, "model": str, "arch": dict, "heads": str, "dataset": str, "template": str,
              "sampling": dict, "synthetic": bool, "recorder": dict, "created": str, "sha256": str}
# Bounds of the arch sizes that index arrays: at least 1, and depths are stored as int16 and tokens as
# int32. The other sizes are the recorded model's own (the catalog prices a replay): non-negative and
# exact in JSON (a double).
ARCH_MAX = {"layers": np.iinfo(ARRAYS["depths"]).max, "vocab": np.iinfo(ARRAYS["final"]).max}
JSON_INT_MAX = 2**53
JSON_NAMES = {str: "a string", dict: "a JSON object", bool: "true/false"}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # a `true` here is a broken writer, not a size


def heads_ok(heads: str) -> bool:
    """An exit-head kind a trace may record: the logit lens, or trained heads by name (the catalog's
    exit_heads.json is needed only to price them)."""
    return heads == "lens" or (heads.startswith("trained:") and heads != "trained:")


def _validate_meta(trace: Trace):
    meta = trace.meta
    if not isinstance(meta, dict):
        _fail(trace, "meta", "not a JSON object")
    for key in META_KEYS:
        if key not in meta:
            _fail(trace, "meta", f"missing key {key!r}")
    for key, kind in META_TYPES.items():
        if not isinstance(meta[key], kind):
            _fail(trace, f"meta.{key}", f"{meta[key]!r} is not {JSON_NAMES[kind]}")
    if meta["format"] != FORMAT:
        _fail(trace, "meta.format", f"{meta['format']!r}, expected {FORMAT!r}")
    if not meta["model"].strip():
        _fail(trace, "meta.model", "empty")
    if not heads_ok(meta["heads"]):
        _fail(trace, "meta.heads", f"{meta['heads']!r}: expected lens or trained:NAME")
    arch = meta["arch"]
    for key in ARCH_KEYS:
        if key not in arch:
            _fail(trace, "meta.arch", f"missing key {key!r}")
    for key in ARCH_KEYS:
        if key == "dtype":
            if not isinstance(arch[key], str):
                _fail(trace, "meta.arch.dtype", f"{arch[key]!r} is not a string")
            continue
        low, high = (1, ARCH_MAX[key]) if key in ARCH_MAX else (0, JSON_INT_MAX)
        if not _is_int(arch[key]) or not low <= arch[key] <= high:
            _fail(trace, f"meta.arch.{key}", f"{arch[key]!r} is not an integer in [{low}, {high}]")


def _validate_shapes(trace: Trace):
    ndims = {"depths": 1, "final": 1, "exit_tokens": 2, "exit_conf": 2, "seq_offsets": 1, "prompt_len": 1}
    for name, dtype in ARRAYS.items():
        a = getattr(trace, name)
        if not isinstance(a, np.ndarray):
            _fail(trace, name, f"not an array ({type(a).__name__})")
        if a.dtype != dtype:
            _fail(trace, name, f"dtype {a.dtype.str}, expected {dtype.str}")
        if a.ndim != ndims[name]:
            _fail(trace, name, f"{a.ndim}-d, expected {ndims[name]}-d")
    n, d, s = len(trace.final), len(trace.depths), len(trace.seq_offsets) - 1
    if d == 0:
        _fail(trace, "depths", "empty")
    if s < 1:
        _fail(trace, "seq_offsets", f"length {s + 1}: no sequences")
    expected = {"exit_tokens": (n, d), "exit_conf": (n, d), "prompt_len": (s,)}
    for name, shape in expected.items():
        if getattr(trace, name).shape != shape:
            _fail(trace, name, f"shape {getattr(trace, name).shape}, expected {shape} "
                               f"for D={d} depths, N={n} tokens, S={s} sequences")


def _validate_values(trace: Trace):
    depths, L, vocab = trace.depths, trace.meta["arch"]["layers"], trace.meta["arch"]["vocab"]
    if depths[0] < 1:
        _fail(trace, "depths", f"depth {depths[0]} < 1")
    if np.any(np.diff(depths) <= 0):
        _fail(trace, "depths", "not strictly increasing")
    if depths[-1] != L:
        _fail(trace, "depths", f"last depth {depths[-1]} != meta.arch.layers {L}")
    for name in ("final", "exit_tokens"):
        a = getattr(trace, name)
        if a.size and (a.min() < 0 or a.max() >= vocab):
            _fail(trace, name, f"token out of range [0, {vocab}): min {a.min()}, max {a.max()}")
    bad = np.flatnonzero(trace.exit_tokens[:, -1] != trace.final)
    if bad.size:
        _fail(trace, "exit_tokens", f"last depth differs from final at {bad.size} rows (first: row {bad[0]})")
    conf = trace.exit_conf
    if not np.all(np.isfinite(conf)):
        _fail(trace, "exit_conf", "NaN or inf")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        _fail(trace, "exit_conf", f"outside [0, 1]: min {conf.min()}, max {conf.max()}")
    offsets = trace.seq_offsets
    if offsets[0] != 0:
        _fail(trace, "seq_offsets", f"starts at {offsets[0]}, expected 0")
    steps = np.diff(offsets)
    if np.any(steps < 0):
        _fail(trace, "seq_offsets", "decreasing")
    if np.any(steps == 0):
        _fail(trace, "seq_offsets", f"sequence {np.flatnonzero(steps == 0)[0]} is empty")
    if offsets[-1] != len(trace.final):
        _fail(trace, "seq_offsets", f"ends at {offsets[-1]}, expected N={len(trace.final)}")
    if np.any(trace.prompt_len < 1):
        _fail(trace, "prompt_len", f"value {trace.prompt_len.min()} < 1")


def validate(trace: Trace):
    """Raise UserError (one line: file and field) unless the trace is well-formed and its checksum matches."""
    _validate_meta(trace)
    _validate_shapes(trace)
    _validate_values(trace)
    if trace.meta["sha256"] != trace_checksum(trace):
        _fail(trace, "meta.sha256", "checksum mismatch (arrays changed or file corrupt)")


def _read_meta(trace_path: str, raw: np.ndarray) -> dict:
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise UserError(f"{trace_path}: meta: expected a 0-d unicode array, "
                        f"got dtype {raw.dtype.str} shape {raw.shape}")
    try:
        return json.loads(str(raw[()]))
    except json.JSONDecodeError as e:
        raise UserError(f"{trace_path}: meta: not JSON ({e.msg} at char {e.pos})") from None
    except RecursionError:
        raise UserError(f"{trace_path}: meta: JSON nested too deeply") from None


def _read_arrays(path: str) -> dict:
    not_npz = UserError(f"{path}: file: not a readable npz archive (not a zip, truncated or corrupt)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError):
        raise not_npz from None
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy array
        raise not_npz
    arrays = {}
    with npz:
        for field in (*ARRAYS, "meta"):
            if field not in npz.files:
                raise UserError(f"{path}: {field}: missing array")
            try:
                arrays[field] = npz[field]
            # zipfile raises RuntimeError for a member flagged encrypted, NotImplementedError for an
            # unknown compression method: damage too
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
                    NotImplementedError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise UserError(f"{path}: {field}: unreadable, truncated or corrupt ({reason})") from None
    return arrays


def load_trace(path: str | os.PathLike) -> Trace:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: file: no such file")
    arrays = _read_arrays(path)
    meta = _read_meta(path, arrays.pop("meta"))
    trace = Trace(**arrays, meta=meta, path=path)
    validate(trace)
    return trace


def save_trace(trace: Trace, path: str | os.PathLike):
    """Fill meta `format` and `sha256`, validate, and write atomically (a reader never sees half a file)."""
    path = os.fspath(path)
    trace.meta["format"] = FORMAT
    trace.meta["sha256"] = trace_checksum(trace)
    validate(trace)
    arrays = {name: np.ascontiguousarray(getattr(trace, name), dtype=dt) for name, dt in ARRAYS.items()}
    write_atomically(path, lambda f: np.savez_compressed(f, **arrays, meta=np.array(json.dumps(trace.meta))))
