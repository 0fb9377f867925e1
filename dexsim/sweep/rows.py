"""Replaying a sweep's jobs and pricing their rows: one row per hardware configuration and scheduler
of a RowSpec, keyed by the fields that name it (`row_key`), with the columns of DESIGN.md section 5."""
from __future__ import annotations

import math

import numpy as np

from dexsim.core import registry
from dexsim.core.lattice import ACCEPTANCE, COUNTER_NAMES, acceptance
from dexsim.core.params import PARAMS
from dexsim.des import simulate as des
from dexsim.des.plan import compile_plan
from dexsim.des.record import record
from dexsim.hardware import pricing
from dexsim.replay.executor import result
from dexsim.sweep.grid import Job, RowSpec, prepared

COUNTERS = COUNTER_NAMES


def key_fields() -> tuple:
    """What names a row, in order: the trace, model and hardware, the policy and every parameter, and
    the search columns of hindsight policies."""
    searched = [s.search_column for s in registry.REGISTRY.values() if s.search_column]
    return ("trace", "trace_sha256", "model", "max_tokens", "max_seqs", "seed", "gpu", "tp", "pp", "batch",
            "scheduler", "arrival", "requests", "policy", *PARAMS, *dict.fromkeys(searched))


def columns() -> tuple:
    """The output columns, in order. Parameters a policy does not have are empty (null in JSON)."""
    return ("key", *key_fields(), "depth_rescaled", "oracle_policy", *COUNTERS, *ACCEPTANCE, "output_matches_trace",
            "sim_seconds", "tokens_per_s", "speedup_vs_ar", "p50_token_latency_s", "p99_token_latency_s",
            "utilization", "profile_extrapolated")


_INT, _NUM, _STR, _BOOL, _NULL = (int,), (int, float), (str,), (bool,), (type(None),)
_KINDS = {int: _INT, float: _NUM, str: _STR}


def column_types() -> dict:
    """Each column's JSON types: what a row read back (a resumed sweep, a plot) must hold."""
    out = {c: _NUM + _NULL for c in columns()}  # the timed figures: null where the scheduler has none
    out.update(key=_STR, trace=_STR, trace_sha256=_STR, model=_STR, max_tokens=_INT + _NULL, max_seqs=_INT + _NULL,
               seed=_INT, gpu=_STR, tp=_INT, pp=_INT, batch=_INT, scheduler=_STR, arrival=_STR + _NULL,
               requests=_INT + _NULL, policy=_STR, depth_rescaled=_BOOL, oracle_policy=_STR + _NULL,
               output_matches_trace=_BOOL, sim_seconds=_NUM, tokens_per_s=_NUM, speedup_vs_ar=_NUM,
               utilization=(list,) + _NULL,  # des: one share per pipeline stage
               profile_extrapolated=_BOOL + _NULL)  # null: priced by the roofline
    out.update({name: _KINDS[p.kind] + _NULL for name, p in PARAMS.items()})
    out.update({s.search_column: _STR + _NULL for s in registry.REGISTRY.values() if s.search_column})
    out.update({c: _INT for c in COUNTERS})
    out.update({c: _NUM for c in ACCEPTANCE})  # every row commits at least one token
    return out


def field_problem(name: str, value, types: tuple) -> str | None:
    """What is wrong with one cell, or None; bool is an int in Python, never a count here."""
    if isinstance(value, list) and list in types:
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return None
        return f"field {name}: {value!r} is not a list of numbers"
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        if isinstance(value, float) and math.isnan(value):
            return f"field {name}: NaN is not a result"
        if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
            return f"field {name}: {value} is out of range"
        if name in COUNTERS and value < 0:
            return f"field {name}: {value!r} is negative"
        return None
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null",
             list: "a list of numbers"}
    wanted = " or ".join(names[t] for t in types if not (t is int and float in types))
    return f"field {name}: {value!r} is not {wanted}"


