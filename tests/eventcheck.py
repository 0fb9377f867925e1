"""Checks of an event log against DESIGN.md section 3: what every run of the core must satisfy."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from dexsim.core.lattice import ADVANCE, COMMIT, DISCARD, EXIT, SPAWN


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
