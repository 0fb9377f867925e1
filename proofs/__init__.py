"""Z3 proofs that DEX is lossless. Come with the proofs issue."""
