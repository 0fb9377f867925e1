"""`python -m viz animate`: the lattice of one sequence, one frame per round, as GIF, MP4 or HTML.

    python -m viz animate --trace T.npz --policy dex -k 4 [--seq S] [--start POS] [--tokens N] --out lat.gif
    python -m viz animate --events EV.npz [--seq S] --out lat.html        (from `dexsim replay --events`)
    python -m viz animate --trace T.npz --compare ar,layerskip,dex --out cmp.gif
    python -m viz animate --model smollm2-135m --prompt "def add(a, b):" --compare ar,dex --out m.gif

The frames come from the event log alone (viz/frames.py): a trace is replayed by the core, an events
file is read as it is, a model runs in the reference engine (dexref, which needs torch and the cached
model) with the core recording its events. `--start POS` is the first generated token to show (0 = the first one after
the prompt) and `--tokens N` how many: the frames are the rounds from the one after token POS-1 was
committed to the one that commits token POS+N-1. `--compare` replays the same tokens under several
policies, side by side, each panel with its own round counter; a panel that finishes early holds
its last frame.

GIF is written with Pillow (no external program), MP4 with ffmpeg when it is on PATH, HTML as
matplotlib's self-contained JavaScript player (`to_jshtml`).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from dexsim import config
from dexsim.errors import UserError
from dexsim.core import registry
from dexsim.traces.analyze import exit_set
from dexsim.traces.format import load_trace

from . import player, source
from .draw import LatticeFigure, figure_inches
from .frames import build_frames, token_range
from .labels import make_labels
from .output import check_out

EXTENSIONS = (".gif", ".mp4", ".html")
DEFAULT_TOKENS = 4
MAX_FRAMES = 1500
# RGBA frame-sized buffers alive at once while rendering: Agg's canvas, the cached background (blitting),
# the rendered frame and the writer's copy of it.
FRAME_BUFFERS = 4
GIF_MAX_SIDE = 2**16 - 1  # a GIF stores its width and height in 16 bits
GIF_MAX_DELAY_S = (2**16 - 1) / 100  # and a frame's delay in hundredths of a second, in 16 bits


# ---------------------------------------------------------------------------- sources to frames

def check_range(start: int, tokens: int | None, total: int) -> int:
    """The number of tokens to show, once start and tokens are known to lie inside the sequence."""
    if start < 0:
        raise UserError(f"--start {start}: must be >= 0")
    if start >= total:
        raise UserError(f"--start {start}: past the end of the sequence ({total} tokens: 0..{total - 1})")
    if tokens is None:
        return min(DEFAULT_TOKENS, total - start)
    if tokens < 1:
        raise UserError(f"--tokens {tokens}: must be >= 1")
    if start + tokens > total:
        raise UserError(f"--start {start} --tokens {tokens}: past the end of the sequence ({total} tokens)")
    return tokens


def compare_names(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise UserError("--compare: empty list")
    for n in names:
        registry.get(n, "--compare")
    return names


def runs_from_args(args) -> list[source.RunLog]:
    """The event logs to show, one per panel."""
    names = compare_names(args.compare) if args.compare else [args.policy or "dex"]
    if args.model is not None:
        if not args.prompt:
            raise UserError("--model: needs --prompt TEXT")
        if args.start < 0:
            raise UserError(f"--start {args.start}: must be >= 0")
        if args.tokens is not None and args.tokens < 1:
            raise UserError(f"--tokens {args.tokens}: must be >= 1")
        args.tokens = args.tokens or DEFAULT_TOKENS
        cfg = registry.policy_config(args)
        return source.from_model(args.model, args.template, args.prompt, [replace(cfg, name=n) for n in names],
                                 args.start + args.tokens)
    if args.events is not None:
        if args.compare:
            raise UserError("--compare: needs --trace (an events file holds one policy's run)")
        return [source.from_events(args.events, args.seq, args.policy)]
    trace = load_trace(args.trace)
    source.check_seq(args.seq, trace.n_seqs)
    total = int(np.diff(trace.seq_offsets)[args.seq])
    args.tokens = check_range(args.start, args.tokens, total)
    cfg = registry.policy_config(args)
    exits = exit_set(trace, cfg.params["exits"])
    runs = []
    for name in names:
        if registry.get(name).hindsight:
            raise UserError(f"--policy {name}: picks a LayerSkip run in hindsight; animate that one "
                            f"(--policy layerskip --exit E --draft G)")
        policy = replace(cfg, name=name).policy(trace.L, exits, trace.depths)
        runs.append(source.from_trace(trace, policy, args.seq, args.start + args.tokens, seed=args.seed))
    return runs


def frames_of(run: source.RunLog, start: int, tokens: int | None, max_frames: int = MAX_FRAMES):
    rng = token_range(run.events, start, tokens, DEFAULT_TOKENS, total=run.total_tokens)
    if rng.n_rounds > max_frames:
        raise UserError(f"--tokens {rng.tokens}: {run.label} takes {rng.n_rounds} rounds for them, more than "
                        f"--max-frames {max_frames}; show fewer tokens or raise --max-frames")
    return rng, build_frames(run.events, run.L, rng.r0, rng.r1)


# ---------------------------------------------------------------------------- rendering

def lattice_figure(runs, frame_lists, labels, *, dpi: float = 100, title: str = "",
                   show_labels: bool = True) -> LatticeFigure:
    return LatticeFigure([r.label for r in runs], list(frame_lists), L=[r.L for r in runs],
                         exits=[r.exits for r in runs], labels=labels, dpi=dpi, title=title,
                         show_labels=show_labels)


# ---------------------------------------------------------------------------- CLI

def cmd_animate(args) -> int:
    ext = check_out(args.out, EXTENSIONS)
    if ext == ".mp4" and not player.ffmpeg_available():
        raise UserError(f"--out {args.out}: MP4 needs ffmpeg on PATH (not found); use .gif or .html")
    for flag, value in (("--fps", args.fps), ("--dpi", args.dpi)):
        if not 0 < value < float("inf"):
            raise UserError(f"{flag} {value}: must be a positive number")
    if ext == ".gif" and 1 / args.fps > GIF_MAX_DELAY_S:
        raise UserError(f"--fps {args.fps:g}: a GIF frame lasts at most {GIF_MAX_DELAY_S:g} s")
    runs = runs_from_args(args)
    ranges, frame_lists = zip(*(frames_of(r, args.start, args.tokens, args.max_frames) for r in runs))
    labels = make_labels(args.tokenizer, runs[0])
    where = args.trace or args.events or f"{args.model}: {args.prompt!r}"
    rng = ranges[0]
    title = f"{where}  sequence {args.seq}  tokens {rng.start}..{rng.start + rng.tokens - 1}"
    _, width, height = figure_inches(list(frame_lists))
    check_frame_size((width * args.dpi, height * args.dpi), args.dpi, ext)
    fig = lattice_figure(runs, frame_lists, labels, dpi=args.dpi, title=title, show_labels=not args.no_labels)
    n = fig.n_frames
    player.write_animation(fig.render, n, fig.size, args.out, ext, args.fps)
    detail = ", ".join(f"{r.label}: rounds {g.r0 + 1}..{g.r1 + 1}" for r, g in zip(runs, ranges))
    print(f"{args.out}: {n} frames ({detail})")
    return 0


def check_frame_size(size: tuple[float, float], dpi: float, ext: str) -> None:
    """Frames of `size` pixels can be rendered and written: checked before the first one is."""
    w, h = size
    if round(w) < 1 or round(h) < 1:
        raise UserError(f"--dpi {dpi:g}: frames of {w:.2f}x{h:.2f} pixels, less than one pixel a side")
    if ext == ".gif" and max(w, h) > GIF_MAX_SIDE:
        raise UserError(f"--dpi {dpi:g}: frames of {w:.0f}x{h:.0f} pixels, more than a GIF holds "
                        f"({GIF_MAX_SIDE} a side)")
    config.check_fits(f"--dpi {dpi:g}", FRAME_BUFFERS * 4 * w * h, f"rendering frames of {w:.0f}x{h:.0f} pixels")


def register(sub) -> None:
    p = sub.add_parser("animate", help="the lattice of one sequence, one frame per round (GIF, MP4 or HTML)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="replay this trace (.npz) under --policy")
    src.add_argument("--events", help="an event log written by `python -m dexsim replay --events`")
    src.add_argument("--model", help="run the reference engine on --prompt (needs dexref)")
    p.add_argument("--prompt", default=None, help="with --model: the prompt text")
    p.add_argument("--template", default="raw", help="with --model: raw | chat (the model's chat template)")
    registry.add_policy_flags(p, default=None)
    p.add_argument("--seed", type=config.parse_seed, default=0, help="seed of the off-path exit tokens and confidences")
    p.set_defaults(policy=None)  # None: dex for a trace, the recorded policy for an events file
    p.add_argument("--compare", default=None, help="policies side by side, e.g. ar,layerskip,dex (with --trace)")
    p.add_argument("--seq", type=int, default=0, help="which sequence of the trace or log (default 0)")
    p.add_argument("--start", type=int, default=0, help="first generated token to show (0-based, default 0)")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"how many generated tokens to show (default {DEFAULT_TOKENS}, cut at the end)")
    p.add_argument("--out", required=True, help="output file: .gif, .mp4 (needs ffmpeg) or .html")
    p.add_argument("--fps", type=float, default=4, help="frames (rounds) per second (default 4)")
    p.add_argument("--dpi", type=float, default=100, help="pixels per inch of the frames (default 100)")
    p.add_argument("--tokenizer", default="auto",
                   help="auto (a model run's own; dexref's cached one for a recorded trace's model) | ids | "
                        "a tokenizer.json file")
    p.add_argument("--no-labels", action="store_true", help="no token labels on the nodes")
    p.add_argument("--max-frames", type=int, default=MAX_FRAMES,
                   help=f"refuse ranges longer than this many rounds (default {MAX_FRAMES})")
    p.set_defaults(func=cmd_animate)
