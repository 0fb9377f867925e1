"""A sweep's grid: its settings (`SweepConfig`, one per `python -m dexsim sweep` run), the replays it
needs (`Job`) and the rows each replay serves (`RowSpec`).

One result row per (trace, model, GPU configuration, policy, parameters, scheduler, batch) (DESIGN.md
section 5). A replay's counters do not depend on the hardware, so each (trace, model, policy,
parameters) is replayed once and priced for every GPU configuration. A hindsight policy
(oracle-select) is the exception that proves the rule: its candidates are replayed once, and which
one it picks is decided per configuration.

The policy axes come from the registry: every parameter with an `axis` is a comma-separated flag
(`--explorers 4,8`, `--priorities eager,deep`), every other one a single value (`--buffer 8`); a
policy's rows are the cross product of its own parameters' axes, in the order its spec lists them.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dexsim import depths as depth_sets
from dexsim.config import check_writable, csv_list, option, parse_seed
from dexsim.core import registry
from dexsim.core.params import PARAMS
from dexsim.des import simulate as des
from dexsim.errors import UserError
from dexsim.hardware import pricing
from dexsim.replay.executor import unrecorded
from dexsim.specs.catalog import get_gpu
from dexsim.specs.profile import load_profile
from dexsim.traces.analyze import ceiling, settle_order
from dexsim.traces.format import Trace, load_trace
from dexsim.traces.transforms import first_seqs, first_tokens, for_model, pick_seqs

# The default grid: `python -m dexsim sweep` with no arguments must finish in well under a minute on two
# cores. It prices every replay on one device (lockstep) and on a 4-stage pipeline (des), where DEX's
# explorers at different depths run on different stages at once; exits every 8 layers put them at
# the stage ends, and `settle:2` at the two depths where most of each trace's tokens settle. The
# traces are the real ones recorded by the reference engine (SmolLM2-135M, logit lens, HumanEval /
# MT-bench / ShareGPT: 544 sequences; trained exit heads on HumanEval: 12; traces/README.md) and one
# synthetic early-exit-trained profile (Llama-2-7B), so that the first run shows where DEX wins and
# where it does not; every sequence and its first 32 tokens replayed. Widen any axis with its flag (`--traces 'traces/*.npz'`: every bundled trace,
# synthetic ones included; `--max-tokens 0`: every token); `--max-seqs N` replays the first N
# sequences of each trace.
DEFAULT_TRACES = ("smollm2-135m-lens-humaneval164-raw.npz", "smollm2-135m-lens-mtbench-chat.npz",
                  "smollm2-135m-lens-sharegpt-chat.npz", "smollm2-135m-trained-humaneval-raw.npz",
                  "synth-llama2-7b-eetrained.npz")


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep varies or writes, but the policy parameters' axes (`axes`)."""

    traces: str | None = option(None, "comma-separated globs of trace files (default: "
                                      f"{', '.join(DEFAULT_TRACES)} in traces/ here, else beside the package)")
    models: str = option("trace", "models to price, comma-separated; `trace` is each trace's own (others: "
                                  "depths mapped by relative depth)")
    policies: str = option(",".join(registry.names()), "policies, comma-separated")
    gpus: str = option("a100-sxm4-80gb,h100-sxm5-80gb,l4-24gb", "catalog GPUs")
    profile: str | None = option(None, "price from this measured profile (`python -m dexref profile`) instead of "
                                       "the roofline, on every GPU of --gpus (name the one it was measured on); "
                                       "traces of another model shape are skipped with a note")
    tp: str = option("1", "tensor-parallel degrees")
    pp: str = option("1,4", "pipeline stage counts")
    batch: str = option("1", "batch sizes, sequences in lockstep; under des, the most requests in flight")
    max_tokens: int = option(32, "replay the first N tokens of each sequence (0: all)")
    max_seqs: int = option(0, "replay the first N sequences of each trace (0: all)")
    seed: int = option(0, "seed of the off-path exit tokens (and poisson arrivals)", kind=parse_seed)
    scheduler: str = option("lockstep,des", "comma-separated, of lockstep, des; des: discrete-event simulation of "
                                            "pipeline stages and serving load")
    arrival: str = option("closed", "des loads, comma-separated: closed[:CLIENTS] (closed: as many clients as "
                                    "--batch) or poisson:QPS")
    requests: int | None = option(None, "des: requests per row (request i decodes sequence i mod S; default: "
                                        "each sequence once)", kind=int)
    out: str = option("results", "result folder")
    jobs: int = option(1, "local worker processes (default: all cores)")
    dask: str | None = option(None, "replay on the dask.distributed scheduler at this address (tcp://HOST:PORT) "
                                    "instead of --jobs local processes (needs the dask extra)")
    resume: bool = option(False, "keep the rows already in --out and skip them", kind=bool)
    force: bool = option(False, "with --resume: keep rows of another grid found in --out (default: refuse them)",
                         kind=bool)
    plots: bool = option(False, "write the sweep's plots to OUT/plots, or fail (default: written when matplotlib "
                                "is installed, a note otherwise)", kind=bool)
    no_plots: bool = option(False, "write no plots", kind=bool)
    axes: dict = field(default_factory=dict)  # policy parameter -> its flag's text

    def checked(self) -> "SweepConfig":
        """The same settings with the numbers checked (0 tokens or sequences: all of them)."""
        check_writable("--out", self.out, folder=True)
        if self.jobs < 1:
            raise UserError(f"--jobs {self.jobs}: must be >= 1")
        if self.max_tokens < 0:
            raise UserError(f"--max-tokens {self.max_tokens}: must be >= 0 (0: every token)")
        if self.max_seqs < 0:
            raise UserError(f"--max-seqs {self.max_seqs}: must be >= 0 (0: every sequence)")
        return self


