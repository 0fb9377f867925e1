"""Every input either works or gets one line: a property over every CLI here.

Each test drives one command (`python -m dexsim replay`, `sweep`, `synth`, `analyze`, `cost`, `gpus`,
`models`, `calibrate`; `python -m viz animate`, `sweep`, `trace`; the cheap `python -m dexref` checks;
`python -m proofs` flags) with random flag values (types, signs, huge sizes, unicode, missing paths,
folders, unwritable places) and with random damage to a valid trace, results file and events file,
byte by byte or field by field. Whatever it draws: exit 0 with valid output, or exit 2 with exactly one
stderr line that names a flag, file or field that was involved. Never a traceback, never exit 1.

The commands run in-process (`main(argv)`, clirun.py) for speed; a few real processes at the end check
the same rule end to end. Under the `ci` profile the whole module takes well under a minute; the
`thorough` profile draws 13 times as many examples.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clirun import check_clean, run_cli
from strategies import examples
from dexsim.config import one_line
from dexsim.sweep.rows import row_problem
from dexsim.traces.format import ARRAYS, Trace, load_trace, save_trace, trace_checksum
from dexsim.traces.synth import synth_trace

ROOT = Path(__file__).resolve().parents[2]


def props(n: int):
    """`n` examples under `ci` (scaled for the other profiles), no deadline: a draw may run a small replay."""
    return settings(max_examples=examples(n), deadline=None, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The valid inputs every draw starts from, and the places a path can point to."""
    d = tmp_path_factory.mktemp("props")
    trace = d / "small.npz"
    save_trace(synth_trace("smollm2-135m", 2, 10, depths="every:6", seed=1), trace)
    results = d / "results"
    assert run_cli("dexsim", ["sweep", "--traces", trace, "--policies", "ar,dex", "--explorers", "2",
                              "--priorities", "eager", "--exits", "all", "--gpus", "l4-24gb", "--pp", "1,2",
                              "--scheduler", "lockstep", "--jobs", "1", "--out", results]).rc == 0
    events = d / "events.npz"
    assert run_cli("dexsim", ["replay", "--trace", trace, "--policy", "dex", "-k", "2", "--events", events]).rc == 0
    folder = d / "a-folder"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: /sys refuses new files to everyone
        readonly = Path("/sys")
    else:
        readonly = d / "read-only"
        readonly.mkdir()
        readonly.chmod(0o555)
    return dict(dir=d, trace=str(trace), results=results, events=str(events), folder=str(folder),
                readonly=str(readonly), counter=itertools.count())


def fresh(world, suffix: str) -> Path:
    """A new path in the test folder, unique to this draw."""
    return world["dir"] / f"draw{next(world['counter'])}{suffix}"


# ---------------------------------------------------------------------------- strategies

# text a shell can pass: any unicode but NUL, including the surrogate escapes of non-UTF-8 argv bytes
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
               | st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00, 7)]), max_size=12)
WILD_INT = st.one_of(
    st.sampled_from(["-1", "0", "-0", "1", "1.5", "1e9", "nan", "inf", "", " ", "٣", "0x10", "1_0",
                     str(2**31), str(2**32), str(2**63), str(2**64), str(-2**63), "9" * 40]),
    st.integers(-2**70, 2**70).map(str), TEXT)
WILD_FLOAT = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "-0.0", "1e308", "1e-320", "2", "0.5", "x", "1,2", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr), TEXT)
WILD_TEXT = st.one_of(TEXT, st.sampled_from(["", ",", ",,", "all", "every:0", "every:-1", "every:x", "1,2,3",
                                             "0", "31", "99999999999", "beta:", "fixed:9e99", "-"]))
SMALL_INT = st.integers(0, 6).map(str)


PARTS = {}  # id of a pick() strategy -> (its valid values, its wild ones, itself: alive, so ids stay unique)


