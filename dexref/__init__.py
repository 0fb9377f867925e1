"""DEX reference engine (PyTorch). Comes with the reference-engine issue."""