def axis_flag(name: str) -> str:
    p = PARAMS[name]
    return f"--{p.axis}" if p.axis else p.flag


def axis_defaults() -> dict:
    """Each policy parameter's flag text in the default sweep."""
    return {n: p.axis_default if p.axis else p.default for n, p in PARAMS.items()}


def parse_axes(texts: dict) -> dict:
    """Each policy parameter's values in the sweep, parsed and checked."""
    out, defaults = {}, axis_defaults()
    for name, p in PARAMS.items():
        text, flag = texts.get(name, defaults[name]), axis_flag(name)
        if name == "exits":
            out[name] = depth_sets.specs(text, flag)
        elif p.axis:
            out[name] = [p.check(v, flag) for v in csv_list(flag, text, p.kind)]
        else:
            out[name] = [None if text is None else p.check(text, flag)]
    return out


@dataclass(frozen=True)
class Job:
    """One replay (hardware-independent). Equal jobs are replayed once, whichever rows need them."""

    trace: str
    max_tokens: int | None
    model: str | None  # None: the trace's own model
    seed: int
    policy: str
    params: tuple = ()  # sorted (name, value) pairs; exits as a tuple of depths
    des_pps: tuple = ()  # record the work for the DES on these stage counts (empty: lockstep only)
    max_seqs: int | None = None  # None: every sequence
    seqs: tuple | None = None  # these sequences (indices, after max_seqs) only; None: all (tune's samples)


@dataclass
class RowSpec:
    """The rows of one (trace, model, policy, parameters): one per hardware configuration."""

    fields: dict  # key fields other than the hardware ones
    jobs: list  # the replay, or a hindsight policy's candidates
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
    traces: dict = field(default_factory=dict)  # trace file name -> {"ceiling": L / mean EAD, "synthetic"}


def _positive(flag: str, values: list) -> list:
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f"{flag}: {bad[0]} must be >= 1")
    return values


def default_traces_glob() -> str:
    """The default traces in `traces/` of the working directory if there is such a folder, else beside
    the package."""
    here = [f"traces/{name}" for name in DEFAULT_TRACES]
    if Path("traces").is_dir():
        return ",".join(here)
    root = Path(__file__).resolve().parents[2]
    return ",".join(str(root / p) for p in here)


def find_traces(patterns: str) -> list[str]:
    paths = []
    for pattern in csv_list("--traces", patterns):
        found = sorted(p for p in glob.glob(pattern) if not os.path.isdir(p))
        if not found:
            raise UserError(f"--traces {pattern!r}: no file matches")
        paths += [p for p in found if p not in paths]
    return paths


@lru_cache(maxsize=32)
def loaded(path: str) -> Trace:
    return load_trace(path)