def pick(valid, wild=None):
    """A flag value: usually a valid one, often a wild one."""
    wild = wild if wild is not None else WILD_TEXT
    strategy = st.one_of(valid, valid, wild)
    PARTS[id(strategy)] = (valid, wild, strategy)
    return strategy


def mostly(strategy):
    """A pick() strategy drawn valid three times in four (for the arguments every run needs)."""
    valid, _, _ = PARTS[id(strategy)]
    return st.integers(0, 3).flatmap(lambda i: valid if i else strategy)


def path_to(world, *valid: str, suffix: str = ".npz"):
    """A path: one of `valid`, or missing, a folder, unwritable, empty, odd text, /dev/null."""
    d = world["dir"]
    return st.one_of(st.sampled_from(valid) if valid else st.nothing(),
                     st.sampled_from([str(d / f"missing{suffix}"), world["folder"], f"{world['readonly']}/x{suffix}",
                                      "", "/dev/null", f"{world['trace']}/x{suffix}"]),
                     TEXT.map(lambda t: str(d / (t.replace("/", "_") or "_"))))


@st.composite
def flags(draw, table: dict) -> list:
    """Some of the flags in `table` (flag -> strategy of its value; None: a switch), in a random order:
    all of them valid, exactly one wild, or each one either (so that many draws run and many do not)."""
    chosen = draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=min(len(table), 5)))
    mode = ["valid", "valid", "one", "any"][draw(st.integers(0, 3))]
    wild_one = draw(st.sampled_from(chosen)) if chosen and mode == "one" else None
    argv = []
    for f in chosen:
        if table[f] is None:
            argv.append(f)
            continue
        valid, wild, _ = PARTS.get(id(table[f]), (table[f], table[f], None))
        strategy = {"valid": valid, "one": wild if f == wild_one else valid, "any": table[f]}[mode]
        argv += [f, draw(strategy)]
    return argv


def damage_bytes(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, at, value in ops:
        at = at % max(len(b), 1)
        if op == "flip" and b:
            b[at] ^= value or 1
        elif op == "cut":
            del b[at:]
        elif op == "insert":
            b[at:at] = bytes([value])
        elif op == "drop" and b:
            del b[at]
    return bytes(b)


BYTE_OPS = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "drop"]), st.integers(0, 2**31),
                              st.integers(0, 255)), min_size=1, max_size=4)
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                          | TEXT, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                          max_leaves=5)


def _raw_trace(path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(str(arrays.pop("meta")))


@st.composite
def damaged_trace(draw, world) -> str:
    """The valid trace, damaged: its bytes, a meta field (checksum made right again) or an array value."""
    path = fresh(world, ".npz")
    how = draw(st.sampled_from(["bytes", "meta", "arch", "array"]))
    if how == "bytes":
        path.write_bytes(damage_bytes(Path(world["trace"]).read_bytes(), draw(BYTE_OPS)))
        return str(path)
    arrays, meta = _raw_trace(world["trace"])
    if how == "meta":
        meta[draw(st.sampled_from(sorted(meta)))] = draw(JSON_VALUE)
    elif how == "arch":
        meta["arch"][draw(st.sampled_from(sorted(meta["arch"])))] = draw(
            st.one_of(JSON_VALUE, st.integers(-2**64, 2**100), st.sampled_from([0, 1, 2**15, 2**31, 10**30])))
    else:
        name = draw(st.sampled_from(sorted(ARRAYS)))
        a = arrays[name].copy()
        if a.size:
            flat = a.reshape(-1)
            info = np.iinfo(a.dtype) if a.dtype.kind == "i" else np.finfo(a.dtype)
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([info.min, info.max, 0, -1, 1]))
        arrays[name] = a
    if draw(st.booleans()) and isinstance(meta, dict):  # a right checksum, so the deeper checks are reached
        try:
            meta["sha256"] = trace_checksum(Trace(**{k: arrays[k] for k in ARRAYS}, meta=meta))
        except (TypeError, ValueError):
            pass
    np.savez(path, **arrays, meta=np.array(json.dumps(meta)))
    return str(path)


