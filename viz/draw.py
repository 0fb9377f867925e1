"""Drawing one lattice frame on a matplotlib Axes: the depth-position picture of DESIGN.md section 3.

x is the position in the sequence, y the depth (0 at the top, L at the bottom). Each node is a column
from depth 0 down to the layers it has computed, with a dot at its frontier; nodes that share a
position (rival guesses for the same token) sit side by side in lanes. A thin line runs from the exit
point where a node's token was guessed (a diamond on its parent's column, at the parent's depth then)
to the top of the node. Committed nodes are dark, the anchor blue, live branches orange, discarded work
grey and fading; a red ring marks the nodes that computed a layer in this round (the explorers).

The panel keeps a fixed set of artists and only updates their data per frame, which is what makes a
frame cheap to render (benchmarks/viz_speed.py).
"""
from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D

from .frames import ANCHOR, BRANCH, COMMITTED, DISCARDED, FADE_FRAMES, Frame
from .labels import TokenLabels
from .output import new_figure

COLORS = {COMMITTED: "#333333", ANCHOR: "#1f6fd1", BRANCH: "#f28e2b", DISCARDED: "#a8a8a8"}
EXPLORER = "#d62728"
FALLBACK = "#d62728"


def lane_offset(lane: int, width: float) -> float:
    """Lanes 0, 1, 2, 3, ... sit at 0, +w, -w, +2w, ...: the first node at a position is centred."""
    step = (lane + 1) // 2
    return width * (step if lane % 2 else -step)


def legend_handles() -> list:
    dot = dict(marker="o", linestyle="", markersize=6)
    return [
        Line2D([], [], color=COLORS[COMMITTED], lw=4, label="committed"),
        Line2D([], [], color=COLORS[ANCHOR], markerfacecolor=COLORS[ANCHOR], **dot, label="anchor"),
        Line2D([], [], color=COLORS[BRANCH], markerfacecolor=COLORS[BRANCH], **dot, label="live branch"),
        Line2D([], [], color=COLORS[DISCARDED], lw=4, label="discarded"),
        Line2D([], [], color=FALLBACK, lw=1, label="fallback (no branch matched)"),
        Line2D([], [], color="#555555", marker="D", linestyle="", markersize=4, label="exit point (spawn)"),
        Line2D([], [], markerfacecolor="none", markeredgecolor=EXPLORER, markeredgewidth=1.5, **dot,
               label="explorer this round"),
    ]


