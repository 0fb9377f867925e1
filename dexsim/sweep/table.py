"""The summary a sweep prints: per trace and hardware, the question a user asks of it: how fast is AR,
what is the best single-depth method and the best DEX configuration here, by how much do they beat AR
(or lose to it: speedups below 1 are shown as they are), and how far is the ideal (L / mean EAD)."""
from __future__ import annotations

from dexsim.core import registry
from dexsim.core.registry import describe


def _hardware(r: dict) -> str:
    hw = r["gpu"] + ("" if (r["tp"], r["pp"], r["batch"]) == (1, 1, 1) else f" tp{r['tp']} pp{r['pp']} b{r['batch']}")
    return hw + ("" if r["scheduler"] == "lockstep" else f" des {r['arrival']}")


def _best(rows: list[dict]):
    return max(rows, key=lambda r: r["tokens_per_s"]) if rows else None


def best_table(rows: list[dict], traces: dict | None = None) -> str:
    """One line per trace and hardware: AR's tokens/s, the best single-depth configuration (layerskip,
    adaptive, oracle-select) and the best DEX configuration with their speedups over AR, DEX over the
    single-depth one, and the trace's ceiling. `traces`: trace file name -> {"ceiling", "synthetic"}
    (from the grid; a resumed folder's other traces show '-')."""
    traces = traces or {}
    single_depth = {s.name for s in registry.REGISTRY.values() if s.single_depth}
    groups: dict[tuple, list] = {}
    for r in rows:
        if r["output_matches_trace"]:
            key = (r["trace"], r["model"], r["max_tokens"], r.get("max_seqs"), r["seed"], _hardware(r))
            groups.setdefault(key, []).append(r)
    head = ("trace", "model", "hardware", "L/EAD", "ar tok/s", "best single-depth", "vs ar", "best dex", "vs ar",
            "vs single")
    lines = [head]
    for (trace, model, _, _, _, hw), rs in groups.items():
        info = traces.get(trace, {})
        ar = _best([r for r in rs if r["policy"] == "ar"])
        single = _best([r for r in rs if r["policy"] in single_depth])
        dex = _best([r for r in rs if r["policy"] == "dex"])
        name = trace.removesuffix(".npz") + (" (synthetic)" if info.get("synthetic") else "")
        cells = [name, model, hw, f"{info['ceiling']:.2f}x" if "ceiling" in info else "-",
                 f"{ar['tokens_per_s']:.1f}" if ar else "-"]
        for r in (single, dex):
            cells += [describe(r), f"{r['speedup_vs_ar']:.3f}x"] if r else ["-", "-"]
        cells.append(f"{dex['tokens_per_s'] / single['tokens_per_s']:.3f}x" if dex and single else "-")
        lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {3, 4, 6, 8, 9}

    def fmt(line):
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        return "  ".join(cells).rstrip()
    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths), *map(fmt, lines[1:])])
