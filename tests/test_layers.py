"""The one way through the house (DESIGN.md section 4), enforced: every import in dexsim, dexref, viz
and proofs goes from a later layer to an earlier one (or within a layer), nothing imports a CLI
module, and no modules import each other in a circle (imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dexsim", "dexref", "viz", "proofs")

# Each module's layer: the longest matching prefix decides. Data flows from the lowest layer up.
LAYERS = {
    "dexsim.errors": 0, "dexsim.config": 0, "dexsim.depths": 0,  # what everything uses
    "dexsim.specs": 1,  # models and GPUs: the catalog
    "dexsim.traces": 2,  # traces: format, transforms, synthesis, statistics
    "dexref.assets": 2, "dexref.model": 2, "dexref.exits": 2, "dexref.hf": 2, "dexref": 2,  # real models
    "dexsim.core": 3,  # the lattice core, policies and their registry
    "dexsim.replay": 4, "dexref.engine": 4, "dexref.record": 4, "dexref.load": 4,  # executors
    "dexref.testing": 4, "proofs": 4,
    "dexsim.hardware": 5, "dexref.emulate": 5, "dexref.profile": 5,  # emulation sums what pricing reads
    "dexsim.des": 6,  # pricing, then the discrete-event simulator
    "dexsim.sweep": 7,
    "dexsim.cli": 8, "dexref.cli": 8, "dexsim.__main__": 8, "dexref.__main__": 8,  # command lines
    "viz": 9,  # plots and animations, which read results and event logs
    "viz.cli": 10, "viz.__main__": 10,
}
CLI = ("dexsim.cli", "dexref.cli", "viz.cli")


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module}: in no layer (add it to LAYERS)"
    return LAYERS[best]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set) -> set[str]:
    """The project modules `name` imports (relative imports resolved; `from pkg import mod` is mod)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] in PACKAGES and t in known}
    return out - {name}


def graph() -> dict[str, set]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def against_the_flow(g: dict) -> list[str]:
    return sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                  for a, deps in g.items() for b in deps if layer(b) > layer(a))


def cli_imports(g: dict) -> list[str]:
    return sorted(f"{a} imports {b}" for a, deps in g.items() for b in deps
                  if b.startswith(CLI) and not a.startswith(CLI) and not a.endswith("__main__"))


def circles(g: dict) -> list[list[str]]:
    seen, on_path, out = set(), [], []

    def visit(n):
        if n in on_path:
            out.append(on_path[on_path.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        on_path.append(n)
        for m in sorted(g.get(n, ())):
            visit(m)
        on_path.pop()

    for n in sorted(g):
        visit(n)
    return out


def test_every_import_follows_the_data():
    bad = against_the_flow(graph())
    assert not bad, "\n".join(bad)


def test_nothing_imports_a_command_line():
    bad = cli_imports(graph())
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    bad = circles(graph())
    assert not bad, "\n".join(" -> ".join(c) for c in bad)


def test_the_checks_catch_what_they_are_for():
    g = graph()
    assert "dexsim.core.lattice" in g["dexsim.replay.executor"]  # imports are found, relative ones too
    assert "dexsim.traces.format" in g["dexsim.traces.synth"]
    assert against_the_flow({"dexsim.core.lattice": {"dexsim.replay.executor"}})
    assert not against_the_flow({"dexsim.replay.executor": {"dexsim.core.lattice"}})
    assert cli_imports({"viz.source": {"dexref.cli"}}) and not cli_imports({"dexref.__main__": {"dexref.cli"}})
    assert circles({"dexsim.des.record": {"dexsim.des.plan"}, "dexsim.des.plan": {"dexsim.des.record"}})
