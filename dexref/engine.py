"""The reference engine: the lattice core (dexsim/core/lattice.py) driving a real transformer.

The core decides which node-layers run each round, what to expand, what to commit and discard; this
file only computes what it asks for (the `Executor` protocol), in the style of gpt-fast's
`generate.py`: `prefill`, then `core.run`, whose rounds call `TorchExecutor.compute` and
`read_exits`. Nothing here decides a token except the sampling rule at an exit head.

KV organisation (per sequence s of the S decoded together, per layer l):

- committed cache `k, v [L, S, Hkv, T, hd]`: every position before the anchor (the prompt from
  `prefill`, then each committed anchor, copied in by the `committed` hook). Its length is the
  anchor's position.
- node pool `pk, pv [L, S, M, Hkv, hd]` and hidden states `h [S, M, D]`: one slot per live node
  (M = live-branch buffer + 1), found through the core's per-node `tag`. A node's key/value at layer
  l are written when it computes layer l and stay there until the node is committed (promoted to the
  committed cache), or discarded (the slot is freed).
- tree attention: a node at position p computing layer l attends to the committed cache plus the
  pool entries of its ancestors and itself (a mask over pool slots), which is exactly the context AR
  would have for that path. Nodes at the same layer compute in one batched call (queries, keys and
  values first, so nodes batched with their ancestors see their keys); nodes at different layers are
  separate calls. On a sliding-window layer (Gemma 3's local layers) each row sees only the last
  `window` positions of that context (itself included), as AR does.

Two numeric modes. `fast` batches rows at a layer and attends over cache + masked pool without
copying (a row alone at its layer takes the one-row path below). `batch_invariant` computes every
node alone (one row) over its context laid out contiguously in position order, exactly as an AR step
at that position would, so every node's states are bitwise equal to AR's (`reference_states`
recomputes them for the tests). The one-row path lays the context out in the cache itself: positions
past the committed ones are scratch, where the node's path is copied before it attends.

Sampling (DESIGN.md section 3): greedy (argmax, lowest id on ties) or seeded Gumbel-max,
argmax(logits / T + G(seed, position)), the noise depending only on the seed and the position of the
token sampled, so every branch at a position sees the same noise. Exit confidences (the top-1
probability, or the sampled token's probability) are rounded to float16, the precision traces store
them at, so a confidence-driven policy decides alike on a trace and here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dexsim.core import lattice as core
from dexsim.config import check_seed
from dexsim.errors import UserError

from .model import Transformer, attend, attend_one, attn_scale, embed, finish, head, prefill, qkv, window

SAMPLING_RULES = ("greedy", "gumbel")


@dataclass(frozen=True)
class Sampling:
    rule: str = "greedy"
    seed: int = 0
    temperature: float = 1.0

    def __post_init__(self):
        if self.rule not in SAMPLING_RULES:
            raise UserError(f"--sampling {self.rule!r}: must be one of {', '.join(SAMPLING_RULES)}")
        if not self.temperature > 0 or not np.isfinite(self.temperature):
            raise UserError(f"--temperature {self.temperature}: must be a positive number")
        check_seed(self.seed)

    def meta(self) -> dict:
        return {"rule": self.rule, "seed": self.seed if self.rule == "gumbel" else None,
                "temperature": self.temperature if self.rule == "gumbel" else None}


def gumbel_noise(seed: int, position: int, vocab: int) -> torch.Tensor:
    """G(seed, position) [V] float64: standard Gumbel noise from a generator seeded by (seed, position)."""
    u = np.random.default_rng([seed, position]).random(vocab)  # [V] in [0, 1)
    with np.errstate(divide="ignore"):
        return torch.from_numpy(-np.log(-np.log(u)))


class TorchExecutor:
    """The core's Executor on a real model. `tag` of a node = its pool slot.

    `jump`: let the core take several rounds in one call where nothing can exit, spawn or commit in
    between (DESIGN.md section 4). Every layer is still computed, one round at a time, in the same
    order; only the core's per-round bookkeeping is skipped. Off by default (the event log then has
    one advance per round)."""

    def __init__(self, model: Transformer, prompts: list[list[int]], capacity: int, max_new_tokens: int,
                 sampling: Sampling = Sampling(), batch_invariant: bool = False,
                 record_depths: np.ndarray | None = None, observe=None, jump: bool = False, heads=None,
                 graphs: bool = False):
        self.can_jump = jump
        self.heads = heads  # exits.Adapters (trained exit heads) or None (the logit lens)
        a = model.args
        self.observe = observe  # observe(lat, s, j, depth, states [R, D]) after each layer (tests)
        self.model, self.sampling, self.batch_invariant = model, sampling, batch_invariant
        dt, dev = model.dtype, model.device
        self.dev = dev
        # host index arrays -> tensors on the model's device (on the CPU: no copy)
        self.t = torch.from_numpy if dev.type == "cpu" else (lambda arr: torch.from_numpy(arr).to(dev))
        S, M, L = len(prompts), capacity, a.n_layer
        T = max(len(p) for p in prompts) + max_new_tokens + M  # positions a node can take
        static = graphs and S == 1 and not batch_invariant  # dexref/graphs.py: one sequence, fast mode
        self.slots = M + 1 if static else M  # pool slots per sequence (static steps: + one scratch slot)
        self.k = torch.zeros(L, S, a.n_kv_head, T, a.head_dim, dtype=dt, device=dev)  # committed keys
        self.v = torch.zeros_like(self.k)  # committed values
        self.pk = torch.zeros(L, S, self.slots, a.n_kv_head, a.head_dim, dtype=dt, device=dev)  # node keys, by pool slot
        self.pv = torch.zeros_like(self.pk)
        self.h = torch.zeros(S, self.slots, a.dim, dtype=dt, device=dev)  # node hidden state at its current depth
        self.n_cached = np.zeros(S, np.int64)  # committed positions in the cache
        self.positions = torch.arange(T, device=dev)
        self.free = [list(range(M - 1, -1, -1)) for _ in range(S)]  # free pool slots
        self.slot_of: list[dict[int, tuple[int, int]]] = [{} for _ in range(S)]  # node id -> (pool slot, pos)
        self.slot_pos = np.zeros((S, self.slots), np.int64)  # position of the node in each pool slot
        self.slot_pos_t = torch.zeros(self.slots, dtype=torch.int64, device=dev) if static else None
        self.scale = attn_scale(a)
        self.noise: dict[int, torch.Tensor] = {}  # position -> Gumbel noise
        # Recording: exit tokens and confidences of each pool slot at each recorded depth; committed
        # anchors' rows are appended per sequence.
        self.rec_col = None
        if record_depths is not None:
            self.rec_col = np.full(L + 1, -1, np.int64)
            self.rec_col[record_depths] = np.arange(len(record_depths))
            self.rec_tok = np.full((S, M, len(record_depths)), -1, np.int64)
            self.rec_conf = np.zeros((S, M, len(record_depths)), np.float32)
            self.rows_tok: list[list[np.ndarray]] = [[] for _ in range(S)]
            self.rows_conf: list[list[np.ndarray]] = [[] for _ in range(S)]
        for s, p in enumerate(prompts):  # the committed cache: every prompt token but the last
            if len(p) > 1:
                K, V = prefill(model, torch.tensor(p[:-1], device=dev))  # [L, Hkv, P-1, hd]
                self.k[:, s, :, : len(p) - 1] = K
                self.v[:, s, :, : len(p) - 1] = V
            self.n_cached[s] = len(p) - 1
        self.static = None
        if static:
            from .graphs import StaticSteps

            self.static = StaticSteps(self, capture=dev.type == "cuda")

    # ------------------------------------------------------------------ the Executor protocol

    def spawned(self, lat, s, j):
        for si, ji in zip(s.tolist(), j.tolist()):
            p = self.free[si].pop()
            lat.tag[si, ji] = p
            self.slot_of[si][int(lat.node_id[si, ji])] = (p, int(lat.pos[si, ji]))
            self.slot_pos[si, p] = lat.pos[si, ji]
            if self.rec_col is not None:
                self.rec_tok[si, p], self.rec_conf[si, p] = -1, 0
        p = self.t(lat.tag[s, j])
        self.h[self.t(s), p] = embed(self.model, self.t(lat.token[s, j]))

    def committed(self, lat, s, node_ids):
        for si, nid in zip(s.tolist(), node_ids.tolist()):
            p, pos = self.slot_of[si].pop(nid)
            assert pos == self.n_cached[si], f"core committed position {pos}, the cache ends at {self.n_cached[si]}"
            self.k[:, si, :, pos] = self.pk[:, si, p]
            self.v[:, si, :, pos] = self.pv[:, si, p]
            self.n_cached[si] = pos + 1
            if self.rec_col is not None:
                self.rows_tok[si].append(self.rec_tok[si, p].copy())
                self.rows_conf[si].append(self.rec_conf[si, p].copy())
            self.free[si].append(p)

    def discarded(self, lat, s, node_ids):
        for si, nid in zip(s.tolist(), node_ids.tolist()):
            self.free[si].append(self.slot_of[si].pop(nid)[0])

    def compute(self, lat, s, j, layers):
        # One round per step of t (several when the core jumps: the same nodes then advance together,
        # each one layer a round, nothing exits in between; the core updates depths afterwards).
        depth0 = lat.depth[s, j]
        for t in range(int(layers.max())):
            go = layers > t
            self._round(lat, s[go], j[go], depth0[go] + t)

    def _round(self, lat, s, j, depth):
        # one call per layer: its rows share the weights
        for layer in (np.unique(depth) if len(depth) > 1 else depth).tolist():
            sel = depth == layer
            if self.static is not None and self.static.run(lat, layer, j[sel]):
                pass
            elif self.batch_invariant or sel.sum() == 1:  # a lone row: most of AR's and many of dex's
                for si, ji in zip(s[sel].tolist(), j[sel].tolist()):
                    self._layer_one(lat, layer, si, ji)
            else:
                self._layer(lat, layer, s[sel], j[sel])
            if self.observe is not None:
                self.observe(lat, s[sel], j[sel], layer + 1,
                             self.h[self.t(s[sel]), self.t(lat.tag[s[sel], j[sel]])])

    def read_exits(self, lat, s, j):
        p = lat.tag[s, j]
        x = self.h.view(-1, self.h.shape[-1]).index_select(0, self.t(s * self.slots + p))  # [R, D]
        d = lat.depth[s, j]
        if self.batch_invariant:
            logits = torch.cat([head(self.model, self._adapt(x[r: r + 1], d[r: r + 1])) for r in range(len(s))])
        else:
            logits = head(self.model, self._adapt(x, d))  # [R, V]
        tok, conf = self.sample(logits, lat.pos[s, j] + 1)
        if self.rec_col is not None:
            c = self.rec_col[lat.depth[s, j]]
            self.rec_tok[s, p, c], self.rec_conf[s, p, c] = tok, conf
        return tok, conf

    def _adapt(self, x, depths):
        """The exit head's input: trained adapters change rows below L; depth-L rows are left as they are."""
        return x if self.heads is None else self.heads.adapt(x, depths)

    # ------------------------------------------------------------------ computation

    def _layer(self, lat, layer, s, j):
        """Layer `layer` of nodes (s, j), batched: rows attend to the committed cache + the pool
        entries of their ancestors and themselves."""
        m, D = self.model, self.h.shape[-1]
        flat = self.t(s * self.slots + lat.tag[s, j])  # rows of the [S * slots] node slots
        x = self.h.view(-1, D).index_select(0, flat)  # [R, D]
        q, k, v = qkv(m, layer, x, self.t(lat.pos[s, j]))  # [R, H, hd], [R, Hkv, hd] x2
        self.pk[layer].view(-1, *k.shape[1:]).index_copy_(0, flat, k)
        self.pv[layer].view(-1, *v.shape[1:]).index_copy_(0, flat, v)
        if (s == s[0]).all():  # one sequence (the usual case): no per-sequence split
            att = attend(q, self._context(lat, layer, int(s[0]), j), self.scale)
        else:
            att = torch.empty(len(s), q.shape[1] * q.shape[2], dtype=x.dtype, device=self.dev)  # [R, H*hd]
            for si in np.unique(s).tolist():
                rows = np.flatnonzero(s == si)
                att[self.t(rows)] = attend(q[self.t(rows)], self._context(lat, layer, si, j[rows]), self.scale)
        self.h.view(-1, D).index_copy_(0, flat, finish(m, layer, x, att))

    def _context(self, lat, layer, si, js):
        """Attention context parts of nodes js of sequence si at `layer`: the committed cache (all
        visible) and the pool, where each row sees its ancestors' slots and its own. On a sliding-window
        layer a row at position p sees only positions > p - window, in both parts."""
        vis = self._visible(lat, si, js)  # [Rs, M]
        n, w = int(self.n_cached[si]), window(self.model.args, layer)
        lo, seen = 0, None
        if w:
            pos = lat.pos[si, js]  # [Rs]
            vis &= self.slot_pos[si][None, :] > pos[:, None] - w
            lo = max(0, int(pos.min()) - w + 1)  # cache positions before lo are out of every row's window
            if n > lo and int(pos.max()) - w + 1 > lo:
                seen = self.t(np.arange(lo, n)[None, :] > pos[:, None] - w)  # [Rs, n - lo]
        parts = [(self.pk[layer, si].transpose(0, 1), self.pv[layer, si].transpose(0, 1), self.t(vis))]
        if n > lo:
            parts.insert(0, (self.k[layer, si, :, lo:n], self.v[layer, si, :, lo:n], seen))
        return parts

    def _layer_one(self, lat, layer, si, ji):
        """Layer `layer` of one node, alone, over its context in position order, as an AR step at its
        position computes it: the committed cache, then its ancestors' and its own keys and values,
        copied in behind the committed ones. Cache positions from n_cached on are scratch (nothing
        else reads them; `committed` writes each anchor's keys there for good), so the context is one
        contiguous slice and nothing but the path is copied."""
        m = self.model
        p, pos, n = int(lat.tag[si, ji]), int(lat.pos[si, ji]), int(self.n_cached[si])
        x = self.h[si, p][None]  # [1, D]
        q, k, v = qkv(m, layer, x, self.positions[pos: pos + 1])
        self.pk[layer, si, p] = k[0]
        self.pv[layer, si, p] = v[0]
        path = self._path(lat, si, ji)  # pool slots of positions n .. pos
        if len(path) == 1:
            self.k[layer, si, :, n] = k[0]
            self.v[layer, si, :, n] = v[0]
        else:
            path = torch.tensor(path, device=self.dev)
            self.k[layer, si, :, n: pos + 1] = self.pk[layer, si, path].transpose(0, 1)  # [Hkv, pos+1-n, hd]
            self.v[layer, si, :, n: pos + 1] = self.pv[layer, si, path].transpose(0, 1)
        w = window(m.args, layer)
        lo = max(0, pos + 1 - w) if w else 0  # a sliding window: the last w positions
        K, V = self.k[layer, si, :, lo: pos + 1], self.v[layer, si, :, lo: pos + 1]  # [Hkv, pos+1-lo, hd]
        self.h[si, p] = finish(m, layer, x, attend_one(q, K, V, self.scale))[0]

    @staticmethod
    def _path(lat, si, ji) -> list[int]:
        """Pool slots of the node's ancestors and itself, anchor first."""
        out = []
        while ji >= 0:
            out.append(int(lat.tag[si, ji]))
            ji = int(lat.parent[si, ji])
        return out[::-1]

    def _visible(self, lat, si, js) -> np.ndarray:
        vis = np.zeros((len(js), self.slots), bool)
        for r, ji in enumerate(js.tolist()):
            vis[r, self._path(lat, si, ji)] = True
        return vis

    def sample(self, logits: torch.Tensor, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and confidences of the exit heads' logits [R, V] for tokens at `positions`."""
        sm = self.sampling
        if logits.dtype.itemsize < 4:  # 16-bit logits: sample and score in float32 (argmax unchanged)
            logits = logits.float()
        if sm.rule == "greedy":
            z = logits
        else:
            z = logits / sm.temperature
            noise = torch.stack([self._noise(int(pos), logits.shape[1]) for pos in positions])
            z = z + noise.to(z.device, z.dtype)
        tok = z.argmax(-1)  # first maximum: the lowest id on ties
        lp = torch.log_softmax(logits if sm.rule == "greedy" else logits / sm.temperature, -1)
        conf = lp.gather(1, tok[:, None])[:, 0].exp()
        return tok.cpu().numpy().astype(np.int64), conf.float().cpu().numpy().astype(np.float16).astype(np.float32)

    def _noise(self, pos: int, vocab: int) -> torch.Tensor:
        if pos not in self.noise:
            self.noise[pos] = gumbel_noise(self.sampling.seed, pos, vocab).to(self.dev)
        return self.noise[pos]

    def committed_cache(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [L, Hkv, n, hd] of sequence s's committed positions (the rest is scratch)."""
        n = int(self.n_cached[s])
        return self.k[:, s, :, :n], self.v[:, s, :, :n]

    # ------------------------------------------------------------------ recorded rows

    def recorded(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """([N, D] exit tokens, [N, D] confidences) of the committed tokens of sequence s."""
        return np.array(self.rows_tok[s]).reshape(-1, len(self.rec_tok[0, 0])), \
            np.array(self.rows_conf[s]).reshape(-1, len(self.rec_tok[0, 0]))


@dataclass
class Run:
    lattice: core.Lattice
    executor: TorchExecutor
    wall_s: float
    outputs: list[list[int]] = field(default_factory=list)

    def counters(self) -> dict:
        return self.lattice.counters.totals()


def check_prompts(model: Transformer, prompts: list[list[int]], max_new_tokens: int) -> None:
    a = model.args
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: must be >= 1")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise UserError(f"prompt {i}: empty (no tokens)")
        if len(p) + max_new_tokens > a.max_len:
            raise UserError(f"prompt {i}: {len(p)} tokens + --max-new-tokens {max_new_tokens} exceed the "
                            f"model's context of {a.max_len}")
        bad = [t for t in p if not 0 <= t < a.vocab]
        if bad:
            raise UserError(f"prompt {i}: token {bad[0]} out of range [0, {a.vocab})")


@torch.inference_mode()
def generate(model: Transformer, prompts: list[list[int]], policy, max_new_tokens: int, *,
             sampling: Sampling = Sampling(), eos: int | None = None, batch_invariant: bool = False,
             record_depths=None, record_events: bool = False, observe=None, jump: bool = False,
             heads=None, executor=None, graphs: bool = False) -> Run:
    """Decode every prompt (as S sequences of one lattice) under `policy`; the core does the rest.
    `heads`: trained exit heads (`exits.Adapters`) or None for the logit lens; with trained heads every
    exit depth but L must have one. `executor`: a TorchExecutor subclass (benchmarks: one that times
    the hooks, or takes its decisions from a trace). `graphs`: the fast mode's layer calls as
    static-shape steps, CUDA graphs on a GPU (dexref/graphs.py; one sequence only, else ignored)."""
    from .exits import check_exits

    check_prompts(model, prompts, max_new_tokens)
    check_exits(heads, policy.exits, model.args.n_layer)
    if record_depths is not None:
        check_exits(heads, record_depths, model.args.n_layer, flag="--depths")
    if heads is not None:
        heads = heads.to(model.dtype, model.device)
    t0 = time.perf_counter()
    M = policy.buffer + 1
    ex = (executor or TorchExecutor)(model, prompts, M, max_new_tokens, sampling, batch_invariant, record_depths,
                                     observe, jump, heads, graphs)
    lat = core.Lattice(L=model.args.n_layer, exits=policy.exits, capacity=M,
                       root_tokens=[p[-1] for p in prompts], root_pos=[len(p) - 1 for p in prompts],
                       max_tokens=np.full(len(prompts), max_new_tokens), eos=eos, record_events=record_events)
    core.run(lat, policy, ex)
    wall = time.perf_counter() - t0
    outs = [lat.output[s, : lat.counters.tokens[s]].tolist() for s in range(len(prompts))]
    return Run(lat, ex, wall, outs)


@torch.inference_mode()
def reference_states(model: Transformer, tokens: list[int], prompt_len: int) -> torch.Tensor:
    """AR recomputation of a path, for the batch-invariant check: hidden states [N, L+1, D] of the
    positions prompt_len-1 .. len(tokens)-1 at every depth, computed one position at a time (the
    prompt but its last token prefilled), each over its context in position order."""
    a, dev = model.args, model.device
    K, V = prefill(model, torch.tensor(tokens[: prompt_len - 1], device=dev)) if prompt_len > 1 else (None, None)
    ks = [K[layer] if K is not None else None for layer in range(a.n_layer)]  # [Hkv, t, hd]
    vs = [V[layer] if V is not None else None for layer in range(a.n_layer)]
    out = []
    for pos in range(prompt_len - 1, len(tokens)):
        x = embed(model, torch.tensor([tokens[pos]], device=dev))  # [1, D]
        states = [x[0]]
        for layer in range(a.n_layer):
            q, k, v = qkv(model, layer, x, torch.tensor([pos], device=dev))
            kk, vv = k[0][:, None], v[0][:, None]  # [Hkv, 1, hd]
            Kc = kk if ks[layer] is None else torch.cat([ks[layer], kk], 1)  # [Hkv, pos+1, hd]
            Vc = vv if vs[layer] is None else torch.cat([vs[layer], vv], 1)
            ks[layer], vs[layer] = Kc, Vc
            w = window(a, layer)
            if w:
                Kc, Vc = Kc[:, -w:], Vc[:, -w:]
            x = finish(model, layer, x, attend_one(q, Kc, Vc, attn_scale(a)))
            states.append(x[0])
        out.append(torch.stack(states))
    return torch.stack(out)