@lru_cache(maxsize=32)
def prepared(path: str, max_tokens: int | None, model: str | None, max_seqs: int | None = None,
             seqs: tuple | None = None, flag: str = "--models") -> tuple[Trace, bool]:
    """The trace a job replays (cut, sampled, then mapped onto `model`, named by `flag`), cached per process."""
    trace = first_tokens(first_seqs(loaded(path), max_seqs), max_tokens)
    return for_model(trace if seqs is None else pick_seqs(trace, seqs), model, flag=flag)


def _hardware(model_name: str, hw_grid: list, notes: list, heads: str, path: str, own_model: bool,
              layers: int, arch: dict, profile=None) -> list:
    """The hardware configurations the model can run on. A trace's own model outside the catalog (a
    dexref recording of another model) is priced from its meta.arch; a catalog model of another depth
    than the trace cannot be priced: one note, naming the field."""
    flag = f"{path}: meta.model" if own_model else "--models"
    arch = arch if own_model else None
    try:
        pricing.catalog_model(model_name, flag, path, layers, arch)
    except UserError as e:
        said = f"skipped: {e}" if path in str(e) else f"skipped {path}: {e}"
        notes.append(said + ("; or price it as a catalog model with --models NAME" if own_model else ""))
        return []
    out = []
    for gpu, tp, pp, batch in hw_grid:
        try:
            out.append(pricing.hardware(model_name, gpu, tp, pp, batch, model_flag=flag, heads=heads, where=path,
                                        arch=arch, profile=profile))
        except UserError as e:
            notes.append(f"skipped {model_name} on {gpu} tp={tp} pp={pp} batch={batch}: {e}")
    return out


def _hardware_axes(cfg: SweepConfig) -> list[tuple]:
    """(gpu, tp, pp, batch) for every hardware configuration of the grid; unknown GPUs are errors."""
    gpus = csv_list("--gpus", cfg.gpus)
    for g in gpus:
        try:
            get_gpu(g)
        except UserError as e:
            raise UserError(f"--gpus: {e}") from None
    tps, pps, batches = (_positive(f, csv_list(f, v, int)) for f, v in
                         (("--tp", cfg.tp), ("--pp", cfg.pp), ("--batch", cfg.batch)))
    return [(g, tp, pp, b) for g in gpus for tp in tps for pp in pps for b in batches]


def _schedule_axes(cfg: SweepConfig) -> list:
    """[(scheduler, arrival spec or None)] in grid order; des flags need des."""
    scheds = csv_list("--scheduler", cfg.scheduler)
    for sch in scheds:
        if sch not in des.SCHEDULERS:
            raise UserError(f"--scheduler: unknown scheduler {sch!r} (known: {', '.join(des.SCHEDULERS)})")
    arrivals = csv_list("--arrival", cfg.arrival)
    if "des" not in scheds and (cfg.requests is not None or cfg.arrival != SweepConfig.arrival):
        raise UserError(f"--{'requests' if cfg.requests is not None else 'arrival'}: needs --scheduler des")
    for a in arrivals:
        des.parse_load(a, cfg.requests, 1)  # the syntax; each batch size is checked by its row
    out = []
    for sch in dict.fromkeys(scheds):
        out += [("lockstep", None)] if sch == "lockstep" else [("des", a) for a in dict.fromkeys(arrivals)]
    return out


def _job(base: Job, name: str, params: dict) -> Job:
    return Job(base.trace, base.max_tokens, base.model, base.seed, name, tuple(sorted(params.items())),
               base.des_pps, base.max_seqs, base.seqs)


def _policy_rows(trace: Trace, base: Job, spec, axes: dict, notes: list, where: str):
    """(key fields, jobs) of every configuration of one policy on one prepared trace, in grid order."""
    combos = [({"policy": spec.name}, {})]  # (row fields, the policy's parameter values)
    for name in spec.params:
        if name == "exits":
            values = []
            for text in axes["exits"]:
                exits = depth_sets.recorded(text, trace.L, trace.depths, order=settle_order(trace))
                if exits is None:
                    notes.append(f"skipped --exits {text} on {where}: not all of its depths are recorded")
                else:
                    values.append((text, exits))
        elif name == spec.search:  # the policy searches the whole axis itself
            values = [(",".join(map(str, axes[name])), tuple(axes[name]))]
        else:
            resolved = registry.full_params(spec, {}, trace.L, trace.depths)[name]
            values = [(resolved, resolved) if v is None else (v, v) for v in axes[name]]
        column = spec.search_column if name == spec.search else name
        combos = [({**f, column: shown}, {**p, name: v}) for f, p in combos for shown, v in values]
    for fields, params in combos:
        if spec.hindsight:
            exits = params.pop("exits", tuple(int(d) for d in trace.depths))
            full = registry.full_params(spec, params, trace.L, trace.depths)
            jobs = [_job(base, n, p) for n, p in spec.candidates(trace.L, list(exits), full)]
        else:
            jobs = [_job(base, spec.name, params)]
            _check(trace, spec.name, params)
        yield fields, jobs