@st.composite
def damaged_results(draw, world) -> Path:
    """A copy of the results folder whose sweep.jsonl is damaged: bytes, a field of a row, or a row."""
    out = fresh(world, "-results")
    out.mkdir()
    lines = (world["results"] / "sweep.jsonl").read_bytes().splitlines(keepends=True)
    how = draw(st.sampled_from(["bytes", "field", "field", "line"]))
    if how == "bytes":
        data = damage_bytes(b"".join(lines), draw(BYTE_OPS))
    else:
        i = draw(st.integers(0, len(lines) - 1))
        row = json.loads(lines[i])
        if how == "field":
            row[draw(st.sampled_from(sorted(row)))] = draw(JSON_VALUE)
        else:
            row = draw(JSON_VALUE)
        lines[i] = (json.dumps(row) + "\n").encode()
        data = b"".join(lines)
    (out / "sweep.jsonl").write_bytes(data)
    return out


@st.composite
def damaged_events(draw, world) -> str:
    path = fresh(world, ".npz")
    how = draw(st.sampled_from(["bytes", "field", "meta"]))
    if how == "bytes":
        path.write_bytes(damage_bytes(Path(world["events"]).read_bytes(), draw(BYTE_OPS)))
        return str(path)
    with np.load(world["events"]) as z:
        ev, meta = z["events"].copy(), json.loads(str(z["meta"]))
    if how == "field":
        field = draw(st.sampled_from(ev.dtype.names))
        info = np.iinfo(ev.dtype[field]) if ev.dtype[field].kind in "iu" else np.finfo(ev.dtype[field])
        at = draw(st.lists(st.integers(0, len(ev) - 1), min_size=1, max_size=3))
        value = draw(st.sampled_from([info.min, info.max, 0, -1, 1, 2, 31, 999]))
        ev[field][at] = np.array(value).astype(ev.dtype[field])  # wrapped into the field's type
    else:
        meta[draw(st.sampled_from(sorted(meta)))] = draw(JSON_VALUE)
    np.savez(path, events=ev, meta=np.array(json.dumps(meta)))
    return str(path)


# ---------------------------------------------------------------------------- the property

def involved(argv: list) -> list:
    """What a refusal may name: a flag given, a path or a name given as a value (`llama2-70b`: the model
    of --model), or, for a missing flag, the word `required`."""
    flags_given = [a for a in argv if a.startswith("-") and len(a) > 1]
    flags_given += ["--explorers"] if "-k" in argv else []  # -k is --explorers
    values = [a for a in argv if a not in flags_given and len(a) > 2 and any(c.isalpha() for c in a)]
    files = [f"error: {a}:" for a in argv if a not in flags_given]  # FILE: field: problem, whatever its name
    return [one_line(n) for n in flags_given + values + files] + ["required"]  # as an error line shows them


def holds(prog: str, argv: list, valid_output=None, positional=()):
    """The property, on one command line; `positional`: the names of its positional arguments."""
    run = run_cli(prog, argv)
    event(f"exit {run.rc}")  # --hypothesis-show-statistics: how many draws ran, how many were refused
    check_clean(run, involved(argv) + [one_line(p) for p in positional])
    if run.rc == 0 and valid_output is not None:
        valid_output(run)
    return run


# ---------------------------------------------------------------------------- dexsim

POLICY_FLAGS = {"--policy": pick(st.sampled_from(["ar", "dex", "layerskip", "adaptive", "oracle-select"])),
                "-k": pick(SMALL_INT, WILD_INT), "--buffer": pick(SMALL_INT, WILD_INT),
                "--priority": pick(st.sampled_from(["eager", "align", "deep", "confident"])),
                "--exits": pick(st.sampled_from(["all", "every:6", "6,12,30", "12"])),
                "--exit": pick(st.sampled_from(["6", "12", "24"]), WILD_INT),
                "--draft": pick(SMALL_INT, WILD_INT), "--threshold": pick(st.sampled_from(["0.5", "0.9"]), WILD_FLOAT)}
