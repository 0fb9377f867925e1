"""`tune`: the best configuration of every policy family for one trace on one machine, found by a search
rather than a grid.

- The search space is the registry's (dexsim/core/registry.py, params.py): every family that builds
  a policy object (hindsight ones pick in hindsight, which a search replaces) and each of its
  parameters: an exit set as a subset of the trace's recorded depths below L (L always in), a depth
  (LayerSkip's e) among the recorded ones, a choice among its choices, a number in its `space`. A
  flag per parameter (`--explorers 1,2,4`) narrows it to the values given.
- The optimizer is Optuna's TPE sampler (seeded), with a median pruner on growing prefixes of the
  sequences: a trial is replayed on the first quarter, half, then all of the tuning sequences, and
  stops early when its value so far is worse than the median of earlier trials at the same prefix.
- Overfitting: the trace's sequences are split in two halves by `--seed`; the search sees only one,
  and each family's winner is then replayed on the other, held-out half, its speedups reported beside
  the in-sample ones.
- One objective: every trial is a sweep row (a `RowSpec` replayed by `rows.run_job` and priced by
  `rows.make_rows`, the compiled core and the sweep's pricing or DES), and `score` reads the objective
  from that row. A configuration seen before (TPE proposes some twice) is not replayed again.
- Resumable: the study lives in `OUT/tune.journal` (Optuna's journal storage: an append-only log of
  every ask, report and tell, replayed into the study on load; a line torn by a kill is dropped); `--resume` continues to `--trials` finished trials, and the trials a kill
  interrupted are replayed again under their own parameters (enqueued), so none is lost or counted
  twice. The folder is locked as a sweep's is (dexsim/sweep/store.py).

Optuna is optional (`pip install -e '.[tune]'`), imported when a tune runs.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dexsim.config import check_writable, csv_list, option, parse_seed
from dexsim.core import registry
from dexsim.core.params import PARAMS
from dexsim.des import simulate as des
from dexsim.errors import UserError
from dexsim.hardware.pricing import HardwareConfig
from dexsim.sweep.grid import Job, RowSpec, _job, loaded, prepared
from dexsim.sweep.pool import Pool
from dexsim.sweep.rows import make_rows, run_job
from dexsim.traces.analyze import exit_set, settle_order
from dexsim.traces.transforms import pick_seqs
from dexsim.sweep.store import replace_file, lock_folder, unlock_folder

# objective -> (result column, direction)
OBJECTIVES = {"tokens_per_s": ("tokens_per_s", "maximize"), "p50": ("p50_token_latency_s", "minimize"),
              "p99": ("p99_token_latency_s", "minimize")}
DB, TRIALS_CSV, TRIALS_JSON, BEST_JSON = "tune.journal", "trials.csv", "trials.json", "best.json"
STUDY = "tune"
MIN_PREFIX = 4  # sequences: a trial is never judged on fewer (one sequence says little about a policy)
STARTUP_TRIALS = 25  # random trials before TPE models the space: enough to see every family a few times
POLISH = 0.2  # the last fifth of the trials: neighbours of the best so far, one parameter a step


def families() -> list[str]:
    """The policies a tune searches: every registered one with parameters and a policy object."""
    return [n for n, s in registry.REGISTRY.items() if s.params and not s.hindsight]


@dataclass(frozen=True)
class TuneConfig:
    """A tune's settings (the hardware is a HardwareConfig beside it)."""

    trace: str | None = option(None, "trace file to tune on (.npz)")
    policies: str = option(",".join(families()), "policy families to search, comma-separated")
    exits: str = option("all", "depths an exit set is drawn from: all (every recorded depth), every:N or d1,d2,...")
    scheduler: str = option("lockstep", "lockstep (priced in closed form) or des (discrete-event simulation)")
    arrival: str = option("closed", "des load: closed[:CLIENTS] or poisson:QPS")
    requests: int | None = option(None, "des: requests per evaluation (default: each sequence once)", kind=int)
    objective: str = option("tokens_per_s", "tokens_per_s (higher is better), p50 or p99 (per-token latency, "
                                            "lower is better; needs --scheduler des)")
    trials: int = option(100, "finished trials (complete or pruned) to reach, resumed ones included")
    max_tokens: int = option(32, "replay the first N tokens of each sequence (0: all)")
    max_seqs: int = option(0, "use the first N sequences of the trace (0: all), split in two halves")
    seed: int = option(0, "seed of the halves, the sampler and the off-path exit tokens", kind=parse_seed)
    jobs: int = option(1, "local worker processes")
    dask: str | None = option(None, "run the replays on the dask.distributed scheduler at this address "
                                    "(tcp://HOST:PORT) instead of --jobs local processes")
    out: str = option("tune", "result folder")
    resume: bool = option(False, "continue the tune in --out (its trials are kept, interrupted ones rerun)", kind=bool)
    axes: dict = field(default_factory=dict)  # policy parameter -> the values given to search among (text)

    def checked(self) -> "TuneConfig":
        if not self.trace:
            raise UserError("--trace: required")
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective {self.objective!r}: must be one of {', '.join(OBJECTIVES)}")
        if self.scheduler not in des.SCHEDULERS:
            raise UserError(f"--scheduler {self.scheduler!r}: must be one of {', '.join(des.SCHEDULERS)}")
        if self.objective != "tokens_per_s" and self.scheduler != "des":
            raise UserError(f"--objective {self.objective}: per-token latency needs --scheduler des")
        if self.scheduler != "des" and (self.requests is not None or self.arrival != TuneConfig.arrival):
            raise UserError(f"--{'requests' if self.requests is not None else 'arrival'}: needs --scheduler des")
        for flag, v, low in (("--trials", self.trials, 1), ("--jobs", self.jobs, 1), ("--max-tokens", self.max_tokens, 0),
                             ("--max-seqs", self.max_seqs, 0)):
            if v < low:
                raise UserError(f"{flag} {v}: must be >= {low}")
        check_writable("--out", self.out, folder=True)
        return self


