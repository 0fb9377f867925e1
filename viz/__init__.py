"""Lattice animations and plots (matplotlib, Agg backend; no display needed).

- `python -m viz animate`: the depth-position lattice of one sequence, one frame per round, driven
  only by the lattice core's event log (viz/frames.py rebuilds it, viz/draw.py draws it).
- `python -m viz sweep DIR`: PNG plots of a sweep's results (`viz.plots.sweep_plots`).
- `python -m viz trace PATH [PATH2]`: per-depth match rate and EAD histogram of traces.
"""
