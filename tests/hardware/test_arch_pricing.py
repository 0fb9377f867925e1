"""A trace of a model outside the catalog (a checkpoint recorded by `dexref record --model PATH`) is
priced from its meta.arch: the same figures as the catalog entry it copies, and one line naming the
field when meta.arch cannot describe a model."""
from __future__ import annotations

import pytest

from dexsim.errors import UserError
from dexsim.hardware import pricing
from dexsim.specs.catalog import get_model, model_spec, spec_from_arch


def _arch_of(name: str) -> dict:
    m = get_model(name)
    return {**m.arch(), "tied_embeddings": m.tied_embeddings, "bytes_per_weight": m.bytes_per_weight}


@pytest.mark.parametrize("name", ["llama2-7b", "smollm2-135m"])
def test_a_copied_arch_prices_like_the_catalog(name):
    spec = model_spec("my-checkpoint", _arch_of(name))
    ref = get_model(name)
    assert spec.name == "my-checkpoint"
    for key in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "params",
                "tied_embeddings", "bytes_per_weight"):
        assert getattr(spec, key) == getattr(ref, key), key
    mine = pricing.hardware("my-checkpoint", "h100-sxm5-80gb", arch=_arch_of(name))
    theirs = pricing.hardware(name, "h100-sxm5-80gb")
    assert mine[1] == theirs[1]


def test_bytes_per_weight_from_the_dtype_and_defaults():
    arch = {k: v for k, v in _arch_of("llama2-7b").items() if k not in ("bytes_per_weight", "head_dim")}
    assert spec_from_arch("x", {**arch, "dtype": "bfloat16"}).bytes_per_weight == 2
    assert spec_from_arch("x", {**arch, "dtype": "float32"}).bytes_per_weight == 4
    assert spec_from_arch("x", arch).head_dim == 128
    assert model_spec("llama2-7b", {**arch, "layers": 3}).layers == 32  # a catalog name keeps the catalog's


@pytest.mark.parametrize("change, field", [({"kv_heads": 0}, "meta.arch.kv_heads"), ({"hidden": "4k"}, "meta.arch.hidden"),
                                           ({"dtype": "int3"}, "meta.arch.dtype: 'int3'"),
                                           ({"intermediate": None}, "meta.arch.intermediate")])
def test_a_bad_arch_is_one_line_naming_the_field(change, field):
    arch = {k: v for k, v in _arch_of("llama2-7b").items() if k != "bytes_per_weight"}
    with pytest.raises(UserError, match=field) as e:
        spec_from_arch("x", {**arch, **change}, "t.npz")
    assert "\n" not in str(e.value) and str(e.value).startswith("t.npz: ")
    with pytest.raises(UserError, match="unknown model 'x'"):
        model_spec("x")