class LatticePanel:
    """One policy's lattice on one Axes, redrawn per frame."""

    def __init__(self, ax, *, L: int, xlim: tuple, lanes: int, title: str, labels: TokenLabels,
                 exits: list | None = None, show_labels: bool = True):
        self.ax, self.L, self.labels, self.show_labels = ax, L, labels, show_labels
        self.lane_w = 0.8 / max(lanes, 1) if lanes > 1 else 0.0
        ax.set_xlim(*xlim)
        ax.set_ylim(L + 1, -3.2)  # depth 0 at the top; room above it for token labels
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("position in the sequence", fontsize=8)
        ax.set_ylabel("depth (layers computed)", fontsize=8)
        ax.set_yticks(sorted({0, L // 4, L // 2, 3 * L // 4, L}))
        span = xlim[1] - xlim[0]
        ax.set_xticks(np.arange(int(np.ceil(xlim[0])), int(xlim[1]) + 1, max(1, int(span // 12) + 1)))
        ax.tick_params(labelsize=7)
        ax.axhline(L, color="#dddddd", lw=0.8, zorder=0)
        if exits is not None and len(exits) < L:  # a sparse exit set: show where exits can be read
            for d in exits:
                ax.axhline(d, color="#eeeeee", lw=0.6, zorder=0)
        # column width in points: most of one lane's share of a position
        px_per_unit = ax.get_position().width * ax.figure.get_figwidth() * 72 / span
        share = self.lane_w if lanes > 1 else 0.8
        self.col_lw = float(np.clip(share * px_per_unit * 0.55, 1.5, 12))
        # Everything below changes per frame: `animated` keeps it out of the static background
        # (LatticeFigure draws it on top, in this order).
        self.edges = LineCollection([], linewidths=0.7, animated=True)
        self.columns = LineCollection([], linewidths=self.col_lw, capstyle="butt", animated=True)
        ax.add_collection(self.edges)
        ax.add_collection(self.columns)
        self.spawns = ax.scatter([], [], marker="D", s=12, linewidths=0, animated=True)
        self.live = ax.scatter([], [], s=30, gid="live-nodes", animated=True)
        self.live_ids: list[int] = []  # node ids of the live dots, in drawing order (for tests)
        # the caption sits a fixed distance below the axes, under the tick labels and the x label
        below = 0.5 / (ax.get_position().height * ax.figure.get_figheight())
        self.caption = ax.text(0.0, -below, "", transform=ax.transAxes, va="top", ha="left", fontsize=7.5,
                               family="monospace", animated=True)
        self.texts = []

    def dynamic(self) -> list:
        """The artists a frame changes, in drawing order."""
        return [self.edges, self.columns, self.spawns, self.live, *self.texts, self.caption]

    def x_of(self, v) -> float:
        return v.pos + lane_offset(v.lane, self.lane_w)

    def draw(self, frame: Frame, *, done: bool = False) -> None:
        nodes = frame.nodes
        xs = {v.node: self.x_of(v) for v in nodes}
        depth_of = {v.node: v.depth for v in nodes}
        cols, col_colors, edges, edge_colors, spawn_xy, spawn_colors = [], [], [], [], [], []
        for v in nodes:
            alpha = 1.0
            if v.status == DISCARDED:
                alpha = 0.7 * (1 - v.age / FADE_FRAMES)  # grey, fading out over a few frames
            color = to_rgba(COLORS[v.status], alpha)
            x = xs[v.node]
            if v.depth > 0:
                cols.append(((x, 0), (x, v.depth)))
                col_colors.append(color)
            if v.parent in xs and v.spawn_depth <= depth_of[v.parent]:
                px = xs[v.parent]
                edges.append(((px, v.spawn_depth), (x, 0)))
                edge_colors.append(to_rgba(FALLBACK if v.fallback else "#777777", 0.8 * alpha))
                spawn_xy.append((px, v.spawn_depth))
                spawn_colors.append(to_rgba(COLORS[v.status] if v.status != COMMITTED else "#555555", alpha))
        self.columns.set_segments(cols)
        self.columns.set_color(col_colors)
        self.edges.set_segments(edges)
        self.edges.set_color(edge_colors)
        self.spawns.set_offsets(np.array(spawn_xy).reshape(-1, 2))
        self.spawns.set_facecolors(spawn_colors)

        live = frame.live()
        self.live_ids = [v.node for v in live]
        self.live.set_offsets(np.array([(xs[v.node], v.depth) for v in live]).reshape(-1, 2))
        self.live.set_facecolors([COLORS[v.status] for v in live])
        self.live.set_edgecolors([EXPLORER if v.advancing else "white" for v in live])
        self.live.set_linewidths([1.6 if v.advancing else 0.5 for v in live])

        self._draw_labels(nodes, xs)
        self.caption.set_text(self.caption_text(frame, done))

    def _draw_labels(self, nodes, xs) -> None:
        shown = [v for v in nodes if v.status != DISCARDED] if self.show_labels else []
        while len(self.texts) < len(shown):
            self.texts.append(self.ax.text(0, 0, "", fontsize=6.5, ha="center", va="bottom", rotation=90,
                                           clip_on=True, animated=True))
        for t, v in zip(self.texts, shown):
            t.set_position((xs[v.node], -0.4))
            t.set_text(self.labels(v.token))
            t.set_color(COLORS[v.status])
            t.set_visible(True)
        for t in self.texts[len(shown):]:
            t.set_visible(False)

    def caption_text(self, frame: Frame, done: bool = False) -> str:
        c = frame.counters
        head = f"round {c['rounds']}  committed {c['tokens']}"
        if frame.commits_now:
            head += f" (+{frame.commits_now} now)"
        if done:
            head += "  [range done]"
        return "\n".join([
            head,
            f"weight loads {c['weight_loads']}  explorers {frame.explorers}  head evals {c['head_evals']}",
            f"node-layers {c['node_layers']}  waste {c['wasted_node_layers']}  fallbacks {c['fallbacks']}",
            f"tokens: {self.labels.sequence(frame.committed)}",
        ])


def panel_geometry(frame_lists: list[list[Frame]], context_pad: float = 0.6) -> tuple[tuple, int]:
    """Shared x-limits and lane count for panels showing these frames."""
    positions = [v.pos for frames in frame_lists for f in frames for v in f.nodes]
    lanes = max((v.lane for frames in frame_lists for f in frames for v in f.nodes), default=0) + 1
    if not positions:
        return (-0.5, 0.5), lanes
    return (min(positions) - context_pad, max(positions) + context_pad), lanes


def figure_inches(frame_lists: list[list[Frame]]) -> tuple[float, float, float]:
    """(panel width, figure width, figure height) in inches of panels side by side, one per frame list."""
    xlim, _ = panel_geometry(frame_lists)
    span = xlim[1] - xlim[0]
    n = len(frame_lists)
    if n > 1:
        panel_w = float(np.clip(1.0 + 0.42 * span, 4.5, 7.0))
    else:
        panel_w = float(np.clip(2.0 + 0.5 * span, 7.0, 14.0))
    return panel_w, 0.4 + n * panel_w, 5.2


class LatticeFigure:
    """Panels side by side, one per event log, with a legend and a frame counter; `render(i)` gives
    frame i as an RGBA array. A panel whose frames run out holds its last one.

    Rendering blits: the static parts (axes, ticks, legend, titles) are drawn once and cached, and each
    frame restores that background and draws only the artists that change, several times faster than
    drawing the whole figure per frame."""

    def __init__(self, titles: list[str], frame_lists: list[list[Frame]], *, L: list[int], exits: list,
                 labels: TokenLabels, dpi: float = 100, title: str = "", show_labels: bool = True):
        self.frame_lists = frame_lists
        self.n_frames = max(len(f) for f in frame_lists)
        xlim, lanes = panel_geometry(frame_lists)
        n = len(frame_lists)
        panel_w, width, height = figure_inches(frame_lists)
        # whole pixels, so every writer agrees on the frame size
        width, height = round(width * dpi) / dpi, round(height * dpi) / dpi
        self.fig = fig = new_figure(width, height, dpi)
        fig.subplots_adjust(left=0.7 / width, right=1 - 0.25 / width, top=1 - 0.95 / height,
                            bottom=1.45 / height, wspace=0.9 / panel_w)
        axes = fig.subplots(1, n, squeeze=False)[0]
        fig.legend(handles=legend_handles(), loc="upper center", bbox_to_anchor=(0.5, 1 - 0.3 / height),
                   ncol=7 if width > 11 else 4, fontsize=7, frameon=False, handlelength=1.5)
        fig.text(0.01, 0.99, title, ha="left", va="top", fontsize=8)
        self.counter = fig.text(0.99, 0.99, "", ha="right", va="top", fontsize=8, family="monospace",
                                animated=True)
        self.panels = [LatticePanel(ax, L=L[k], xlim=xlim, lanes=lanes, title=titles[k], labels=labels,
                                    exits=exits[k], show_labels=show_labels)
                       for k, ax in enumerate(axes)]
        self._background = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.fig.canvas.get_width_height()

    def update(self, i: int) -> None:
        """Set every panel to frame i (no rendering)."""
        many = len(self.panels) > 1
        for panel, frames in zip(self.panels, self.frame_lists):
            panel.draw(frames[min(i, len(frames) - 1)], done=many and i >= len(frames) - 1)
        self.counter.set_text(f"frame {i + 1}/{self.n_frames}")

    def render(self, i: int) -> np.ndarray:
        """Frame i as an [H, W, 4] uint8 array."""
        self.update(i)
        canvas = self.fig.canvas
        if self._background is None:
            canvas.draw()  # animated artists are left out: this is the static background
            self._background = canvas.copy_from_bbox(self.fig.bbox)
        else:
            canvas.restore_region(self._background)
        for panel in self.panels:
            for artist in panel.dynamic():
                if artist.get_visible():
                    self.fig.draw_artist(artist)
        self.fig.draw_artist(self.counter)
        return np.asarray(canvas.buffer_rgba()).copy()