def _check(trace: Trace, name: str, params: dict) -> None:
    """A configuration's values are allowed and its exits recorded: one line now, before any replay."""
    own = {k: v for k, v in params.items() if k != "exits"}
    policy = registry.make_policy(name, trace.L, exits=params.get("exits"), depths=trace.depths, **own)
    bad = unrecorded(trace, policy.exits)
    if bad:
        given = [PARAMS[k].flag for k in own if PARAMS[k].on_model is not None]  # (--exits sets were filtered)
        raise UserError(f"{given[0] if given else '--policies ' + name} {bad[0]}: not a recorded depth of "
                        f"{trace.path} (recorded: {','.join(map(str, trace.depths))})")


def build_grid(cfg: SweepConfig) -> Grid:
    """Every row spec of the cross product, in grid order; combinations that cannot run become notes."""
    policies = [registry.get(p, "--policies") for p in csv_list("--policies", cfg.policies)]
    axes = parse_axes(cfg.axes)
    hw_grid = _hardware_axes(cfg)
    profile = None if cfg.profile is None else load_profile(cfg.profile)
    schedules = _schedule_axes(cfg)
    lockstep = any(s == "lockstep" for s, _ in schedules)
    # the DES needs the work recorded at its stage boundaries
    des_pps = tuple(sorted({pp for _, _, pp, _ in hw_grid})) if len(schedules) > lockstep else ()
    max_tokens, max_seqs = cfg.max_tokens or None, cfg.max_seqs or None
    specs, notes, traces = [], [], {}
    for path in find_traces(cfg.traces or default_traces_glob()):
        for model_arg in csv_list("--models", cfg.models):
            model = None if model_arg == "trace" else model_arg
            trace, rescaled = prepared(path, max_tokens, model, max_seqs)
            traces.setdefault(os.path.basename(path), {"ceiling": ceiling(trace),
                                                       "synthetic": bool(trace.meta.get("synthetic"))})
            name = trace.meta.get("model")
            hardware = _hardware(name, hw_grid, notes, trace.meta["heads"], path, model is None, trace.L,
                                 trace.meta["arch"], profile)
            if not hardware:
                continue
            base = Job(path, max_tokens, model, cfg.seed, "ar", des_pps=des_pps, max_seqs=max_seqs)
            # the checksum in the key: a resumed sweep never mixes in rows of a changed file of the same name
            common = {"trace": os.path.basename(path), "trace_sha256": loaded(path).meta["sha256"], "model": name,
                      "max_tokens": max_tokens, "max_seqs": max_seqs, "seed": cfg.seed}
            where = f"{common['trace']} ({name})"
            for spec in policies:
                for fields, jobs in _policy_rows(trace, base, spec, axes, notes, where):
                    specs.append(RowSpec({**common, **fields}, jobs, base, hardware, {"depth_rescaled": rescaled},
                                         schedules, cfg.requests, trace.n_seqs))
    _check_exit_sets(axes["exits"], specs, policies, trace)
    return Grid(specs, notes, traces)


def _check_exit_sets(texts: list, specs: list, policies: list, trace: Trace) -> None:
    """An exit set named by depths that no trace of the sweep records is a mistake: one line, not a note
    per trace (the default sets and `all`, `every:N` fit some traces and not others)."""
    if not any("exits" in p.params for p in policies):
        return
    used = {s.fields.get("exits") for s in specs}
    for text in texts:
        if text not in used and not text.startswith(("every:", "settle:")) and text != "all":
            raise UserError(f"--exits {text}: no trace of the sweep records all of these depths (e.g. {trace.path} "
                            f"records {','.join(map(str, trace.depths))})")