HW_FLAGS = {"--gpu": pick(st.sampled_from(["a100-sxm4-80gb", "l4-24gb", "cpu-local"])),
            "--model": pick(st.sampled_from(["smollm2-135m", "llama2-7b"])),
            "--tp": pick(st.sampled_from(["1", "3"]), WILD_INT), "--pp": pick(st.sampled_from(["1", "2"]), WILD_INT),
            "--batch": pick(st.sampled_from(["1", "2"]), WILD_INT),
            "--scheduler": pick(st.sampled_from(["lockstep", "des"])),
            "--arrival": pick(st.sampled_from(["closed", "poisson:5"])),
            "--requests": pick(st.sampled_from(["1", "3"]), WILD_INT),
            "--seed": pick(SMALL_INT, WILD_INT)}


def _json_out(run):
    json.loads(run.out)


@props(60)
@given(data=st.data())
def test_replay(world, data):
    trace = data.draw(st.one_of(st.just(world["trace"]), path_to(world, world["trace"]), damaged_trace(world)))
    extra = data.draw(flags({**POLICY_FLAGS, **HW_FLAGS, "--json": None,
                             "--events": path_to(world, str(fresh(world, ".npz"))),
                             "--trace-out": path_to(world, str(fresh(world, ".json")), suffix=".json")}))
    run = holds("dexsim", ["replay", "--trace", trace, *extra], _json_out if "--json" in extra else None)
    if run.rc == 0 and "--json" in extra:
        assert json.loads(run.out)["output_matches_trace"] is True


def _valid_trace_written(argv):
    def check(run):
        load_trace(argv[argv.index("--out") + 1])
    return check


@props(40)
@given(data=st.data())
def test_synth(world, data):
    argv = ["synth", "--model", data.draw(mostly(pick(st.sampled_from(["smollm2-135m", "gemma3-270m"])))),
            "--seqs", data.draw(mostly(pick(st.sampled_from(["1", "2"]), WILD_INT))),
            "--tokens", data.draw(mostly(pick(st.sampled_from(["1", "5"]), WILD_INT))),
            "--out", data.draw(st.one_of(st.just(str(fresh(world, ".npz"))), path_to(world)))]
    argv += data.draw(flags({"--depths": pick(st.sampled_from(["all", "every:5", "3,9"])),
                             "--ead": pick(st.sampled_from(["beta:2,1.2", "fixed:3", "uniform:1,4", "two-point:3,0.5",
                                                            f"empirical:{world['trace']}"])),
                             "--flicker": pick(st.sampled_from(["0", "0.3"]), WILD_FLOAT),
                             "--change-rate": pick(st.sampled_from(["0", "0.3"]), WILD_FLOAT),
                             "--prompt-len": pick(st.sampled_from(["1", "64"]), WILD_INT),
                             "--heads": pick(st.sampled_from(["lens", "trained:smollm2-135m-exits-r64"])),
                             "--seed": pick(SMALL_INT, WILD_INT)}))
    holds("dexsim", argv, _valid_trace_written(argv))


@props(30)
@given(data=st.data())
def test_analyze(world, data):
    trace = data.draw(st.one_of(st.just(world["trace"]), path_to(world, world["trace"]), damaged_trace(world)))
    extra = data.draw(flags({"--vs": st.one_of(path_to(world, world["trace"]), damaged_trace(world)), "--json": None}))
    holds("dexsim", ["analyze", "--trace", trace, *extra], _json_out if "--json" in extra else None)


