"""The tokenizer of a cached model (`tokenizers`, built at fetch time from the GGUF) and the prompt
templates: `raw` (the text as is) and `chat` (the model's own chat template, one user turn). A model
whose cache says `add_bos` (Gemma) gets its BOS token before every prompt, as llama.cpp and
`transformers` give it."""
from __future__ import annotations

import json
from pathlib import Path

from dexsim.errors import UserError

TEMPLATES = ("raw", "chat")


class Tok:
    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
        t = folder / "chat_template.jinja"
        self.chat_template = t.read_text() if t.is_file() else None
        c = folder / "config.json"
        cfg = json.loads(c.read_text()) if c.is_file() else {}
        self.bos = int(cfg["args"]["bos"]) if cfg.get("add_bos") else None  # prepended to prompts

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tk.decode(ids, skip_special_tokens=False)

    def apply(self, text: str, template: str) -> list[int]:
        """Token ids of `text` under a template (BOS first where the model wants one)."""
        ids = self._apply(text, template)
        return ids if self.bos is None or ids[:1] == [self.bos] else [self.bos] + ids

    def _apply(self, text: str, template: str) -> list[int]:
        if template == "raw":
            return self.encode(text)
        if template == "chat":
            if self.chat_template is None:
                raise UserError("--template chat: this model has no chat template")
            import jinja2

            env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
            rendered = env.from_string(self.chat_template).render(
                messages=[{"role": "user", "content": text}], add_generation_prompt=True)
            return self.encode(rendered)
        raise UserError(f"--template {template!r}: must be one of {', '.join(TEMPLATES)}")
