"""The model (and GPU) catalogs: data files in `dexsim/data/`, read into dataclasses."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources

from .errors import UserError


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

    def arch(self) -> dict:
        """The `arch` object of a trace's meta (DESIGN.md section 5)."""
        keys = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "params", "dtype")
        return {k: asdict(self)[k] for k in keys}


@lru_cache(maxsize=None)
def _load(filename: str) -> dict:
    text = resources.files("dexsim").joinpath("data", filename).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def models() -> dict[str, ModelSpec]:
    return {name: ModelSpec(name=name, **entry) for name, entry in _load("models.json").items()}


def get_model(name: str) -> ModelSpec:
    catalog = models()
    if name not in catalog:
        raise UserError(f"unknown model {name!r} (known: {', '.join(sorted(catalog))})")
    return catalog[name]