def row_problem(row: dict) -> str | None:
    """What is wrong with a whole result row (the columns, their types, the key), or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    if set(row) != set(columns()):
        return "other columns than this version writes"
    for name, types in column_types().items():
        problem = field_problem(name, row[name], types)
        if problem:
            return problem
    return None


def run_job(job: Job) -> tuple[dict, pricing.Tally, object]:
    """Replay one job (in a worker process or in this one): its result, Tally and (for the DES) WorkLog."""
    trace, _ = prepared(job.trace, job.max_tokens, job.model, job.max_seqs, job.seqs)
    params = dict(job.params)
    exits = params.pop("exits", None)
    policy = registry.make_policy(job.policy, trace.L, exits=exits, depths=trace.depths, **params)
    if job.des_pps:
        lat, tally, log = record(trace, policy, seed=job.seed, pps=job.des_pps)
    else:
        lat, tally, log = *pricing.replay_tally(trace, policy, seed=job.seed), None
    return result(trace, lat, policy), tally, log


def row_key(fields: dict) -> str:
    return "|".join(f"{k}={fields[k]}" for k in key_fields() if fields.get(k) is not None)


def _configs(spec: RowSpec):
    """(model, hardware, scheduler, load) of every row of a spec, in grid order; load None: lockstep."""
    for model, hw in spec.hardware:
        for sched, arrival in spec.schedules:
            load = (None if sched == "lockstep"
                    else des.parse_load(arrival, spec.requests, hw.batch, spec.fields["seed"]))
            yield model, hw, sched, load


def _hw_fields(hw, sched: str = "lockstep", load=None, n_seqs: int = 1) -> dict:
    out = {"gpu": hw.gpu.name, "tp": hw.tp, "pp": hw.pp, "batch": hw.batch, "scheduler": sched}
    if load is not None:
        out.update(arrival=load.spec(), requests=load.requests or n_seqs)
    return out


def spec_rows(spec: RowSpec) -> dict:
    """Each row key of a spec and the fields it names, in grid order."""
    out = {}
    for _, hw, sch, load in _configs(spec):
        fields = {**spec.fields, **_hw_fields(hw, sch, load, spec.n_seqs)}
        out[row_key(fields)] = fields
    return out


def spec_keys(spec: RowSpec) -> list[str]:
    return list(spec_rows(spec))


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


def make_rows(spec: RowSpec, done: dict, skip: set, cache: dict | None = None,
              notes: list | None = None) -> list[dict]:
    """The rows of a spec whose replays are done, for every configuration not in `skip`. A row priced
    from a profile says whether anything of it lies beyond the profile's grid (`profile_extrapolated`);
    what does is added to `notes`."""
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
        row = {c: None for c in columns()}
        row.update(fields, **spec.extra, key=key, **{c: res[c] for c in COUNTERS})
        row["output_matches_trace"] = res["output_matches_trace"]
        row["exits"] = spec.fields.get("exits") or res["exits"]
        if registry.get(spec.fields["policy"]).hindsight:  # which candidate it picked here, and its parameters
            row["oracle_policy"] = res["policy"]
            row.update({k: res.get(k) for k in registry.get(res["policy"]).params if k != "exits"})
        if load is None:
            priced = pricing.priced_fields(tally, ar_tally, model, hw)
        else:
            ar = _simulated(cache, spec.ar, done[spec.ar][2], model, hw, load)
            row.update(des.request_counters(log, load), **sims[best].fields())
            row["speedup_vs_ar"] = sims[best].tokens_per_s / ar.tokens_per_s
            priced = pricing.profile_fields(hw, sims[best].extrapolated, ar.extrapolated)
        row.update((k, v) for k, v in priced.items() if k in row)
        if notes is not None:
            notes += [n for n in priced.get("profile_notes", ()) if n not in notes]
        row.update(acceptance(row))  # of the row's own counters (the DES counts each simulated request)
        rows.append(row)
    return rows