@props(40)
@given(data=st.data())
def test_cost(world, data):
    argv = ["cost", "--model", data.draw(mostly(pick(st.sampled_from(["llama2-7b", "llama2-13b"])))),
            "--gpu", data.draw(mostly(pick(st.sampled_from(["a100-sxm4-80gb", "h100-sxm5-80gb"]))))]
    argv += data.draw(flags({"--tp": pick(st.sampled_from(["1", "2"]), WILD_INT),
                             "--pp": pick(st.sampled_from(["1", "4"]), WILD_INT),
                             "--batch": pick(st.sampled_from(["1", "8"]), WILD_INT),
                             "--context": pick(st.sampled_from(["128", "4096"]), WILD_INT), "--json": None}))
    holds("dexsim", argv, _json_out if "--json" in argv else None)


@props(10)
@given(data=st.data())
def test_catalogs_and_calibrate(world, data):
    command = data.draw(st.sampled_from(["gpus", "models", "calibrate"]))
    if command == "calibrate":  # always with --out: the default is the user's own profile
        seconds = data.draw(pick(st.sampled_from(["0.05"]), WILD_FLOAT))
        value = _float_or_none(seconds)
        if value is not None and 0.05 < value < float("inf"):
            seconds = "0.05"  # a valid but long budget is not what this test is about
        argv = ["calibrate", "--out", data.draw(path_to(world, str(fresh(world, ".json")), suffix=".json")),
                "--seconds", seconds]
    else:
        argv = [command, *data.draw(flags({"--json": None}))]
    holds("dexsim", argv, _json_out if "--json" in argv else None)


def _float_or_none(text):
    try:
        return float(text)
    except ValueError:
        return None


SWEEP_FLAGS = {"--policies": pick(st.sampled_from(["ar", "ar,dex", "layerskip", "oracle-select", "adaptive"])),
               "--explorers": pick(st.sampled_from(["1", "2,3"])), "--exits": pick(st.sampled_from(["all", "every:6"])),
               "--priorities": pick(st.sampled_from(["eager", "deep"])),
               "--drafts": pick(st.sampled_from(["0", "1,2"])),
               "--thresholds": pick(st.sampled_from(["0.9"]), WILD_FLOAT),
               "--buffer": pick(SMALL_INT, WILD_INT), "--exit": pick(st.sampled_from(["12"]), WILD_INT),
               "--gpus": pick(st.sampled_from(["l4-24gb", "a100-sxm4-80gb,cpu-local"])),
               "--models": pick(st.sampled_from(["trace", "llama2-7b"])),
               "--tp": pick(st.sampled_from(["1", "1,3"])), "--pp": pick(st.sampled_from(["1", "2"])),
               "--batch": pick(st.sampled_from(["1", "2"])), "--max-tokens": pick(SMALL_INT, WILD_INT),
               "--max-seqs": pick(SMALL_INT, WILD_INT), "--seed": pick(SMALL_INT, WILD_INT),
               "--scheduler": pick(st.sampled_from(["lockstep", "des", "lockstep,des"])),
               "--arrival": pick(st.sampled_from(["closed", "poisson:5"])), "--requests": pick(SMALL_INT, WILD_INT),
               "--jobs": pick(st.sampled_from(["1"]), WILD_INT), "--resume": None, "--force": None}


def _rows_valid(out: Path):
    def check(run):
        rows = json.loads((out / "sweep.json").read_text())
        assert rows and all(row_problem(r) is None for r in rows)
        assert [json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines()] == rows
    return check


@props(25)
@given(data=st.data())
def test_sweep(world, data):
    traces = data.draw(st.one_of(st.just(world["trace"]), path_to(world, world["trace"]), damaged_trace(world)))
    where = data.draw(st.sampled_from(["fresh", "fresh", "damaged", "path"]))
    out = {"fresh": lambda: str(fresh(world, "-out")), "damaged": lambda: str(data.draw(damaged_results(world))),
           "path": lambda: data.draw(path_to(world, suffix=""))}[where]()
    extra = data.draw(flags(SWEEP_FLAGS))
    # small by default: one GPU, lockstep (each draw may widen it)
    argv = ["sweep", "--traces", traces, "--out", out, "--gpus", "l4-24gb", "--pp", "1", "--scheduler", "lockstep",
            "--policies", "ar,dex", "--explorers", "2", "--priorities", "eager", "--exits", "all", "--jobs", "1",
            *extra]
    holds("dexsim", argv, _rows_valid(Path(out)))