def axis_flags() -> dict:
    """Each searchable parameter's tune flag (the sweep's axis flag where it has one: --explorers)."""
    return {n: (f"--{p.axis}" if p.axis else p.flag) for n, p in PARAMS.items() if n != "exits"}


@dataclass
class Setting:
    """A tune resolved against its trace: what every trial shares."""

    cfg: TuneConfig
    model: object
    hw: object
    base: Job  # the AR job, without a sample of sequences
    common: dict  # the row fields every trial shares
    rescaled: bool
    L: int
    depths: list  # recorded depths below L an exit set is drawn from
    exit_depths: list  # recorded depths below L (LayerSkip's e)
    values: dict  # parameter -> the values to search among (None: its whole space)
    policies: list
    settle: list  # recorded depths below L, most tokens settling there first (`settle_order`)
    halves: tuple  # (tune sequences, held-out sequences), indices into the prepared trace
    stages: list  # prefixes of the tuning half a trial is judged on

    def key(self) -> dict:
        """What a resumed study must share with this run."""
        c = self.cfg
        return {"trace": os.path.basename(c.trace), "trace_sha256": self.common["trace_sha256"],
                "model": self.common["model"], "gpu": self.hw.gpu.name, "tp": self.hw.tp, "pp": self.hw.pp,
                "batch": self.hw.batch, "scheduler": c.scheduler, "arrival": c.arrival if c.scheduler == "des" else None,
                "requests": c.requests, "objective": c.objective, "max_tokens": c.max_tokens, "max_seqs": c.max_seqs,
                "seed": c.seed, "policies": self.policies, "depths": self.depths,
                "values": {k: v for k, v in self.values.items() if v is not None}}


