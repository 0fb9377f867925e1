"""Model assets: where real models and prompt sets come from, GGUF conversion, tokenizers."""
