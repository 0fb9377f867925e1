"""DEX reference engine (PyTorch): the lattice core of dexsim driving a real transformer, layer by layer.

- `dexref.model`: a layer-addressable Llama-family transformer (one file, shape comments).
- `dexref.engine`: the core's torch Executor (committed KV cache + per-node KV pool, tree attention),
  sampling, `generate`, and the AR recomputation for the batch-invariant check.
- `dexref.assets`: real models and prompt sets from the package registry, cached offline (`sources`,
  `fetch`, `gguf` conversion, `prompts`, `tokenizer`).
- `dexref.load`: a model ready to run from its settings (`ModelConfig`: model, device, dtype, ...), exit
  sets checked against the heads.
- `dexref.checkpoint`: your own model: a local Hugging Face checkpoint folder, or random weights of a
  dexsim catalog shape (`random:NAME`).
- `dexref.graphs`: the fast mode's layer calls as static-shape steps, CUDA graphs on a GPU.
- `dexref.record`: real depth traces in the dexsim format.
- `dexref.exits`: trained exit heads (self-distilled low-rank adapters before the frozen head).
- `dexref.hf`: the Hugging Face reference (tests and benchmark only).
- `dexref.cli`: `python -m dexref fetch | generate | record | train-exits`.
"""
__version__ = "0.1.0"
