"""A stateful machine over the lattice core: Hypothesis plays an arbitrary policy (any legal choice
of node-layers, any expansions, any buffer, with or without eviction), round after round, and the
invariants of DESIGN.md section 3 are checked after every step, as is the event log: replayed on its
own it must rebuild exactly the live lattice."""
import numpy as np
from eventcheck import check_event_log
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from strategies import traces

from dexsim.core import lattice as core
from dexsim.core.lattice import ADVANCE, COLLAPSE, DISCARD, SPAWN
from dexsim.replay.executor import ON_PATH, ReplayExecutor, output_matches


class ArbitraryPolicy:
    """Whatever Hypothesis draws, within the dependency rule: the nondeterministic policy."""

    name = "arbitrary"

    def __init__(self, data, L, exits, buffer, evict):
        self.data, self.L, self.exits, self.buffer, self.evict = data, L, exits, buffer, evict
        self.explorers = buffer + 1

    def select(self, lat, s):
        chosen = np.zeros((len(s), lat.M), bool)
        for r, q in enumerate(s):
            for j in range(lat.n[q]):
                d, p = lat.depth[q, j], lat.parent[q, j]
                legal = d < self.L and (p < 0 or lat.depth[q, p] > d or (lat.depth[q, p] == d and chosen[r, p]))
                if legal and self.data.draw(st.booleans()):
                    chosen[r, j] = True
            if not chosen[r].any():
                chosen[r, 0] = True  # the anchor can always move: a round does something
        return chosen, np.ones(len(s), np.int64)

    def wants(self, lat, s, j, tok, conf):
        return np.array([self.data.draw(st.booleans()) for _ in s], bool)


class CollidingExecutor(ReplayExecutor):
    """Off-path nodes guess real tokens of the tiny vocabulary, as a real model's wrong branches do
    (the replay's own off-path ids never collide): the core must stay exact whatever they guess."""

    def __init__(self, trace, data):
        super().__init__(trace)
        self.data = data

    def read_exits(self, lat, s, j):
        tok, conf = super().read_exits(lat, s, j)
        off = lat.tag[s, j] != ON_PATH
        tok[off] = [self.data.draw(st.integers(0, self.trace.vocab - 1)) for _ in range(off.sum())]
        conf[off] = 0.5
        return tok, conf


def rebuild(events, seq):
    """The live lattice of one sequence, from its event log alone."""
    nodes = {}
    for e in events[events["seq"] == seq]:
        v = int(e["node"])
        if e["kind"] == SPAWN:
            nodes[v] = dict(node=v, parent=int(e["parent"]), token=int(e["token"]), pos=int(e["pos"]), depth=0)
        elif e["kind"] == ADVANCE:
            nodes[v]["depth"] += int(e["n"])
        elif e["kind"] == DISCARD:
            del nodes[v]
        elif e["kind"] == COLLAPSE:
            nodes.pop(int(e["parent"]), None)  # the committed anchor leaves the lattice
    for n in nodes.values():
        n["parent"] = n["parent"] if n["parent"] in nodes else -1
    return sorted(nodes.values(), key=lambda n: n["node"])


class LatticeMachine(RuleBasedStateMachine):
    @initialize(trace=traces(max_layers=6, max_seqs=2, max_tokens=6), data=st.data())
    def start(self, trace, data):
        self.trace = trace
        exits = sorted(set(data.draw(st.lists(st.sampled_from(list(trace.depths)), max_size=4))) | {trace.L})
        buffer = data.draw(st.integers(0, 4))
        self.policy = ArbitraryPolicy(data, trace.L, np.array(exits), buffer, data.draw(st.booleans()))
        self.lat = core.Lattice(L=trace.L, exits=self.policy.exits, capacity=buffer + 1,
                                root_tokens=np.full(trace.n_seqs, core.NO_TOKEN), root_pos=trace.prompt_len - 1,
                                max_tokens=np.diff(trace.seq_offsets), record_events=True)
        self.executor = (CollidingExecutor(trace, data) if data.draw(st.booleans())
                         else ReplayExecutor(trace, data.draw(st.integers(0, 3))))
        core.start(self.lat, self.executor)

    @rule()
    def round(self):
        if self.lat.active.any():  # once every sequence stopped, rounds are no-ops
            core.step(self.lat, self.policy, self.executor)

    @invariant()
    def lattice_is_sound(self):
        lat, trace = self.lat, self.trace
        for s in np.nonzero(lat.active)[0]:
            k, n = lat.counters.tokens[s], lat.n[s]
            assert lat.pos[s, 0] == trace.prompt_len[s] - 1 + k
            assert k == 0 or lat.token[s, 0] == lat.output[s, k - 1]
            assert lat.tag[s, 0] == 1  # the anchor is on the true path, whatever branches guessed
            for j in range(1, n):
                p = lat.parent[s, j]
                assert 0 <= p < j and lat.pos[s, j] == lat.pos[s, p] + 1 and lat.depth[s, j] <= lat.depth[s, p]
            kids = [(lat.parent[s, j], lat.token[s, j]) for j in range(1, n)]
            assert len(kids) == len(set(kids)) and n - 1 <= self.policy.buffer
        for s in range(lat.S):  # what is committed so far is the trace's prefix
            k = lat.counters.tokens[s]
            sl = trace.seq_slice(s)
            assert (lat.output[s, :k] == trace.final[sl][:k]).all()

    @invariant()
    def event_log_tells_the_same_story(self):
        events = self.lat.events()
        check_event_log(events, self.lat)
        for s in range(self.lat.S):
            assert rebuild(events, s) == (self.lat.tree(s) if self.lat.active[s] else [])

    def teardown(self):
        if hasattr(self, "lat") and not self.lat.active.any():
            assert output_matches(self.trace, self.lat)


TestLatticeMachine = LatticeMachine.TestCase