def resolve(cfg: TuneConfig, hw_cfg: HardwareConfig) -> Setting:
    """The setting of a tune: one line naming the flag for anything that cannot run."""
    if hw_cfg.gpu is None:
        raise UserError("--gpu: required (tune prices every trial on a machine)")
    policies = csv_list("--policies", cfg.policies)
    for name in policies:
        if name not in families():
            raise UserError(f"--policies: {name!r} is not a policy tune can search (searchable: {', '.join(families())})")
    max_tokens, max_seqs = cfg.max_tokens or None, cfg.max_seqs or None
    loaded(cfg.trace)
    trace, rescaled = prepared(cfg.trace, max_tokens, hw_cfg.model, max_seqs, flag="--model")
    model, hw = hw_cfg.resolve(trace.meta.get("model"), trace.meta.get("heads", "lens"), cfg.trace, trace.L,
                               arch=trace.meta.get("arch"))
    pool = exit_set(trace, cfg.exits)
    L = trace.L
    if cfg.scheduler == "des":
        des.parse_load(cfg.arrival, cfg.requests, hw.batch, cfg.seed)
    values = {}
    for name, flag in axis_flags().items():
        text = cfg.axes.get(name)
        if text is None:
            values[name] = None
            continue
        vals = list(dict.fromkeys(PARAMS[name].check(v, flag) for v in csv_list(flag, text, PARAMS[name].kind)))
        if PARAMS[name].on_model is not None:
            bad = [v for v in vals if v not in trace.depths]
            if bad:
                raise UserError(f"{flag} {bad[0]}: not a recorded depth of {cfg.trace} "
                                f"(recorded: {','.join(map(str, trace.depths))})")
        values[name] = vals
    n = trace.n_seqs
    if n < 2:
        given = f"--max-seqs {cfg.max_seqs}" if cfg.max_seqs else f"--trace {cfg.trace}"
        raise UserError(f"{given}: 1 sequence; tune needs 2 or more (one half to tune on, one held out)")
    perm = np.random.default_rng(cfg.seed).permutation(n)
    half = (n + 1) // 2
    tune_half, held = tuple(int(i) for i in perm[:half]), tuple(int(i) for i in perm[half:])
    least = min(half, MIN_PREFIX)
    stages = sorted({max(least, half // 4), max(least, half // 2), half})
    des_pps = (hw.pp,) if cfg.scheduler == "des" else ()
    base = Job(cfg.trace, max_tokens, hw_cfg.model, cfg.seed, "ar", des_pps=des_pps, max_seqs=max_seqs)
    common = {"trace": os.path.basename(cfg.trace), "trace_sha256": loaded(cfg.trace).meta["sha256"],
              "model": trace.meta.get("model"), "max_tokens": max_tokens, "max_seqs": max_seqs, "seed": cfg.seed}
    below = [int(d) for d in pool if d < L]
    # the profile of the tuning half only: the held-out half stays unseen
    settle = settle_order(pick_seqs(trace, tune_half))
    return Setting(cfg, model, hw, base, common, rescaled, L, below, [int(d) for d in trace.depths if d < L],
                   values, policies, settle, (tune_half, held), stages)


# ---------------------------------------------------------------------------- one evaluation

def row_spec(s: Setting, name: str, params: dict, seqs: tuple) -> RowSpec:
    """The sweep row of one configuration on a sample of sequences: what every trial is."""
    base = replace(s.base, seqs=tuple(seqs))
    shown = {k: (",".join(map(str, v)) if k == "exits" else v) for k, v in params.items()}
    sched = [("des", s.cfg.arrival)] if s.cfg.scheduler == "des" else [("lockstep", None)]
    return RowSpec({**s.common, "policy": name, **shown}, [_job(base, name, params)], base, [(s.model, s.hw)],
                   {"depth_rescaled": s.rescaled}, sched, s.cfg.requests, len(seqs))


_AR_DONE: dict = {}  # per process: the AR replay of each sample, and its DES runs (every trial's baseline)
_AR_CACHE: dict = {}


def evaluate(spec: RowSpec) -> tuple[dict, int]:
    """(row, replays made) of a row spec; the AR baseline of a sample is replayed once per process."""
    done, replays = {}, 0
    for job in dict.fromkeys([spec.ar, *spec.jobs]):
        if job == spec.ar and job in _AR_DONE:
            done[job] = _AR_DONE[job]
        else:
            done[job], replays = run_job(job), replays + 1
    _AR_DONE.setdefault(spec.ar, done[spec.ar])
    cache = dict(_AR_CACHE)
    row = make_rows(spec, done, set(), cache)[0]
    _AR_CACHE.update((k, v) for k, v in cache.items() if spec.ar in k)
    return row, replays


def score(row: dict, objective: str) -> float:
    """The objective's value in a result row: the one number the search compares."""
    v = row[OBJECTIVES[objective][0]]
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        raise UserError(f"--objective {objective}: the row has no finite {OBJECTIVES[objective][0]}")
    return float(v)


# ---------------------------------------------------------------------------- the search

def optuna_module():
    try:
        import optuna
    except ImportError:
        raise UserError("tune: needs optuna (pip install -e '.[tune]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's group, constant_liar
    return optuna


def suggest(trial, s: Setting) -> tuple[str, dict]:
    """A family and its parameters, drawn from the registry's space (narrowed by the flags given)."""
    name = trial.suggest_categorical("policy", s.policies)
    spec = registry.REGISTRY[name]
    params = {}
    for pname in spec.params:
        p, key = PARAMS[pname], f"{name}.{pname}"
        if pname == "exits":
            params[pname] = suggest_exits(trial, name, s)
        elif s.values.get(pname):
            params[pname] = trial.suggest_categorical(key, s.values[pname])
        elif p.on_model is not None:
            params[pname] = trial.suggest_categorical(key, s.exit_depths or [s.L])
        elif p.choices:
            params[pname] = trial.suggest_categorical(key, list(p.choices))
        elif p.space:
            low, high, *how = p.space
            log, step = how == ["log"], (how[0] if how and how != ["log"] else None)
            if p.kind is int:
                params[pname] = trial.suggest_int(key, low, high, log=log)
            else:
                params[pname] = round(trial.suggest_float(key, low, high, log=log, step=step), 6)
    return name, params


def suggest_exits(trial, name: str, s: Setting) -> tuple:
    """An exit set: how many depths below L (log-uniform, so small sets, where early exits pay, are
    tried as often as large ones), then each one among the recorded depths; L is always in."""
    if not s.depths:
        return (s.L,)
    n = trial.suggest_int(f"{name}.exits_n", 1, len(s.depths) + 1, log=True) - 1
    chosen = {trial.suggest_categorical(f"{name}.exit_{i}", s.depths) for i in range(n)}
    return (*sorted(chosen), s.L)


def guess_exit_sets(s: Setting, most: int = 3) -> list[tuple]:
    """Exit sets worth trying first (each without L): the 1, 2, ... `most` depths where most of the
    tuning half's tokens settle (`settle:N`), and evenly spaced ones of about 2, 4 and 8 depths (as
    `every:N` spaces them)."""
    order = [d for d in s.settle if d in s.depths]
    sets = [tuple(sorted(order[:n])) for n in range(1, min(most, len(order)) + 1)]
    for size in (2, 4, 8):
        step = -(-(len(s.depths) + 1) // (size + 1))  # (size + 1) gaps between 0 and L
        sets.append(tuple(s.depths[step - 1::step]))
    return [e for e in dict.fromkeys(sets) if e]


def first_guesses(s: Setting, most: int = 3) -> list[dict]:
    """The trials a search starts from: each family at its registry defaults on the trace's own
    profile: the exit sets of `guess_exit_sets` (LayerSkip: each of the `most` depths where most tokens
    settle). Values outside the space searched are left to the sampler."""
    order = [d for d in s.settle if d in s.exit_depths]
    exit_sets = guess_exit_sets(s, most)
    out = []
    for name in s.policies:
        spec = registry.REGISTRY[name]
        defaults = registry.full_params(spec, {}, s.L, s.exit_depths)
        fixed = {}
        for pname in spec.params:
            p, v = PARAMS[pname], defaults[pname]
            allowed = s.values.get(pname) or (p.choices if p.choices else None)
            if pname in ("exits",) or p.on_model is not None or v is None:
                continue
            if (allowed and v in allowed) or (not allowed and p.space and p.space[0] <= v <= p.space[1]):
                fixed[f"{name}.{pname}"] = v
        if "exits" in spec.params:
            for e in exit_sets:
                out.append({"policy": name, **fixed, f"{name}.exits_n": len(e) + 1,
                            **{f"{name}.exit_{i}": d for i, d in enumerate(e)}})
        elif "exit" in spec.params:
            out += [{"policy": name, **fixed, f"{name}.exit": d} for d in order[:most]
                    if not s.values.get("exit") or d in s.values["exit"]]
    return out


def neighbours(trial) -> list[dict]:
    """A trial's neighbours, as parameter values to enqueue: one integer or threshold a step up or down,
    one categorical value swapped for each other choice (an exit moved to the next recorded depth
    either side), one exit more (the sampler picks it) or the last one fewer. TPE leaves a winner a
    step or two off the best of its family; these steps close it."""
    categorical = optuna_module().distributions.CategoricalDistribution
    out = []
    for key, v in trial.params.items():
        if key == "policy" or key.endswith(".exits_n"):
            continue
        dist = trial.distributions[key]
        if isinstance(dist, categorical):
            choices = list(dist.choices)
            if key.split(".")[1].startswith("exit_"):  # the next recorded depth below and above
                i = choices.index(v)
                choices = choices[max(i - 1, 0):i + 2]
            out += [{**trial.params, key: c} for c in choices if c != v]
        else:
            step = getattr(dist, "step", None) or 1
            out += [{**trial.params, key: round(w, 6)} for w in (v - step, v + step) if dist.low <= w <= dist.high]
    n_key = f"{trial.params['policy']}.exits_n"
    if n_key in trial.params:
        n = trial.params[n_key]
        dist = trial.distributions[n_key]
        if n + 1 <= dist.high:
            out.append({**trial.params, n_key: n + 1})
        if n - 1 >= dist.low:
            out.append({k: w for k, w in trial.params.items() if k != f"{trial.params['policy']}.exit_{n - 2}"}
                       | {n_key: n - 1})
    return out


def config_key(name: str, params: dict) -> str:
    return json.dumps([name, sorted(params.items())])


class Search:
    """The ask-evaluate-tell loop: each trial's stages go to the pool as earlier ones finish, so every
    worker stays busy; configurations already evaluated are answered from memory."""

    def __init__(self, s: Setting, study, pool: Pool, optuna):
        self.s, self.study, self.pool, self.optuna = s, study, pool, optuna
        self.memo = {}  # config key -> {stage: (value, row fields)}
        self.active = {}  # trial number -> [trial, name, params, stage index]
        self.replays = 0
        for t in study.get_trials(deepcopy=False):
            for stage, rec in t.user_attrs.get("stages", {}).items():
                self.memo.setdefault(t.user_attrs["config"], {})[int(stage)] = rec

    def finished(self) -> int:
        states = (self.optuna.trial.TrialState.COMPLETE, self.optuna.trial.TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def run(self, total: int, bar=None) -> None:
        ended = self.finished()
        polished = set()  # trials whose neighbours were enqueued
        while True:
            if ended + len(self.active) >= total - int(POLISH * total):
                self._polish(total - ended - len(self.active), polished)
            while len(self.active) < self.pool.width and ended + len(self.active) < total:
                if self._start():
                    ended += 1
                    if bar is not None:
                        bar.update()
            if not self.active:
                return
            (number, stage), (row, replays) = self.pool.next()
            self.replays += replays
            self._record(number, stage, row, replays)
            if self._settle(number):
                ended += 1
                if bar is not None:
                    bar.update()

    def _polish(self, budget: int, polished: set) -> None:
        """Enqueue the unseen neighbours of the best complete trial, once per best, within the budget."""
        if self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.WAITING,)):
            return
        try:
            best = self.study.best_trial
        except ValueError:  # no complete trial yet
            return
        if best.number in polished:
            return
        polished.add(best.number)
        seen = set(self.memo)
        for params in neighbours(best):
            if budget <= 0:
                return
            try:
                key = config_key(*suggest(self.optuna.trial.FixedTrial(params), self.s))
            except ValueError:  # a new exit (exits_n + 1) the sampler will pick: unseen by construction
                key = None
            if key not in seen:
                self.study.enqueue_trial(params, user_attrs={"neighbour_of": best.number})
                seen.add(key)
                budget -= 1

    def _start(self) -> bool:
        """Ask for a trial and start it; True if it ended at once (every stage known)."""
        trial = self.study.ask()
        name, params = suggest(trial, self.s)
        trial.set_user_attr("config", config_key(name, params))
        trial.set_user_attr("params", {k: (",".join(map(str, v)) if k == "exits" else v) for k, v in params.items()})
        self.active[trial.number] = [trial, name, params, 0]
        return self._settle(trial.number)

    def _record(self, number: int, stage: int, row: dict, replays: int) -> None:
        _, name, params, _ = self.active[number]
        rec = {"value": score(row, self.s.cfg.objective), "tokens_per_s": row["tokens_per_s"],
               "speedup_vs_ar": row["speedup_vs_ar"], "p50": row["p50_token_latency_s"],
               "p99": row["p99_token_latency_s"], "exits": row["exits"], "replays": replays, "trial": number,
               "profile_extrapolated": row["profile_extrapolated"]}
        self.memo.setdefault(config_key(name, params), {})[stage] = rec

    def _settle(self, number: int) -> bool:
        """Move a trial on from what is known: report its stages, prune or finish it, or send its next
        stage to the pool. True when the trial ended."""
        trial, name, params, i = self.active[number]
        known = self.memo.get(config_key(name, params), {})
        stages = self.s.stages
        while i < len(stages) and stages[i] in known:
            rec = known[stages[i]]
            if rec["trial"] != number:  # answered from another trial's replay: none made here
                rec = {**rec, "replays": 0, "trial": number}
            attrs = dict(trial.user_attrs.get("stages", {}))
            attrs[str(stages[i])] = rec
            trial.set_user_attr("stages", attrs)
            trial.report(rec["value"], stages[i])
            i += 1
            self.active[number][3] = i
            if i == len(stages):
                self.study.tell(trial, rec["value"])
                del self.active[number]
                return True
            if trial.should_prune():
                self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
                del self.active[number]
                return True
        seqs = self.s.halves[0][:stages[i]]
        self.pool.submit(evaluate, row_spec(self.s, name, params, seqs), (number, stages[i]))
        return False


def open_study(s: Setting, out: Path, resume: bool, optuna):
    """The study in OUT/tune.db: a new one, or (resume) the one there, checked to be this setting's;
    trials a kill left running are failed and enqueued again under their own parameters."""
    if not resume:
        for f in (DB, TRIALS_CSV, TRIALS_JSON, BEST_JSON):
            (out / f).unlink(missing_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    # the folder's lock is ours: a journal lock file left behind is a killed run's, not a live writer's
    (out / f"{DB}.lock").unlink(missing_ok=True)
    path = str(out / DB)
    storage = optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    direction = OBJECTIVES[s.cfg.objective][1]
    sampler = optuna.samplers.TPESampler(seed=s.cfg.seed, n_startup_trials=STARTUP_TRIALS, multivariate=True, group=True,
                                         constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    key = s.key()
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=direction)
    if "setting" not in study.user_attrs:  # new, or a kill came before its setting was written
        study.set_user_attr("setting", key)
        queued = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)]
        for params in first_guesses(s):
            if params not in queued:
                study.enqueue_trial(params, user_attrs={"first_guess": True})
        return study
    old = study.user_attrs["setting"]
    for k in key:
        if old.get(k) != json.loads(json.dumps(key[k])):
            raise UserError(f"--out {out}: holds a tune of another setting ({k}: {old.get(k)!r}, now {key[k]!r}); "
                            f"use another --out, the same flags, or drop --resume")
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return study


# ---------------------------------------------------------------------------- results

TRIAL_COLUMNS = ("number", "state", "policy", "configuration", "value", "sequences", "tokens_per_s", "speedup_vs_ar",
                 "profile_extrapolated", "replays", *PARAMS)


def trial_rows(study, optuna) -> list[dict]:
    """Every finished trial: its parameters, its in-sample value at the last prefix it reached, pruned or not."""
    out = []
    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}
    for t in study.get_trials(deepcopy=False):
        if t.state not in states:
            continue
        stages = t.user_attrs.get("stages", {})
        last = max(stages, key=int) if stages else None
        rec = stages[last] if last else {}
        params = t.user_attrs.get("params", {})
        row = {c: None for c in TRIAL_COLUMNS}
        row.update(number=t.number, state=states[t.state], policy=t.params.get("policy"), value=rec.get("value"),
                   sequences=int(last) if last else None, tokens_per_s=rec.get("tokens_per_s"),
                   speedup_vs_ar=rec.get("speedup_vs_ar"), profile_extrapolated=rec.get("profile_extrapolated"),
                   replays=sum(r.get("replays", 0) for r in stages.values()),
                   **{k: v for k, v in params.items()})
        row["configuration"] = registry.describe({**row, "exits": rec.get("exits", params.get("exits"))})
        out.append(row)
    return out


def write_trials(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    replace_file(out / TRIALS_CSV, buf.getvalue())
    replace_file(out / TRIALS_JSON, json.dumps(rows, indent=1) + "\n")


def best_per_family(s: Setting, study, optuna, pool: Pool) -> tuple[list[dict], int]:
    """Each family's best complete trial, replayed on the held-out half; speedups against AR and against
    the best single-depth family (chosen in-sample) on both halves. Returns (entries, replays made)."""
    sign = 1 if OBJECTIVES[s.cfg.objective][1] == "maximize" else -1
    best = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        name = t.params["policy"]
        if name not in best or sign * t.value > sign * best[name].value:
            best[name] = t
    for name, t in best.items():
        params = json.loads(t.user_attrs["config"])[1]
        pool.submit(evaluate, row_spec(s, name, {k: tuple(v) if k == "exits" else v for k, v in params},
                                       s.halves[1]), name)
    held, replays = {}, 0
    for _ in best:
        name, (row, n) = pool.next()
        held[name], replays = row, replays + n
    entries = []
    for name in s.policies:
        if name not in best:
            continue
        t = best[name]
        rec = t.user_attrs["stages"][str(s.stages[-1])]
        h = held[name]
        entries.append({"policy": name, "configuration": registry.describe(h), "trial": t.number,
                        "params": t.user_attrs["params"], "single_depth": registry.REGISTRY[name].single_depth,
                        "in_sample": {"value": rec["value"], "tokens_per_s": rec["tokens_per_s"],
                                      "speedup_vs_ar": rec["speedup_vs_ar"],
                                      "profile_extrapolated": rec.get("profile_extrapolated")},
                        "held_out": {"value": score(h, s.cfg.objective), "tokens_per_s": h["tokens_per_s"],
                                     "speedup_vs_ar": h["speedup_vs_ar"],
                                     "profile_extrapolated": h["profile_extrapolated"]}})
    singles = [e for e in entries if e["single_depth"]]
    if singles:
        ref = max(singles, key=lambda e: sign * e["in_sample"]["value"])
        for e in entries:
            e["single_reference"] = ref["configuration"]
            for part in ("in_sample", "held_out"):
                e[part]["vs_single"] = e[part]["tokens_per_s"] / ref[part]["tokens_per_s"]
    return entries, replays


def tune(s: Setting, *, bar_factory=None, on_start=None) -> dict:
    """Run (or resume) the tune of setting `s` in its --out folder (locked meanwhile); returns best.json's
    contents."""
    optuna = optuna_module()
    out = Path(s.cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create ({e.strerror})") from None
    lock = lock_folder(out)
    try:
        if s.cfg.jobs > 1 and not s.cfg.dask:  # compile the core here once: the forked workers inherit it
            evaluate(row_spec(s, "ar", {}, s.halves[0][:s.stages[0]]))
        with Pool(s.cfg.jobs, s.cfg.dask) as pool:
            study = open_study(s, out, s.cfg.resume, optuna)
            search = Search(s, study, pool, optuna)
            if on_start is not None:
                on_start()
            before = search.finished()
            try:
                if bar_factory is None:
                    search.run(s.cfg.trials)
                else:
                    with bar_factory(total=s.cfg.trials, initial=min(before, s.cfg.trials)) as bar:
                        search.run(s.cfg.trials, bar)
            finally:
                write_trials(out, trial_rows(study, optuna))
            entries, held_replays = best_per_family(s, study, optuna, pool)
        rows = trial_rows(study, optuna)
        result = {"setting": s.key(), "halves": {"tune": list(s.halves[0]), "held_out": list(s.halves[1])},
                  "stages": s.stages, "trials": {"complete": sum(r["state"] == "complete" for r in rows),
                                                 "pruned": sum(r["state"] == "pruned" for r in rows)},
                  "replays": {"search": sum(r["replays"] for r in rows), "this_run": search.replays,
                              "held_out": held_replays},
                  "best": entries}
        replace_file(out / BEST_JSON, json.dumps(result, indent=1) + "\n")
        return result
    finally:
        unlock_folder(out, lock)
