"""Trained exit heads (dexref/exits.py) on tiny random-weight models, float64: they change guesses only
(depth-L tokens and every policy's output stay AR's), save/load round-trips, training is deterministic
for a seed, and bad manifests, files and depths are one line on stderr with exit status 2."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dexref.assets.sources import sha256_file  # noqa: E402
from dexref import exits  # noqa: E402
from dexref import record as rec  # noqa: E402
from dexref.cli import main, parse_data  # noqa: E402
from dexref.engine import generate  # noqa: E402
from dexref.model import from_state, random_state  # noqa: E402
from dexref.testing import random_prompts, tiny_model, write_tiny_cache  # noqa: E402
from one_thread import one_thread  # noqa: E402, F401  (autouse fixture)
from dexsim.errors import UserError  # noqa: E402
from dexsim.core.registry import make_policy  # noqa: E402

NEW = 16



def strong_adapters(model, seed: int, depths=None) -> exits.Adapters:
    """Random adapters large enough to change most guesses (a stronger test than trained ones)."""
    L, D = model.args.n_layer, model.args.dim
    depths = tuple(range(1, L)) if depths is None else tuple(depths)
    g = torch.Generator().manual_seed(seed)
    A = {d: torch.randn(4, D, generator=g, dtype=torch.float64) for d in depths}
    B = {d: torch.randn(D, 4, generator=g, dtype=torch.float64) for d in depths}
    return exits.Adapters("strong", depths, A, B, {})


def tiny_train(model, seed: int = 0, steps: int = 6):
    prompts = random_prompts(seed, model.args.vocab, (3, 6))
    return exits.train_exits(model, prompts, list(range(1, model.args.n_layer)), rank=2, steps=steps, batch=8,
                             lr=1e-2, seed=seed, max_new_tokens=8, eos=None)


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_trained_heads_change_guesses_only(seed):
    model, _, a = tiny_model(seed, n_layer=4)
    heads = strong_adapters(model, seed)
    prompts = random_prompts(seed, a.vocab, (1, 5, 9))
    L = a.n_layer
    ar = generate(model, prompts, make_policy("ar", L), NEW).outputs
    depths = np.arange(1, L + 1)
    lens = rec.record(model, prompts, max_new_tokens=NEW, depths=depths, eos=None, batch=3)
    trained = rec.record(model, prompts, max_new_tokens=NEW, depths=depths, eos=None, batch=3, heads=heads)
    assert (trained["final"] == lens["final"]).all() and (trained["exit_tokens"][:, -1] == lens["final"]).all()
    assert (trained["exit_tokens"][:, :-1] != lens["exit_tokens"][:, :-1]).any()  # the guesses did change
    for policy in (make_policy("ar", L), make_policy("dex", L, explorers=4, buffer=6),
                   make_policy("dex", L, explorers=2, buffer=3, priority="align"),
                   make_policy("adaptive", L, threshold=0.3, buffer=4), make_policy("layerskip", L, exit=1, draft=3)):
        run = generate(model, prompts, policy, NEW, heads=heads)
        assert run.outputs == ar, policy.name
    bi = generate(model, prompts[1:2], make_policy("dex", L, explorers=3, buffer=4), NEW, heads=heads,
                  batch_invariant=True)
    assert bi.outputs == ar[1:2]


def test_trained_tiny_adapters_lossless_and_round_trip(tmp_path):
    model, _, a = tiny_model(1, n_layer=5)
    A, B, log = tiny_train(model)
    assert log["tokens"] == 16 and set(log["kl_final"]) == {str(d) for d in range(1, 5)}
    man = exits.save(tmp_path / "tiny-exits.json", model, A, B, model_name="tiny", training={"data": []})
    assert man["params"] == 4 * 2 * 2 * a.dim and man["depths"] == [1, 2, 3, 4]
    loaded = exits.load(tmp_path / "tiny-exits.json", model)
    assert loaded.heads == "trained:tiny-exits" and loaded.A[2].dtype == torch.float64
    for d in range(1, 5):
        assert torch.equal(loaded.A[d], A[d].double()) and torch.equal(loaded.B[d], B[d].double())
    prompts = random_prompts(7, a.vocab, (2, 7))
    ar = generate(model, prompts, make_policy("ar", a.n_layer), NEW).outputs
    run = generate(model, prompts, make_policy("dex", a.n_layer, explorers=3, buffer=4), NEW, heads=loaded)
    assert run.outputs == ar
    # a float32 copy of the same model takes the same adapters (the fingerprint is of float32 weights);
    # the same shape with other weights does not
    exits.load(tmp_path / "tiny-exits.json", from_state(a, random_state(a, seed=1, scale=2.0), torch.float32))
    with pytest.raises(UserError, match="other weights"):
        exits.load(tmp_path / "tiny-exits.json", from_state(a, random_state(a, seed=9), torch.float64))


def test_training_is_deterministic_for_a_seed():
    model, _, _ = tiny_model(3, n_layer=3)
    A1, B1, log1 = tiny_train(model, seed=4)
    A2, B2, log2 = tiny_train(model, seed=4)
    A3, B3, _ = tiny_train(model, seed=5)
    assert all(torch.equal(A1[d], A2[d]) and torch.equal(B1[d], B2[d]) for d in A1)
    assert log1["kl_final"] == log2["kl_final"]
    assert not all(torch.equal(B1[d], B3[d]) for d in B1)
    assert any(B1[d].abs().sum() > 0 for d in B1)  # it did train (B starts at zero)


def test_exits_without_a_trained_head_are_refused():
    model, _, a = tiny_model(0, n_layer=4)
    heads = strong_adapters(model, 0, depths=(2,))
    with pytest.raises(UserError, match="depth 1 has no trained exit head"):
        generate(model, [[1, 2]], make_policy("dex", 4, exits=np.array([1, 4])), 2, heads=heads)
    generate(model, [[1, 2]], make_policy("dex", 4, exits=np.array([2, 4])), 2, heads=heads)


# ---------------------------------------------------------------------------- the command line

PROMPTS = ["def f(x):\n", "x = (a + b)", "a, b = b, a\n", "print(x)\n", "def g():\n", "y = x * x\n"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A tiny cached model and a tiny `humaneval` prompt file (no registry needed)."""
    monkeypatch.setenv("DEXREF_CACHE", str(tmp_path / "cache"))
    write_tiny_cache(tmp_path / "cache" / "tiny", seed=4, n_layer=4)
    data = tmp_path / "cache" / "data" / "humaneval"
    data.mkdir(parents=True)
    with gzip.open(data / "HumanEval.jsonl.gz", "wt") as f:
        for i, p in enumerate(PROMPTS):
            f.write(json.dumps({"task_id": f"HumanEval/{i}", "prompt": p}) + "\n")
    return tmp_path