# ---------------------------------------------------------------------------- viz

@props(8)
@given(data=st.data())
def test_viz_animate(world, data):
    pytest.importorskip("matplotlib")
    source = data.draw(st.sampled_from(["--trace", "--events"]))
    if source == "--trace":
        given_path = data.draw(st.one_of(path_to(world, world["trace"]), damaged_trace(world)))
    else:
        given_path = data.draw(st.one_of(path_to(world, world["events"]), damaged_events(world)))
    out = data.draw(st.one_of(st.just(str(fresh(world, ".gif"))), st.just(str(fresh(world, ".html"))),
                              path_to(world, suffix=".gif")))
    extra = data.draw(flags({"--seq": pick(st.sampled_from(["0", "1"]), WILD_INT),
                             "--start": pick(st.sampled_from(["0", "2"]), WILD_INT),
                             "--tokens": pick(st.sampled_from(["1", "2"]), WILD_INT),
                             "--fps": pick(st.sampled_from(["4"]), WILD_FLOAT),
                             "--dpi": pick(st.sampled_from(["20", "40"]), WILD_FLOAT),
                             "--max-frames": pick(st.sampled_from(["50"]), WILD_INT),
                             "--seed": pick(SMALL_INT, WILD_INT), "--tokenizer": pick(st.sampled_from(["ids"])),
                             "--policy": POLICY_FLAGS["--policy"], "-k": POLICY_FLAGS["-k"],
                             "--compare": pick(st.sampled_from(["ar,dex", "layerskip"])), "--no-labels": None}))
    if "--dpi" not in extra:
        extra += ["--dpi", "20"]  # small frames: this test is about the inputs, not the rendering
    if "--tokenizer" not in extra:
        extra += ["--tokenizer", "ids"]

    def written(run):
        assert Path(out).is_file() and Path(out).stat().st_size > 0
    holds("viz", ["animate", source, given_path, "--out", out, *extra], written)


@props(10)
@given(data=st.data())
def test_viz_sweep(world, data):
    pytest.importorskip("matplotlib")
    results = data.draw(st.one_of(damaged_results(world), path_to(world, str(world["results"]), suffix="")))
    extra = data.draw(flags({"--out": path_to(world, str(fresh(world, "-plots")), suffix=""),
                             "--traces": pick(st.just(world["trace"]))}))

    def written(run):
        assert all(Path(p).is_file() for p in run.out.split("\n") if p)  # a path may hold a \r
    holds("viz", ["sweep", str(results), *extra], written, positional=["results"])


@props(8)
@given(data=st.data())
def test_viz_trace(world, data):
    pytest.importorskip("matplotlib")
    trace = data.draw(st.one_of(path_to(world, world["trace"]), damaged_trace(world)))
    out = data.draw(st.one_of(st.just(str(fresh(world, ".png"))), path_to(world, suffix=".png")))
    holds("viz", ["trace", trace, *data.draw(st.lists(path_to(world, world["trace"]), max_size=1)), "--out", out],
          positional=["trace"])


# ---------------------------------------------------------------------------- dexref (checks before a model loads)

