"""Lattice animations and sweep plots. Come with the viz issue."""
