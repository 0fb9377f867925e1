"""Static-shape layer steps for the fast mode, captured as CUDA graphs on a GPU.

On a GPU the engine's per-layer calls are short (a few rows), so launching their ~20 kernels from
Python costs more than running them. A CUDA graph replays a captured sequence of kernels with one
launch, but only over fixed shapes and fixed addresses. `StaticSteps` gives the fast mode's layer
call that form, for one sequence (S = 1, batch 1 as served):

- rows are padded to a bucket (1, 2, 4, 8, 16); pad rows use a scratch pool slot (slot M, which no
  node ever gets), so they write nothing a node reads;
- every input is a preallocated tensor: the rows' pool slots [b], positions [b], the committed
  length [1] and the pool visibility mask [b, M + 1] (copied in before each replay);
- attention runs over the whole preallocated cache [Hkv, T, hd], positions at or past the committed
  length masked (their contents are scratch), plus the whole pool, masked by ancestry; the masks are
  built on the device from the length and positions (and the window on sliding layers).

On CUDA each (layer, bucket) step is captured once, on pad inputs only (capturing runs the step,
and a capture on real rows would apply the layer to them twice), then replayed; elsewhere the same
step runs eagerly, so the CPU tests exercise exactly the shapes, padding and masks a GPU replays.
More rows than the largest bucket fall back to the eager batched call.
"""
from __future__ import annotations

import numpy as np
import torch

from .model import attend, finish, qkv, window

BUCKETS = (1, 2, 4, 8, 16)


def bucket(rows: int) -> int | None:
    """The smallest bucket holding `rows` rows; None beyond the largest."""
    return next((b for b in BUCKETS if b >= rows), None)


class StaticSteps:
    """The fast mode's layer calls of a one-sequence executor as static-shape steps (see the module)."""

    def __init__(self, ex, capture: bool):
        self.ex, self.capture = ex, capture
        dev, M = ex.dev, ex.slots - 1
        self.scratch = M  # the pool slot pad rows use
        self.at = torch.arange(ex.k.shape[3], device=dev)  # [T] cache positions
        self.n = torch.zeros(1, dtype=torch.int64, device=dev)  # committed length
        self.inputs = {b: (torch.full((b,), M, dtype=torch.int64, device=dev),  # pool slots
                           torch.zeros(b, dtype=torch.int64, device=dev),  # positions
                           torch.zeros(b, ex.slots, dtype=torch.bool, device=dev))  # pool visibility
                       for b in BUCKETS}
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.pool = None  # the graphs' shared memory pool

    def _step(self, layer: int, b: int) -> None:
        ex, m = self.ex, self.ex.model
        slots, pos, vis_pool = self.inputs[b]
        h, pk, pv = ex.h[0], ex.pk[layer, 0], ex.pv[layer, 0]  # [M+1, D], [M+1, Hkv, hd] x2
        x = h.index_select(0, slots)  # [b, D]
        q, k, v = qkv(m, layer, x, pos)
        pk.index_copy_(0, slots, k)
        pv.index_copy_(0, slots, v)
        seen = self.at[None, :] < self.n  # [1, T]: committed positions
        w = window(m.args, layer)
        if w:
            seen = seen & (self.at[None, :] > pos[:, None] - w)  # [b, T]
            vis_pool = vis_pool & self._pool_window(pos, w)
        else:
            seen = seen.expand(b, -1)
        parts = [(ex.k[layer, 0], ex.v[layer, 0], seen), (pk.transpose(0, 1), pv.transpose(0, 1), vis_pool)]
        h.index_copy_(0, slots, finish(m, layer, x, attend(q, parts, ex.scale)))

    def _pool_window(self, pos, w):
        """[b, M+1]: pool slots whose node is within the window of each row (slot positions as a tensor)."""
        return self.ex.slot_pos_t[None, :] > pos[:, None] - w

    def run(self, lat, layer: int, j: np.ndarray) -> bool:
        """Layer `layer` of nodes j of sequence 0 through the static step; False if too many rows."""
        b = bucket(len(j))
        if b is None:
            return False
        ex = self.ex
        slots, pos, vis_pool = self.inputs[b]
        if self.capture and (layer, b) not in self.graphs:
            self._capture(layer, b)
        R = len(j)
        pad = b - R
        host_slots = np.r_[lat.tag[0, j], np.full(pad, self.scratch)]
        host_pos = np.r_[lat.pos[0, j], np.zeros(pad, np.int64)]
        vis = np.zeros((b, ex.slots), bool)
        vis[:R] = ex._visible(lat, 0, j)
        vis[R:, self.scratch] = True  # a pad row sees itself (no row of only masked scores)
        slots.copy_(torch.from_numpy(host_slots.astype(np.int64)))
        pos.copy_(torch.from_numpy(host_pos.astype(np.int64)))
        vis_pool.copy_(torch.from_numpy(vis))
        self.n.fill_(int(ex.n_cached[0]))
        if ex.slot_pos_t is not None:
            ex.slot_pos_t.copy_(torch.from_numpy(ex.slot_pos[0]))
        if (layer, b) in self.graphs:
            self.graphs[layer, b].replay()
        else:
            self._step(layer, b)
        return True

    def _capture(self, layer: int, b: int) -> None:
        """Capture step (layer, b) on pad inputs (every row the scratch slot: nothing real changes)."""
        slots, pos, vis_pool = self.inputs[b]
        slots.fill_(self.scratch)
        pos.zero_()
        vis_pool.zero_()
        vis_pool[:, self.scratch] = True
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, kernel selection)
            self._step(layer, b)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            self._step(layer, b)
        self.pool = g.pool()
        self.graphs[layer, b] = g