@props(15)
@given(data=st.data())
def test_dexref_cheap(world, data):
    pytest.importorskip("torch")
    command = data.draw(st.sampled_from(["record", "generate", "fetch"]))
    if command == "fetch":  # never a known name: that would download or verify a model
        argv = ["fetch", data.draw(TEXT.filter(lambda t: t not in ("smollm2-135m", "gemma3-270m", "humaneval",
                                                                    "mtbench", "sharegpt")))]
    elif command == "record":  # an --out that cannot be written, or a bad size: refused before the model loads
        bad = data.draw(st.sampled_from(["out", "limit", "batch", "cache-gib", "seed"]))
        argv = ["record", "--dataset", "humaneval", "--limit", "1", "--max-new-tokens", "1",
                "--out", data.draw(st.sampled_from([world["folder"], f"{world['readonly']}/t.npz", "",
                                                    f"{world['trace']}/t.npz"]))
                if bad == "out" else str(fresh(world, ".npz"))]
        if bad != "out":
            argv += [f"--{bad}", data.draw(st.sampled_from(["-1", "-5", str(2**64)] if bad == "seed" else ["0", "-1"]))]
    else:  # a prompt that cannot be read, or a model that is not there
        argv = ["generate", "--max-new-tokens", "1"]
        argv += data.draw(st.one_of(
            st.tuples(st.just("--prompt-file"), path_to(world, suffix=".txt")).map(list),
            st.tuples(st.just("--prompt"), st.just("x"), st.just("--model"),
                      TEXT.filter(lambda t: t not in ("smollm2-135m", "gemma3-270m"))).map(list),
            st.just(["--prompt", ""]), st.just([])))
    run = holds("dexref", argv, positional=["name", *argv[1:2]])
    assert run.rc == 2


# ---------------------------------------------------------------------------- proofs flags

@props(15)
@given(argv=st.lists(st.one_of(st.sampled_from(["--workers", "--json", "--quiet", "--bogus", "-x", "--"]),
                               WILD_INT), min_size=1, max_size=3))
def test_proofs_flags(argv):
    pytest.importorskip("z3")
    if "--workers" not in argv and not any(a.startswith("-") and a not in ("--json", "--quiet") for a in argv) \
            and all(a in ("--json", "--quiet") for a in argv):
        return  # a valid command line runs every proof (tests/proofs/ does that)
    if argv.count("--workers") == 1 and argv.index("--workers") + 1 < len(argv):
        value = argv[argv.index("--workers") + 1]
        if value.strip().lstrip("+").isdigit() and 1 <= int(value) <= (os.cpu_count() or 1) and \
                all(a in ("--json", "--quiet", "--workers", value) for a in argv):
            return  # valid again
    run = run_cli("proofs", argv)
    check_clean(run, [one_line(a) for a in argv if a] + ["''"])
    assert run.rc == 2


# ---------------------------------------------------------------------------- real processes

@pytest.mark.parametrize("argv", [
    ["-m", "dexsim", "replay", "--trace", "{trace}", "--seed", "-1"],
    ["-m", "dexsim", "replay", "--trace", "{bytes}"],
    ["-m", "dexsim", "sweep", "--traces", "{trace}", "--resume", "--out", "{results}", "--policies", "ar"],
    ["-m", "viz", "animate", "--events", "{bytes}", "--out", "{dir}/x.gif"],
    ["-m", "proofs", "--bogus"],
])
def test_real_processes_say_one_line(world, argv):
    """End to end, as a user runs them: exit 2, one line on stderr, no traceback."""
    bad = world["dir"] / "bytes.npz"
    bad.write_bytes(damage_bytes(Path(world["trace"]).read_bytes(), [("cut", 999, 0)]))
    args = [a.format(trace=world["trace"], bytes=bad, results=world["results"], dir=world["dir"]) for a in argv]
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr


def test_a_damaged_zip_is_not_a_traceback(world):
    """Hypothesis aside: the one damage that zipfile notices last (a bad CRC in a member)."""
    path = fresh(world, ".npz")
    with zipfile.ZipFile(world["trace"]) as z:
        names = z.namelist()
    data = bytearray(Path(world["trace"]).read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    for prog, argv in (("dexsim", ["replay", "--trace", path]), ("viz", ["animate", "--events", path, "--out",
                                                                          fresh(world, ".gif")])):
        run = run_cli(prog, argv)
        check_clean(run, [str(path)])
        assert run.rc == 2 and names
