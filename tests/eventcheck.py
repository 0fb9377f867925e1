"""Checks of an event log against DESIGN.md section 3: what every run of the core must satisfy."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from dexsim.core.lattice import ADVANCE, COLLAPSE, COMMIT, DISCARD, EXIT, SPAWN


def check_event_log(events: np.ndarray, lat) -> None:
    parent, token, children = {}, {}, defaultdict(set)
    computed = {}  # (seq, node, layer) -> round
    gone = set()
    node_layers = np.zeros(lat.S, np.int64)
    waste = np.zeros(lat.S, np.int64)
    exits = np.zeros(lat.S, np.int64)
    commits = defaultdict(list)
    for e in events:
        s, v = int(e["seq"]), int(e["node"])
        assert (s, v) not in gone, f"event on discarded node {v}: {e}"
        # a node's parent is the one it was spawned under, until it becomes the anchor (none: -1)
        assert e["kind"] == SPAWN or int(e["parent"]) in (parent.get((s, v)), -1), f"wrong parent: {e}"
        if e["kind"] == SPAWN:
            p = int(e["parent"])
            parent[s, v], token[s, v] = p, int(e["token"])
            assert int(e["token"]) not in children[s, p] or p < 0, f"live siblings share token {e['token']}"
            children[s, p].add(int(e["token"]))
        elif e["kind"] == ADVANCE:
            d0, n, r = int(e["depth"]), int(e["n"]), int(e["round"])
            for i in range(n):
                layer, t = d0 + 1 + i, r + i
                assert layer == 1 or (s, v, layer - 1) in computed, "layers out of order"
                computed[s, v, layer] = t
                u = parent[s, v]
                while u >= 0:  # dependency rule: every ancestor holds the layer by this round
                    assert computed.get((s, u, layer), 1 << 60) <= t, f"node {v} layer {layer} before ancestor {u}"
                    u = parent[s, u]
            node_layers[s] += n
        elif e["kind"] == EXIT:
            exits[s] += 1
        elif e["kind"] == COMMIT:
            commits[s].append(int(e["token"]))
            # the committed node is the anchor (no parent) and has all its layers
            assert int(e["parent"]) == -1 and (s, v, lat.L) in computed
        elif e["kind"] == DISCARD:
            waste[s] += int(e["depth"])
            gone.add((s, v))
            children[s, parent[s, v]].discard(token[s, v])  # live siblings must differ, not all-time ones
    c = lat.counters
    assert len(c.load_rows) == len(c.head_rows) == lat.M + 1  # histograms over 0..M rows
    assert c.load_rows.dtype == c.head_rows.dtype == np.int64
    assert (node_layers == c.node_layers).all()
    assert (exits == c.head_evals).all()
    assert (waste == c.wasted_node_layers).all()
    for s in range(lat.S):
        assert commits[s] == lat.output[s, : c.tokens[s]].tolist()
    check_counters(events, lat)


def check_counters(events: np.ndarray, lat) -> None:
    """Every counter recounted from the event log alone. A core step of a sequence starts with its
    advances (m rounds each: a jump; all logged with the step's first round); its chosen nodes at one depth share one weight load per layer;
    a node-layer's context is its row's length (pos + 1); a round that reads k > 0 exit heads counts
    once in head_rows[k]; a commit whose collapse spawns a fresh anchor is a fallback; a step that
    commits is one verification (commit_rounds); a collapse logs the new anchor's depth (reused_depth)."""
    c, L = lat.counters, lat.L
    rounds, loads, tokens, fallbacks, verifications, reused = (np.zeros(lat.S, np.int64) for _ in range(6))
    load_rows, head_rows = np.zeros_like(c.load_rows), np.zeros_like(c.head_rows)
    load_at, rows_at = np.zeros(L + 1, np.int64), np.zeros(L + 1, np.int64)  # per layer 1..L
    context = 0
    for s in range(lat.S):
        ev = events[events["seq"] == s]
        kinds = ev["kind"]
        starts = [i for i in range(len(ev)) if kinds[i] == ADVANCE and (i == 0 or kinds[i - 1] != ADVANCE
                                                                      or ev["round"][i] != ev["round"][i - 1])]
        for a, b in zip(starts, starts[1:] + [len(ev)]):
            step = ev[a:b]
            adv = step[step["kind"] == ADVANCE]
            m = int(adv["n"][0])
            assert (adv["n"] == m).all(), f"seq {s}: one step's nodes advance different numbers of rounds"
            rounds[s] += m
            for d in np.unique(adv["depth"]):
                rows = int((adv["depth"] == d).sum())
                loads[s] += m
                load_rows[rows] += m
                load_at[d + 1:d + m + 1] += 1
                rows_at[d + 1:d + m + 1] += rows
            context += int(((adv["pos"] + 1) * m).sum())
            k = int((step["kind"] == EXIT).sum())
            if k:
                head_rows[k] += 1
            verifications[s] += (step["kind"] == COMMIT).any()
            reused[s] += step["depth"][step["kind"] == COLLAPSE].sum()
            for i in np.flatnonzero(step["kind"] == COMMIT):
                tokens[s] += 1
                j = i + 1
                while step["kind"][j] != COLLAPSE:
                    fallbacks[s] += step["kind"][j] == SPAWN
                    j += 1
    assert (rounds == c.rounds).all(), f"rounds: counted {c.rounds}, the log says {rounds}"
    assert (loads == c.weight_loads).all(), f"weight loads: counted {c.weight_loads}, the log says {loads}"
    assert (load_rows == c.load_rows).all(), f"load_rows: counted {c.load_rows}, the log says {load_rows}"
    assert (head_rows == c.head_rows).all(), f"head_rows: counted {c.head_rows}, the log says {head_rows}"
    assert context == c.context_sum, f"context: counted {c.context_sum}, the log says {context}"
    assert (tokens == c.tokens).all() and (fallbacks == c.fallbacks).all(), "tokens or fallbacks miscounted"
    assert (verifications == c.commit_rounds).all(), f"commit_rounds: counted {c.commit_rounds}, the log says {verifications}"
    assert (reused == c.reused_depth).all(), f"reused_depth: counted {c.reused_depth}, the log says {reused}"
    per_load, per_rows = c.per_layer()
    assert (per_load[1:] == load_at[1:]).all() and (per_rows[1:] == rows_at[1:]).all(), "per-layer counters"