def ok(capsys, *argv) -> dict:
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def fails(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def train_cli(capsys, out, *extra) -> dict:
    return ok(capsys, "train-exits", "--model", "tiny", "--data", "humaneval[2:6]", "--depths", "1,3",
              "--rank", "2", "--steps", "4", "--batch", "8", "--max-new-tokens", "6", "--out", str(out), *extra)


def test_cli_train_generate_record(cache, capsys):
    from dexsim.traces.format import load_trace

    man = cache / "tiny-exits.json"
    out = train_cli(capsys, man, "--eval", "humaneval[0:2]")
    m = json.loads(man.read_text())
    assert out["depths"] == m["depths"] == [1, 3] and out["params"] == 2 * m["params_per_exit"]
    assert m["training"]["data"][0]["ids"] == [f"HumanEval/{i}" for i in range(2, 6)]
    assert m["sha256"] == sha256_file(cache / "tiny-exits.safetensors")
    assert set(out["held_out"]) == {"data", "lens", "lens_at_trained", "trained"}
    assert out["held_out"]["lens_at_trained"]["depths"] == out["held_out"]["trained"]["depths"] == [1, 3, 4]
    assert out["held_out"]["lens"]["depths"] == [1, 2, 3, 4]
    assert train_cli(capsys, cache / "again.json")["sha256"] == m["sha256"]  # deterministic for a seed
    base = ["generate", "--model", "tiny", "--prompt", "def f(x):", "--max-new-tokens", "10", "--json"]
    ar = ok(capsys, *base, "--policy", "ar")
    for flags in (["--policy", "dex", "-k", "3", "--buffer", "4"], ["--policy", "dex", "--exits", "1,3", "--dtype", "float64"],
                  ["--policy", "adaptive", "--threshold", "0.2", "--batch-invariant"]):
        got = ok(capsys, *base, *flags, "--heads", f"trained:{man}")
        assert got["tokens"] == ar["tokens"] and got["heads"] == "trained:tiny-exits", flags
    trace = cache / "t.npz"
    ok(capsys, "record", "--model", "tiny", "--dataset", "humaneval", "--limit", "2", "--max-new-tokens", "6",
       "--heads", f"trained:{man}", "--out", str(trace))
    t = load_trace(str(trace))
    assert t.meta["heads"] == "trained:tiny-exits" and t.depths.tolist() == [1, 3, 4]
    assert t.meta["recorder"]["params"]["heads"]["held_out"] is True
    ok(capsys, "record", "--model", "tiny", "--dataset", "humaneval", "--limit", "2", "--max-new-tokens", "6",
       "--out", str(cache / "lens.npz"))
    assert (load_trace(str(cache / "lens.npz")).final == t.final).all()


def test_record_refuses_the_adapters_training_prompts(cache, capsys):
    man = cache / "tiny-exits.json"
    train_cli(capsys, man)  # trained on HumanEval/2..5
    out = cache / "seen.npz"
    err = fails(capsys, "record", "--model", "tiny", "--dataset", "humaneval", "--limit", "3", "--max-new-tokens", "2",
                "--heads", f"trained:{man}", "--out", str(out))
    assert "1 recorded prompts (first HumanEval/2)" in err and "training data" in err and "tiny-exits" in err
    assert not out.exists()
    ok(capsys, "record", "--model", "tiny", "--dataset", "humaneval", "--limit", "3", "--max-new-tokens", "2",
       "--out", str(out))  # the lens was trained on nothing


def test_data_spec_names_a_template_per_part():
    assert parse_data("humaneval[1:3]@chat, mtbench,sharegpt[:4]@raw") == [
        ("humaneval", 1, 3, "chat"), ("mtbench", None, None, None), ("sharegpt", None, 4, "raw")]
    with pytest.raises(UserError, match="unknown template 'bogus'"):
        parse_data("humaneval[1:3]@bogus")
    with pytest.raises(UserError, match="expected SET"):
        parse_data("humaneval[1]@chat")


def test_cli_bad_adapters_are_one_line(cache, capsys):
    man = cache / "tiny-exits.json"
    train_cli(capsys, man)
    gen = ["generate", "--model", "tiny", "--prompt", "ab", "--max-new-tokens", "3", "--json"]
    assert "no trained exit head" in fails(capsys, *gen, "--heads", f"trained:{man}", "--exits", "2,4")
    assert "no trained exit head" in fails(capsys, "record", "--model", "tiny", "--dataset", "humaneval",
                                           "--depths", "every:1", "--heads", f"trained:{man}", "--out", str(cache / "x.npz"))
    fails(capsys, *gen, "--heads", "trained:")
    fails(capsys, *gen, "--heads", "bogus")
    fails(capsys, *gen, "--heads", f"trained:{cache / 'nosuch.json'}")
    write_tiny_cache(cache / "cache" / "other", seed=5, n_layer=4)  # another model
    err = fails(capsys, *gen[:2], "other", *gen[3:], "--heads", f"trained:{man}")
    assert "other weights" in err or "not this model" in err
    m = json.loads(man.read_text())
    bad = dict(m, arch={**m["arch"], "layers": 9})
    (cache / "arch.json").write_text(json.dumps(bad))
    assert "not this model" in fails(capsys, *gen, "--heads", f"trained:{cache / 'arch.json'}")
    bad = dict(m, depths=[1, 4])  # depth L has no adapter
    (cache / "depths.json").write_text(json.dumps(bad))
    assert "depths" in fails(capsys, *gen, "--heads", f"trained:{cache / 'depths.json'}")
    (cache / "broken.json").write_text("{not json")
    assert "not a JSON" in fails(capsys, *gen, "--heads", f"trained:{cache / 'broken.json'}")
    del m["sha256"]
    (cache / "partial.json").write_text(json.dumps(m))
    assert "'sha256' missing" in fails(capsys, *gen, "--heads", f"trained:{cache / 'partial.json'}")
    data = bytearray((cache / "tiny-exits.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (cache / "tiny-exits.safetensors").write_bytes(bytes(data))
    assert "corrupt" in fails(capsys, *gen, "--heads", f"trained:{man}")
    (cache / "tiny-exits.safetensors").unlink()
    assert "missing" in fails(capsys, *gen, "--heads", f"trained:{man}")


@pytest.mark.parametrize("extra", [
    ["--depths", "0,2"], ["--depths", "1,99"], ["--depths", "4"], ["--rank", "0"], ["--steps", "0"], ["--lr", "0"],
    ["--data", "nosuch[0:2]"], ["--data", "humaneval[2:x]"], ["--data", "humaneval[9:12]"],
    ["--eval", "humaneval[3:4]"], ["--out", "/nonexistent/x.json"], ["--out", "x.safetensors"],
])
def test_cli_train_bad_input(cache, capsys, extra):
    argv = ["train-exits", "--model", "tiny", "--data", "humaneval[2:6]", "--depths", "1,2", "--rank", "2",
            "--steps", "2", "--batch", "4", "--max-new-tokens", "4", "--out", str(cache / "e.json")]
    for i in range(0, len(extra), 2):
        j = argv.index(extra[i]) if extra[i] in argv else None
        if j is None:
            argv += extra[i: i + 2]
        else:
            argv[j + 1] = extra[i + 1]
    fails(capsys, *argv)


# ---------------------------------------------------------------------------- the real model

ADAPTERS = "traces/adapters/smollm2-135m-exits-r64.json"


@pytest.fixture(scope="module")
def real():
    """SmolLM2-135M in float64 and two short HumanEval prompts (skipped where the model cannot be had)."""
    from pathlib import Path

    from dexref.assets.prompts import load_prompts
    from dexref.assets.fetch import require_model
    from dexref.model import load_cached
    from dexref.assets.tokenizer import Tok

    try:
        folder = require_model("smollm2-135m")
        rows = load_prompts("humaneval", 2)
    except UserError as e:
        pytest.skip(str(e))
    model, _ = load_cached(folder, torch.float64)
    tok = Tok(folder)
    return model, folder, [tok.encode(r["text"])[:24] for r in rows], Path(__file__).resolve().parents[2] / ADAPTERS


def test_real_model_committed_adapters_are_lossless(real):
    """The committed adapters load onto the real model (fingerprint, sha256), and dex reading them at
    every trained depth gives transformers' greedy tokens in float64 (tiny models test every policy)."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from dexref.hf import hf_greedy, hf_model

    model, folder, prompts, manifest = real
    heads = exits.load(manifest, model)
    a, new = model.args, 8
    assert heads.depths == tuple(range(3, 30, 3)) and heads.heads == "trained:smollm2-135m-exits-r64"
    hf = hf_model(a, load_file(str(folder / "model.safetensors")), torch.float64)
    ref = [hf_greedy(hf, p, new, a.eos) for p in prompts]
    del hf
    policy = make_policy("dex", a.n_layer, exits=exits.exit_depths(heads, a.n_layer), explorers=4, buffer=6)
    run = generate(model, prompts, policy, new, eos=a.eos, heads=heads)
    assert run.outputs == ref
    assert run.counters()["head_evals"] > 2 * new  # it did read the trained exits
