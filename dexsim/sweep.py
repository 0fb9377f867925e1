"""`python -m dexsim sweep`: replay traces under a grid of policies and price them on a grid of hardware.

One result row per (trace, model, GPU configuration, policy, parameters, scheduler, batch) (DESIGN.md
section 5). A replay's counters do not depend on the hardware, so each (trace, model, policy,
parameters) is replayed once, in a pool of local processes, and priced for every GPU configuration
(dexsim/pricing.py). oracle-select is the exception that proves the rule: its candidates (LayerSkip
at each depth of its exit set and each draft length) are replayed once, and which one it picks is
decided per configuration, by simulated seconds.

Rows go to DIR/sweep.jsonl and DIR/sweep.csv as each replay's rows are ready: whole lines in one
write, flushed and fsynced, jsonl first. Every row carries a `key` column (the row key), so `--resume`
skips rows already there; a sweep killed at any point and resumed ends with exactly the rows of an
uninterrupted one. On resume the jsonl file is the record (a torn last line is dropped) and the csv is
rebuilt from it. At the end the jsonl and csv files are rewritten in grid order and DIR/sweep.json (one
JSON array) is written, each write-temp-then-rename, so the files do not depend on --jobs, on finishing
order or on interruptions.

With `--scheduler des` (or `lockstep,des`) the same replays are also timed by the discrete-event
simulator (dexsim/des.py) on every hardware configuration and every `--arrival` load: the replay
records its work once (hardware-independent) and each configuration simulates it. DES rows carry
`arrival`, `requests`, per-token latency percentiles and per-stage utilization; lockstep rows leave
those empty and keep their keys.

Not built: `--dask ADDRESS` (a distributed pool). Local processes cover the grids this simulator
runs; a dask backend would be one more executor behind `_replays`.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import des, pricing
from .catalog import get_gpu
from .des_plan import compile_plan
from .des_record import record
from .errors import UserError
from .policies import PRIORITIES
from .replay import POLICY_NAMES, for_model, make_policy, replay_tally, result
from .synth import parse_depths
from .trace import Trace, load_trace, trace_checksum

SCHEDULERS = ("lockstep", "des")  # DESIGN.md section 3
SINGLE_DEPTH = ("layerskip", "adaptive", "oracle-select")  # the selection methods DEX is measured against

# The default grid: `python -m dexsim sweep` with no arguments must finish in well under a minute on two
# cores. It prices every replay on one device (lockstep) and on a 4-stage pipeline (des), where DEX's
# explorers at different depths run on different stages at once; exits every 8 layers put them at
# the stage ends. The traces are the real ones recorded by the reference engine (SmolLM2-135M, logit
# lens, HumanEval / MT-bench / ShareGPT: 544 sequences; traces/README.md), every sequence and its first
# 32 tokens replayed. Measured (2 cores, idle): 6.5 s wall. Widen any
# axis with its flag (`--traces 'traces/*.npz'`: every bundled trace, synthetic ones included;
# `--max-tokens 0`: every token); `--max-seqs N` replays the first N sequences of each trace.
DEFAULT_TRACES = ("smollm2-135m-lens-humaneval164-raw.npz", "smollm2-135m-lens-mtbench-chat.npz",
                  "smollm2-135m-lens-sharegpt-chat.npz")
DEFAULTS = {
    "traces": ",".join(f"traces/{name}" for name in DEFAULT_TRACES),
    "models": "trace",
    "policies": ",".join(POLICY_NAMES),
    "explorers": "4,8",
    "exits": "every:8",
    "priorities": "eager,deep",
    "thresholds": "0.9",
    "drafts": "1,2,4",
    "buffer": 8,
    "gpus": "a100-sxm4-80gb,h100-sxm5-80gb,l4-24gb",
    "tp": "1",
    "pp": "1,4",
    "batch": "1",
    "max_tokens": 32,
    "max_seqs": 0,
    "seed": 0,
    "out": "results",
    "scheduler": "lockstep,des",
    "arrival": "closed",
}

# Output columns, in order. Parameters a policy does not have are empty (null in JSON).
KEY_FIELDS = ("trace", "trace_sha256", "model", "max_tokens", "max_seqs", "seed", "gpu", "tp", "pp", "batch", "scheduler",
              "arrival", "requests", "policy", "exits", "explorers", "buffer", "priority", "exit", "draft", "threshold", "oracle_drafts")
COUNTERS = ("tokens", "rounds", "node_layers", "weight_loads", "head_evals", "wasted_node_layers", "fallbacks")
COLUMNS = ("key", *KEY_FIELDS, "depth_rescaled", "oracle_policy", *COUNTERS,
           "output_matches_trace", "sim_seconds", "tokens_per_s", "speedup_vs_ar",
           "p50_token_latency_s", "p99_token_latency_s", "utilization")
FILES = ("sweep.jsonl", "sweep.csv", "sweep.json")


# ---------------------------------------------------------------------------- the grid

@dataclass(frozen=True)
class Job:
    """One replay (hardware-independent). Equal jobs are replayed once, whichever rows need them."""

    trace: str
    max_tokens: int | None
    model: str | None  # None: the trace's own model
    seed: int
    per_layer: bool
    policy: str
    des_pps: tuple = ()  # record the work for the DES on these stage counts (empty: lockstep only)
    exits: tuple = ()
    explorers: int = 0
    buffer: int = 0
    priority: str = ""
    exit: int = 0
    draft: int = 0
    threshold: float = 0.0
    max_seqs: int | None = None  # None: every sequence


@dataclass
class RowSpec:
    """The rows of one (trace, model, policy, parameters): one per hardware configuration."""

    fields: dict  # key fields other than the hardware ones
    jobs: list  # the replay, or oracle-select's candidates
    ar: Job  # the baseline on the same trace and model
    hardware: list  # [(model spec, Hardware)]
    extra: dict = field(default_factory=dict)  # depth_rescaled
    schedules: list = field(default_factory=lambda: [("lockstep", None)])  # (scheduler, arrival spec)
    requests: int | None = None  # des: requests (None: each sequence once)
    n_seqs: int = 1


@dataclass
class Grid:
    specs: list
    notes: list  # skipped combinations, one line each


def _csv_list(flag: str, text: str, convert=str) -> list:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise UserError(f"{flag}: empty list")
    try:
        return [convert(x) for x in items]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected a comma-separated list of {convert.__name__}") from None


def _positive(flag: str, values: list) -> list:
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f"{flag}: {bad[0]} must be >= 1")
    return values


def default_traces_glob() -> str:
    """The default traces in `traces/` of the working directory if there is such a folder, else beside
    the package."""
    if Path("traces").is_dir():
        return DEFAULTS["traces"]
    root = Path(__file__).resolve().parent.parent
    return ",".join(str(root / p) for p in DEFAULTS["traces"].split(","))


def find_traces(patterns: str) -> list[str]:
    paths = []
    for pattern in _csv_list("--traces", patterns):
        found = sorted(glob.glob(pattern))
        if not found:
            raise UserError(f"--traces {pattern!r}: no file matches")
        paths += [p for p in found if p not in paths]
    return paths


def first_tokens(trace: Trace, n: int | None) -> Trace:
    """The trace cut to the first n tokens of every sequence (a sweep's cheaper, smaller sample)."""
    lengths = np.diff(trace.seq_offsets)
    if n is None or lengths.max() <= n:
        return trace
    keep = np.minimum(lengths, n)
    rows = np.concatenate([np.arange(o, o + k) for o, k in zip(trace.seq_offsets[:-1], keep)])
    out = Trace(depths=trace.depths, final=trace.final[rows], exit_tokens=trace.exit_tokens[rows],
                exit_conf=trace.exit_conf[rows], seq_offsets=np.r_[0, np.cumsum(keep)].astype(np.int64),
                prompt_len=trace.prompt_len, meta={**trace.meta, "first_tokens": n}, path=trace.path)
    out.meta["sha256"] = trace_checksum(out)
    return out


def first_seqs(trace: Trace, n: int | None) -> Trace:
    """The trace cut to its first n sequences."""
    if n is None or trace.n_seqs <= n:
        return trace
    end = int(trace.seq_offsets[n])
    out = Trace(depths=trace.depths, final=trace.final[:end], exit_tokens=trace.exit_tokens[:end],
                exit_conf=trace.exit_conf[:end], seq_offsets=trace.seq_offsets[:n + 1].copy(),
                prompt_len=trace.prompt_len[:n].copy(), meta={**trace.meta, "first_seqs": n}, path=trace.path)
    out.meta["sha256"] = trace_checksum(out)
    return out


@lru_cache(maxsize=32)
def loaded(path: str) -> Trace:
    return load_trace(path)


@lru_cache(maxsize=32)
def prepared(path: str, max_tokens: int | None, model: str | None, max_seqs: int | None = None) -> tuple[Trace, bool]:
    """The trace a job replays (cut, then mapped onto `model`), cached per process."""
    return for_model(first_tokens(first_seqs(loaded(path), max_seqs), max_tokens), model, flag="--models")


def _layerskip_exit(trace: Trace) -> int:
    """LayerSkip's exit in a sweep: the recorded depth below L nearest L/2 (ties: the deeper)."""
    below = [int(d) for d in trace.depths if d < trace.L]
    return min(below, key=lambda d: (abs(2 * d - trace.L), -d)) if below else trace.L


def _exit_set(spec: str, trace: Trace) -> tuple | None:
    """An --exits spec on this trace: `all` is every recorded depth; None if a depth is not recorded."""
    if spec == "all":
        return tuple(int(d) for d in trace.depths)
    depths = parse_depths(spec, trace.L, flag="--exits")
    return tuple(int(d) for d in depths) if np.isin(depths, trace.depths).all() else None


def _hardware(model_name: str, hw_grid: list, notes: list, heads: str = "lens") -> list:
    out = []
    for gpu, tp, pp, batch in hw_grid:
        try:
            out.append(pricing.hardware(model_name, gpu, tp, pp, batch, heads=heads))
        except UserError as e:
            notes.append(f"skipped {model_name} on {gpu} tp={tp} pp={pp} batch={batch}: {e}")
    return out


def _policy_axes(args) -> dict:
    """The policy flags, parsed and checked."""
    policies = _csv_list("--policies", args.policies)
    for p in policies:
        if p not in POLICY_NAMES:
            raise UserError(f"--policies: unknown policy {p!r} (known: {', '.join(POLICY_NAMES)})")
    priorities = _csv_list("--priorities", args.priorities)
    for p in priorities:
        if p not in PRIORITIES:
            raise UserError(f"--priorities: unknown priority {p!r} (known: {', '.join(PRIORITIES)})")
    thresholds = _csv_list("--thresholds", args.thresholds, float)
    if any(not 0 <= t <= 1 for t in thresholds):
        raise UserError(f"--thresholds {args.thresholds!r}: each must be in [0, 1]")
    if args.buffer < 0:
        raise UserError(f"--buffer {args.buffer}: must be >= 0")
    return {"policies": policies, "priorities": priorities, "thresholds": thresholds,
            "explorers": _positive("--explorers", _csv_list("--explorers", args.explorers, int)),
            "drafts": _positive("--drafts", _csv_list("--drafts", args.drafts, int)),
            "exits": _exit_specs(args.exits), "buffer": args.buffer}


def _hardware_axes(args) -> list[tuple]:
    """(gpu, tp, pp, batch) for every hardware configuration of the grid; unknown GPUs are errors."""
    gpus = _csv_list("--gpus", args.gpus)
    for g in gpus:
        try:
            get_gpu(g)
        except UserError as e:
            raise UserError(f"--gpus: {e}") from None
    tps, pps, batches = (_positive(f, _csv_list(f, v, int)) for f, v in
                         (("--tp", args.tp), ("--pp", args.pp), ("--batch", args.batch)))
    return [(g, tp, pp, b) for g in gpus for tp in tps for pp in pps for b in batches]


def _policy_rows(trace: Trace, base: Job, ax: dict, notes: list, where: str):
    """(key fields, jobs) of every policy configuration on one prepared trace, in grid order."""
    for policy in ax["policies"]:
        if policy == "ar":
            yield {"policy": "ar"}, [base]
            continue
        if policy == "layerskip":
            e = _layerskip_exit(trace)
            for g in ax["drafts"]:
                yield {"policy": policy, "exit": e, "draft": g}, [replace(base, policy=policy, exit=e, draft=g)]
            continue
        for spec in ax["exits"]:
            exits = _exit_set(spec, trace)
            if exits is None:
                notes.append(f"skipped --exits {spec} on {where}: not all of its depths are recorded")
                continue
            if policy == "adaptive":
                for t in ax["thresholds"]:
                    yield ({"policy": policy, "exits": spec, "threshold": t, "buffer": ax["buffer"]},
                           [replace(base, policy=policy, exits=exits, threshold=t, buffer=ax["buffer"])])
            elif policy == "dex":
                for k in ax["explorers"]:
                    for pr in ax["priorities"]:
                        yield ({"policy": policy, "exits": spec, "explorers": k, "buffer": ax["buffer"],
                                "priority": pr},
                               [replace(base, policy=policy, exits=exits, explorers=k, buffer=ax["buffer"],
                                        priority=pr)])
            else:  # oracle-select: its candidates (AR = the fixed depth L, and LayerSkip), priced later
                cands = [base] + [replace(base, policy="layerskip", exit=e, draft=g)
                                  for e in exits if e < trace.L for g in ax["drafts"]]
                drafts = ",".join(map(str, ax["drafts"]))
                yield {"policy": policy, "exits": spec, "oracle_drafts": drafts}, cands


def _schedule_axes(args) -> tuple[list, int | None]:
    """[(scheduler, arrival spec or None)] in grid order, and --requests; des flags need des."""
    scheds = _csv_list("--scheduler", args.scheduler)
    for sch in scheds:
        if sch not in SCHEDULERS:
            raise UserError(f"--scheduler: unknown scheduler {sch!r} (known: {', '.join(SCHEDULERS)})")
    arrivals = _csv_list("--arrival", args.arrival)
    if "des" not in scheds and (args.requests is not None or args.arrival != DEFAULTS["arrival"]):
        raise UserError(f"--{'requests' if args.requests is not None else 'arrival'}: needs --scheduler des")
    for a in arrivals:
        des.parse_load(a, args.requests, 1)  # the syntax; each batch size is checked by its row
    out = []
    for sch in dict.fromkeys(scheds):
        out += [("lockstep", None)] if sch == "lockstep" else [("des", a) for a in dict.fromkeys(arrivals)]
    return out, args.requests


def build_grid(args) -> Grid:
    """Every row spec of the cross product, in grid order; combinations that cannot run become notes."""
    ax = _policy_axes(args)
    hw_grid = _hardware_axes(args)
    schedules, requests = _schedule_axes(args)
    lockstep = any(s == "lockstep" for s, _ in schedules)
    # only pipeline pricing needs per-layer counts; the DES needs the work recorded at its stage boundaries
    per_layer = lockstep and any(pp > 1 for _, _, pp, _ in hw_grid)
    des_pps = tuple(sorted({pp for _, _, pp, _ in hw_grid})) if len(schedules) > lockstep else ()
    models = _csv_list("--models", args.models)
    specs, notes = [], []
    for path in find_traces(args.traces):
        for model_arg in models:
            model = None if model_arg == "trace" else model_arg
            trace, rescaled = prepared(path, args.max_tokens, model, args.max_seqs)
            name = trace.meta.get("model")
            hardware = _hardware(name, hw_grid, notes, trace.meta["heads"])
            if not hardware:
                continue
            base = Job(path, args.max_tokens, model, args.seed, per_layer, "ar", des_pps=des_pps, max_seqs=args.max_seqs)
            # the checksum in the key: a resumed sweep never mixes in rows of a changed file of the same name
            common = {"trace": os.path.basename(path), "trace_sha256": loaded(path).meta["sha256"], "model": name,
                      "max_tokens": args.max_tokens, "max_seqs": args.max_seqs, "seed": args.seed}
            extra = {"depth_rescaled": rescaled}
            where = f"{common['trace']} ({name})"
            for fields, jobs in _policy_rows(trace, base, ax, notes, where):
                specs.append(RowSpec({**common, **fields}, jobs, base, hardware, extra, schedules, requests,
                                     trace.n_seqs))
    return Grid(specs, notes)


def _exit_specs(text: str) -> list[str]:
    """--exits: specs separated by commas, where a spec may itself be `d1,d2,...`; use `;` between
    specs to list explicit depth sets (`--exits "4,8,16;every:4"`)."""
    if ";" in text:
        parts = [s.strip() for s in text.split(";") if s.strip()]
    else:
        parts = _comma_specs(text)
    if not parts:
        raise UserError("--exits: empty list")
    for spec in parts:
        _check_exit_spec(spec)
    return parts


def _check_exit_spec(spec: str) -> None:
    """The syntax of one exit-set spec (whether its depths exist is a question for each trace)."""
    try:
        if spec == "all":
            return
        depths = [int(spec.removeprefix("every:"))] if spec.startswith("every:") else map(int, spec.split(","))
        if all(d >= 1 for d in depths):
            return
    except ValueError:
        pass
    raise UserError(f"--exits {spec!r}: expected all, every:N or d1,d2,... with N and depths >= 1")


def _comma_specs(text: str) -> list[str]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if parts and all(p.isdigit() for p in parts):  # one explicit depth set
        return [",".join(parts)]
    if any(p.isdigit() for p in parts):
        raise UserError(f"--exits {text!r}: separate an explicit depth set from other specs with ';'")
    return parts


# ---------------------------------------------------------------------------- replaying and pricing

def run_job(job: Job) -> tuple[dict, pricing.Tally, object]:
    """Replay one job (in a worker process or in this one): its result, Tally and (for the DES) WorkLog."""
    trace, _ = prepared(job.trace, job.max_tokens, job.model, job.max_seqs)
    exits = np.array(job.exits) if job.exits else None
    policy = make_policy(job.policy, trace.L, exits=exits, explorers=job.explorers, buffer=job.buffer,
                         priority=job.priority or "eager", exit=job.exit, draft=job.draft, threshold=job.threshold)
    if job.des_pps:
        lat, tally, log = record(trace, policy, seed=job.seed, pps=job.des_pps, per_layer=job.per_layer)
    else:
        (lat, tally), log = replay_tally(trace, policy, seed=job.seed, per_layer=job.per_layer), None
    return result(trace, lat, policy), tally, log


def row_key(fields: dict) -> str:
    return "|".join(f"{k}={fields[k]}" for k in KEY_FIELDS if fields.get(k) is not None)


def _configs(spec: RowSpec):
    """(model, hardware, scheduler, load) of every row of a spec, in grid order; load None: lockstep."""
    for model, hw in spec.hardware:
        for sched, arrival in spec.schedules:
            load = None if sched == "lockstep" else des.parse_load(arrival, spec.requests, hw.batch, spec.fields["seed"])
            yield model, hw, sched, load


def _hw_fields(hw, sched: str = "lockstep", load=None, n_seqs: int = 1) -> dict:
    out = {"gpu": hw.gpu.name, "tp": hw.tp, "pp": hw.pp, "batch": hw.batch, "scheduler": sched}
    if load is not None:
        out.update(arrival=load.spec(), requests=load.requests or n_seqs)
    return out


def spec_keys(spec: RowSpec) -> list[str]:
    return [row_key({**spec.fields, **_hw_fields(hw, sch, load, spec.n_seqs)}) for _, hw, sch, load in _configs(spec)]


def _simulated(cache: dict, job: Job, log, model, hw, load):
    """A job's DES run on one configuration, once per sweep (the AR baseline serves many rows); its
    plan (the steps on hw.pp stages) serves every GPU, TP degree, batch and load with that stage count."""
    key = (job, hw, load)
    if key not in cache:
        plan_key = ("plan", job, hw.pp)
        if plan_key not in cache:
            cache[plan_key] = compile_plan(log, hw.pp)
        cache[key] = des.simulate(log, model, hw, load, plan=cache[plan_key])
    return cache[key]


def make_rows(spec: RowSpec, done: dict, skip: set, cache: dict | None = None) -> list[dict]:
    """The rows of a spec whose replays are done, for every configuration not in `skip`."""
    rows = []
    cache = {} if cache is None else cache
    ar_tally = done[spec.ar][1]
    for model, hw, sched, load in _configs(spec):
        fields = {**spec.fields, **_hw_fields(hw, sched, load, spec.n_seqs)}
        key = row_key(fields)
        if key in skip:
            continue
        cands = [done[j] for j in spec.jobs]
        if load is None:
            priced = [pricing.price(t, model, hw)["sim_seconds"] for _, t, _ in cands]
        else:
            sims = [_simulated(cache, j, done[j][2], model, hw, load) for j in spec.jobs]
            priced = [r.sim_seconds for r in sims]
        best = int(np.argmin(priced))  # one job, or oracle-select's pick on this hardware
        res, tally, log = cands[best]
        row = {c: None for c in COLUMNS}
        row.update(fields, **spec.extra, key=key, **{c: res[c] for c in COUNTERS})
        row["output_matches_trace"] = res["output_matches_trace"]
        if spec.fields["policy"] in ("layerskip", "oracle-select", "ar"):
            row["exits"] = spec.fields.get("exits") or res["exits"]
        if spec.fields["policy"] == "oracle-select":
            row["oracle_policy"] = res["policy"]
            row["exit"], row["draft"] = res.get("exit"), res.get("draft")
        if load is None:
            row.update(pricing.priced_fields(tally, ar_tally, model, hw))
        else:
            ar = _simulated(cache, spec.ar, done[spec.ar][2], model, hw, load)
            row.update(des.request_counters(log, load), **sims[best].fields())
            row["speedup_vs_ar"] = sims[best].tokens_per_s / ar.tokens_per_s
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- the result files

def _csv_text(rows: list[dict], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
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
            if not isinstance(row, dict) or set(row) != set(COLUMNS):
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


@contextmanager
def _replays(jobs: list[Job], n_procs: int):
    """An iterator of (job, (result, tally)) as replays finish: in this process, or in a pool of
    processes, all of them started on entry (before the caller starts any thread, e.g. a progress bar)."""
    if n_procs <= 1 or len(jobs) <= 1:
        yield ((job, run_job(job)) for job in jobs)
        return
    # fork: children inherit the loaded traces, and `python -m dexsim` would rerun the CLI under spawn
    pool = ProcessPoolExecutor(max_workers=min(n_procs, len(jobs)), mp_context=multiprocessing.get_context("fork"))
    try:
        futures = {pool.submit(run_job, job): job for job in jobs}
        yield ((futures[f], f.result()) for f in as_completed(futures))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# Rough relative cost of a replay, to start the slow ones first (finishing order never changes results).
_EFFORT = {"ar": 0, "layerskip": 1, "adaptive": 2, "dex": 3}


def _effort(job: Job) -> tuple:
    return (-_EFFORT[job.policy], job.priority != "align", -job.explorers)


def sweep(args, grid: Grid) -> list[dict]:
    """Run what `grid` still lacks in --out; returns the grid's rows, in grid order."""
    store = RowStore(args.out, args.resume)
    pending = [s for s in grid.specs if any(k not in store.rows for k in spec_keys(s))]
    jobs = list(dict.fromkeys([s.ar for s in pending]))  # the baselines first: every row needs one
    jobs += sorted(dict.fromkeys(j for s in pending for j in s.jobs if j not in jobs), key=_effort)
    waiting = {j: [] for j in jobs}
    for s in pending:
        for j in {*s.jobs, s.ar}:
            waiting[j].append(s)
    missing = {id(s): len({*s.jobs, s.ar}) for s in pending}
    done, cache = {}, {}
    # the pool starts (forks) before tqdm starts its monitor thread
    with (_replays(jobs, args.jobs) as results,
          tqdm(total=len(jobs), desc="sweep", unit="replay", file=sys.stderr, mininterval=0.5) as bar):
        for job, out in results:
            done[job] = out
            for s in waiting[job]:
                missing[id(s)] -= 1
                if missing[id(s)] == 0:
                    store.append(make_rows(s, done, store.rows.keys(), cache))
            bar.update()
    order = [k for s in grid.specs for k in spec_keys(s)]
    rows = store.finish(order)
    in_grid = set(order)
    return [r for r in rows if r["key"] in in_grid]


# ---------------------------------------------------------------------------- the summary table

def describe(row: dict) -> str:
    """A configuration in a few words."""
    p = row["policy"]
    if p == "ar":
        return "ar"
    if p == "layerskip":
        return f"layerskip e={row['exit']} g={row['draft']}"
    if p == "adaptive":
        return f"adaptive E={row['exits']} tau={row['threshold']:g}"
    if p == "oracle-select":
        pick = "ar" if row["oracle_policy"] == "ar" else f"e={row['exit']} g={row['draft']}"
        return f"oracle-select E={row['exits']} ({pick})"
    return f"dex k={row['explorers']} E={row['exits']} {row['priority']}"


def best_table(rows: list[dict]) -> str:
    """Best lossless configuration per trace and hardware, with its speedup over ar and over the best
    single-depth policy (layerskip, adaptive, oracle-select) on the same trace and hardware."""
    groups: dict[tuple, list] = {}
    for r in rows:
        if r["output_matches_trace"]:
            hw = (r["gpu"], r["tp"], r["pp"], r["batch"], r["scheduler"], r["arrival"])
            groups.setdefault((r["trace"], r["model"], r["max_tokens"], r.get("max_seqs"), r["seed"], hw), []).append(r)
    head = ("trace", "model", "hardware", "best configuration", "tok/s", "vs ar", "vs single", "best single-depth")
    lines = [head]
    for (trace, model, _, _, _, (gpu, tp, pp, batch, sched, arrival)), rs in groups.items():
        best = max(rs, key=lambda r: r["tokens_per_s"])
        single = [r for r in rs if r["policy"] in SINGLE_DEPTH]
        hw = gpu + ("" if (tp, pp, batch) == (1, 1, 1) else f" tp{tp} pp{pp} b{batch}")
        hw += "" if sched == "lockstep" else f" des {arrival}"
        if single:
            s = max(single, key=lambda r: r["tokens_per_s"])
            vs_single, s_name = f"{best['tokens_per_s'] / s['tokens_per_s']:.3f}x", describe(s)
        else:
            vs_single, s_name = "-", "-"
        lines.append((trace.removesuffix(".npz"), model, hw, describe(best), f"{best['tokens_per_s']:.1f}",
                      f"{best['speedup_vs_ar']:.3f}x", vs_single, s_name))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {4, 5, 6}

    def fmt(line):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths), *map(fmt, lines[1:])])


