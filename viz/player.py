"""Writing rendered frames (RGBA arrays) as GIF, MP4 or a self-contained HTML player.

GIF is written with Pillow directly, frame by frame from a generator: Pillow keeps only each frame's
changed rectangle, so memory stays small however long the animation. MP4 (ffmpeg) and HTML
(matplotlib's `to_jshtml`) go through matplotlib's writers, fed by a figure that holds nothing but
the frame as a `figimage` at one pixel per "inch" (so the frame is copied, never resampled).
"""
from __future__ import annotations

import shutil

import numpy as np
from matplotlib import rc_context
from matplotlib.animation import FFMpegWriter, FuncAnimation
from PIL import Image

from dexsim.errors import UserError

from .output import new_figure


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def write_gif(render, n_frames: int, out: str, fps: float) -> None:
    frames = (Image.fromarray(render(i)[..., :3]) for i in range(n_frames))
    first = next(frames)
    first.save(out, save_all=True, append_images=frames, duration=max(1, round(1000 / fps)), loop=0)


def player_animation(render, n_frames: int, size: tuple[int, int], fps: float) -> FuncAnimation:
    """A FuncAnimation that shows the rendered frames unchanged (save it with dpi=1)."""
    w, h = size
    fig = new_figure(w, h, dpi=1)
    image = fig.figimage(np.zeros((h, w, 4), np.uint8), origin="upper")
    return FuncAnimation(fig, lambda i: image.set_data(render(i)), frames=n_frames, interval=1000 / fps,
                         repeat=False, blit=False, cache_frame_data=False)


def write_animation(render, n_frames: int, size: tuple[int, int], out: str, ext: str, fps: float) -> None:
    """`render(i)` -> frame i as [H, W, 4] uint8, for i in 0..n_frames-1, written to `out`."""
    try:
        if ext == ".gif":
            write_gif(render, n_frames, out, fps)
            return
        anim = player_animation(render, n_frames, size, fps)
        if ext == ".mp4":
            if not ffmpeg_available():
                raise UserError(f"--out {out}: MP4 needs ffmpeg on PATH (not found); use .gif or .html")
            anim.save(out, writer=FFMpegWriter(fps=fps), dpi=1)
        else:
            # the default embed limit (20 MB) silently drops frames; an animation is not worth truncating
            with rc_context({"animation.embed_limit": 2048}):
                html = anim.to_jshtml(fps=fps, embed_frames=True, default_mode="once")
            with open(out, "w") as f:
                f.write(html)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None
