"""dexsim: the DEX lattice core, trace replay, cost model and simulator. Torch-free."""