def cmd_sweep(args) -> int:
    if args.traces is None:
        args.traces = default_traces_glob()
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be >= 1")
    if args.max_tokens < 0:
        raise UserError(f"--max-tokens {args.max_tokens}: must be >= 0 (0: every token)")
    args.max_tokens = args.max_tokens or None
    if args.max_seqs < 0:
        raise UserError(f"--max-seqs {args.max_seqs}: must be >= 0 (0: every sequence)")
    args.max_seqs = args.max_seqs or None
    grid = build_grid(args)
    for note in dict.fromkeys(grid.notes):
        print(f"note: {note}", file=sys.stderr)
    rows = sweep(args, grid)
    print(f"{len(rows)} rows in {Path(args.out) / FILES[1]} (and {FILES[0]}, {FILES[2]})")
    scheds = ", ".join(dict.fromkeys(_csv_list("--scheduler", args.scheduler)))
    print(f"best lossless configuration per trace and hardware ({scheds}, simulated tokens/s)")
    print(best_table(rows))
    if args.plots:
        try:
            from viz.plots import sweep_plots
        except ImportError as e:
            raise UserError(f"--plots: needs the viz extra ({e.name} missing): pip install -e '.[viz]'") from None
        for path in sweep_plots(args.out):
            print(f"plot: {path}")
    return 0


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def register(sub) -> None:
    d = DEFAULTS
    p = sub.add_parser("sweep", help="replay traces under a grid of policies, priced on a grid of GPUs")
    p.add_argument("--traces", default=None,
                   help=f"comma-separated globs of trace files (default: {d['traces']} here, else beside the package)")
    p.add_argument("--models", default=d["models"],
                   help="models to price, comma-separated; `trace` is each trace's own (others: depths "
                        f"mapped by relative depth) (default: {d['models']})")
    p.add_argument("--policies", default=d["policies"], help=f"comma-separated, of {', '.join(POLICY_NAMES)}")
    p.add_argument("--explorers", default=d["explorers"], help=f"dex: explorer counts (default: {d['explorers']})")
    p.add_argument("--exits", default=d["exits"],
                   help="exit sets of dex, adaptive and oracle-select: all, every:N or d1,d2,...; several "
                        f"separated by commas, or by ';' when one is a depth list (default: {d['exits']})")
    p.add_argument("--priorities", default=d["priorities"],
                   help=f"dex: of {', '.join(PRIORITIES)} (default: {d['priorities']})")
    p.add_argument("--thresholds", default=d["thresholds"], help=f"adaptive: tau values (default: {d['thresholds']})")
    p.add_argument("--drafts", default=d["drafts"],
                   help="layerskip draft lengths (exit: the recorded depth nearest L/2); oracle-select "
                        f"searches them all (default: {d['drafts']})")
    p.add_argument("--buffer", type=int, default=d["buffer"],
                   help=f"dex, adaptive: live branches B (default {d['buffer']})")
    p.add_argument("--gpus", default=d["gpus"], help=f"catalog GPUs (default: {d['gpus']})")
    p.add_argument("--tp", default=d["tp"], help="tensor-parallel degrees (default: 1)")
    p.add_argument("--pp", default=d["pp"], help=f"pipeline stage counts (default: {d['pp']})")
    p.add_argument("--batch", default=d["batch"],
                   help="batch sizes, sequences in lockstep; under des, the most requests in flight (default: 1)")
    p.add_argument("--max-tokens", type=int, default=d["max_tokens"],
                   help=f"replay the first N tokens of each sequence (default {d['max_tokens']}; 0: all)")
    p.add_argument("--max-seqs", type=int, default=d["max_seqs"],
                   help="replay the first N sequences of each trace (default 0: all)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed of the off-path exit tokens (and poisson arrivals)")
    p.add_argument("--scheduler", default=d["scheduler"],
                   help=f"comma-separated, of {', '.join(SCHEDULERS)} (default: {d['scheduler']}); des: "
                        "discrete-event simulation of pipeline stages and serving load")
    p.add_argument("--arrival", default=d["arrival"],
                   help="des loads, comma-separated: closed[:CLIENTS] (closed: as many clients as --batch) or "
                        f"poisson:QPS (default: {d['arrival']})")
    p.add_argument("--requests", type=int, default=None,
                   help="des: requests per row (request i decodes sequence i mod S; default: each sequence once)")
    p.add_argument("--out", default=d["out"], help=f"result folder (default: ./{d['out']}/)")
    p.add_argument("--jobs", type=int, default=_default_jobs(), help="local worker processes (default: all cores)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out and skip them")
    p.add_argument("--plots", action="store_true", help="also write the sweep's plots to OUT/plots (needs matplotlib)")
    p.set_defaults(func=cmd_sweep)
