"""A sweep's result files: DIR/sweep.jsonl and DIR/sweep.csv as each replay's rows are ready (whole
lines in one write, flushed and fsynced, jsonl first), DIR/sweep.json at the end.

Every row carries a `key` column (the row key), so `--resume` skips rows already there; a sweep killed
at any point and resumed ends with exactly the rows of an uninterrupted one. On resume the jsonl file
is the record (a torn last line is dropped) and the csv is rebuilt from it. At the end the jsonl and
csv files are rewritten in grid order and sweep.json (one JSON array) is written, each
write-temp-then-rename, so the files do not depend on --jobs, on finishing order or on interruptions.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from dexsim.errors import UserError
from dexsim.sweep.rows import columns

FILES = ("sweep.jsonl", "sweep.csv", "sweep.json")


def _csv_text(rows: list[dict], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(), lineterminator="\n")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _replace_file(path: Path, text: str) -> None:
    """Write the whole file beside its target, fsync, rename: a reader sees the old file or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RowStore:
    """The result files of one sweep folder and the rows already in them."""

    def __init__(self, out: str, resume: bool):
        self.dir = Path(out)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create ({e.strerror})") from None
        self.jsonl, self.csv, self.json = (self.dir / f for f in FILES)
        self.rows = self._load() if resume else {}
        try:
            self._rewrite(list(self.rows.values()), with_json=False)
            self._fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in (self.jsonl, self.csv)]
        except OSError as e:
            raise UserError(f"--out {out}: cannot write ({e.strerror})") from None

    def _load(self) -> dict:
        """Rows of an earlier run, by key: the jsonl file, less a torn last line (a kill mid-write)."""
        if not self.jsonl.is_file():
            return {}
        rows = {}
        for n, line in enumerate(self.jsonl.read_text().splitlines(keepends=True), 1):
            if not line.endswith("\n"):
                break  # the last line, cut short: its rows will be made again
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{self.jsonl}: line {n}: not JSON; use another --out or drop --resume") from None
            if not isinstance(row, dict) or set(row) != set(columns()):
                raise UserError(f"{self.jsonl}: line {n}: other columns than this version writes; "
                                f"use another --out or drop --resume")
            rows.setdefault(row["key"], row)
        return rows

    def _rewrite(self, rows: list[dict], with_json: bool) -> None:
        _replace_file(self.jsonl, _jsonl_text(rows))
        _replace_file(self.csv, _csv_text(rows, header=True))
        if with_json:
            _replace_file(self.json, json.dumps(rows, indent=1) + "\n")

    def append(self, rows: list[dict]) -> None:
        """Whole lines, one write per file, fsynced; jsonl (the record) first."""
        rows = [r for r in rows if r["key"] not in self.rows]
        if not rows:
            return
        for fd, text in zip(self._fds, (_jsonl_text(rows), _csv_text(rows, header=False))):
            _write_all(fd, text.encode())
            os.fsync(fd)
        self.rows.update((r["key"], r) for r in rows)

    def finish(self, order: list[str]) -> list[dict]:
        """Rewrite every file in grid order (rows of other grids, from a resumed folder, last)."""
        for fd in self._fds:
            os.close(fd)
        rank = {k: i for i, k in enumerate(order)}
        rows = sorted(self.rows.values(), key=lambda r: rank.get(r["key"], len(rank)))
        self._rewrite(rows, with_json=True)
        return rows
