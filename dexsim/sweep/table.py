"""The summary a sweep prints: the best lossless configuration per trace and hardware."""
from __future__ import annotations

from dexsim.core import registry
from dexsim.core.registry import describe


def best_table(rows: list[dict]) -> str:
    """Best lossless configuration per trace and hardware, with its speedup over ar and over the best
    single-depth policy (layerskip, adaptive, oracle-select) on the same trace and hardware."""
    single_depth = {s.name for s in registry.REGISTRY.values() if s.single_depth}
    groups: dict[tuple, list] = {}
    for r in rows:
        if r["output_matches_trace"]:
            hw = (r["gpu"], r["tp"], r["pp"], r["batch"], r["scheduler"], r["arrival"])
            groups.setdefault((r["trace"], r["model"], r["max_tokens"], r.get("max_seqs"), r["seed"], hw), []).append(r)
    head = ("trace", "model", "hardware", "best configuration", "tok/s", "vs ar", "vs single", "best single-depth")
    lines = [head]
    for (trace, model, _, _, _, (gpu, tp, pp, batch, sched, arrival)), rs in groups.items():
        best = max(rs, key=lambda r: r["tokens_per_s"])
        single = [r for r in rs if r["policy"] in single_depth]
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
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        return "  ".join(cells).rstrip()
    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths), *map(fmt, lines[1:])])
