"""A sweep's result files: DIR/sweep.jsonl and DIR/sweep.csv as each replay's rows are ready (whole
lines in one write, flushed and fsynced, jsonl first), DIR/sweep.json at the end.

Every row carries a `key` column (the row key), so `--resume` skips rows already there; a sweep killed
at any point and resumed ends with exactly the rows of an uninterrupted one. On resume the jsonl file
is the record (a torn last line is dropped) and the csv is rebuilt from it. At the end the jsonl and
csv files are rewritten in grid order and sweep.json (one JSON array) is written, each
write-temp-then-rename, so the files do not depend on --jobs, on finishing order or on interruptions.

Every resumed row is checked against the row schema (its columns, their types, its key) and against
the grid being run: a row of another grid (other traces, policies, hardware or seed) is refused unless
`--force` keeps it. One writer at a time: a folder is locked (DIR/.sweep.lock, an OS advisory lock
that dies with its process) for the whole run, and DIR/.sweep.lock.holder names the holder, so a
second sweep on the same folder is refused with one line naming it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from dexsim.config import write_atomically
from dexsim.errors import UserError
from dexsim.sweep.rows import columns, row_problem

FILES = ("sweep.jsonl", "sweep.csv", "sweep.json")
LOCK, HOLDER = ".sweep.lock", ".sweep.lock.holder"


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


def replace_file(path: Path, text: str) -> None:
    """The whole text file at once (config.write_atomically): a reader sees the old file or the new."""
    write_atomically(path, lambda f: f.write(text.encode()))


def _holder(folder: Path) -> str:
    """Who holds a folder's lock, as its sidecar says."""
    try:
        h = json.loads((folder / HOLDER).read_text())
        return f"pid {h['pid']} on {h['host']} since {h['started']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"


def lock_folder(folder: Path, flag: str = "--out") -> FileLock:
    """The folder's exclusive lock, held; a second writer gets one line naming the folder and the holder."""
    lock = FileLock(str(folder / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{flag} {folder}: in use by another sweep ({_holder(folder)}); wait for it to "
                        f"finish or use another {flag}") from None
    except OSError as e:
        raise UserError(f"{flag} {folder}: cannot lock ({e.strerror or e})") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        replace_file(folder / HOLDER, json.dumps(holder) + "\n")
    except OSError as e:
        lock.release()
        raise UserError(f"{flag} {folder}: cannot write ({e.strerror or e})") from None
    return lock


def unlock_folder(folder: Path, lock: FileLock) -> None:
    (folder / HOLDER).unlink(missing_ok=True)
    lock.release()


class RowStore:
    """The result files of one sweep folder and the rows already in them, locked while open."""

    def __init__(self, out: str, resume: bool, keys: dict | None = None, force: bool = False):
        """`keys`: each row key of the grid being run and the fields it names (None: any grid); a resumed
        row must hold the fields its key names, and a row outside the grid needs `force`."""
        self.dir = Path(out)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create ({e.strerror})") from None
        self.jsonl, self.csv, self.json = (self.dir / f for f in FILES)
        self._fds = []
        self._lock = lock_folder(self.dir)
        try:
            self.rows = self._load(keys, force) if resume else {}
            self._rewrite(list(self.rows.values()), with_json=False)
            self._fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in (self.jsonl, self.csv)]
        except OSError as e:
            self.close()
            raise UserError(f"--out {out}: cannot write ({e.strerror})") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the files and release the folder (idempotent)."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._lock is not None:
            unlock_folder(self.dir, self._lock)
            self._lock = None

    def _load(self, keys: set | None, force: bool) -> dict:
        """Rows of an earlier run, by key: the jsonl file, less a torn last line (a kill mid-write); every
        row checked, one line naming the file, the line and the field on the first bad one."""
        if not self.jsonl.is_file():
            return {}
        try:
            data = self.jsonl.read_bytes()
        except OSError as e:
            raise UserError(f"{self.jsonl}: cannot read ({e.strerror})") from None
        rows = {}
        for n, raw in enumerate(data.splitlines(keepends=True), 1):
            if not raw.endswith(b"\n"):
                break  # the last line, cut short: its rows will be made again
            where = f"{self.jsonl}: line {n}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"{where}: not UTF-8 text; use another --out or drop --resume") from None
            except (ValueError, RecursionError):
                raise UserError(f"{where}: not JSON; use another --out or drop --resume") from None
            problem = row_problem(row)
            if problem:
                raise UserError(f"{where}: {problem}; use another --out or drop --resume")
            named = {} if keys is None else keys.get(row["key"], {})
            for field, value in named.items():
                if row[field] != value:
                    raise UserError(f"{where}: field {field}: {row[field]!r}, but its key names {value!r}; "
                                    f"use another --out or drop --resume")
            if keys is not None and row["key"] not in keys and not force:
                raise UserError(f"{where}: a row of another grid (trace {row['trace']}, policy {row['policy']}, "
                                f"gpu {row['gpu']}); use another --out, the same flags, or --force to keep it")
            rows.setdefault(row["key"], row)
        return rows

    def _rewrite(self, rows: list[dict], with_json: bool) -> None:
        replace_file(self.jsonl, _jsonl_text(rows))
        replace_file(self.csv, _csv_text(rows, header=True))
        if with_json:
            replace_file(self.json, json.dumps(rows, indent=1) + "\n")

    def append(self, rows: list[dict]) -> None:
        """Whole lines, one write per file, fsynced; jsonl (the record) first."""
        rows = [r for r in rows if r["key"] not in self.rows]
        if not rows:
            return
        try:
            for fd, text in zip(self._fds, (_jsonl_text(rows), _csv_text(rows, header=False))):
                _write_all(fd, text.encode())
                os.fsync(fd)
        except OSError as e:
            raise UserError(f"--out {self.dir}: cannot write ({e.strerror})") from None
        self.rows.update((r["key"], r) for r in rows)

    def finish(self, order: list[str]) -> list[dict]:
        """Rewrite every file in grid order (rows of other grids kept by --force, last) and release the folder."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        rank = {k: i for i, k in enumerate(order)}
        rows = sorted(self.rows.values(), key=lambda r: rank.get(r["key"], len(rank)))
        try:
            self._rewrite(rows, with_json=True)
        except OSError as e:
            raise UserError(f"--out {self.dir}: cannot write ({e.strerror})") from None
        finally:
            self.close()
        return rows
