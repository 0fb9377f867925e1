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
    """`hf`: a Hugging Face checkpoint folder, whose tokenizer.json adds its own special tokens (BOS)
    to raw text, as `transformers`' tokenizer(text) does; its chat template is rendered with the
    tokenizer's bos/eos strings and encoded without adding any (as `apply_chat_template`)."""

    def __init__(self, folder: str | Path, hf: bool = False):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        try:
            self.tk = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception type
            raise UserError(f"{path}: not a readable tokenizer ({e})") from None
        t = folder / "chat_template.jinja"
        self.chat_template = t.read_text() if t.is_file() else None
        self.hf, self.specials = hf, {}
        if hf:
            tc = folder / "tokenizer_config.json"
            conf = json.loads(tc.read_text()) if tc.is_file() else {}
            self.chat_template = self.chat_template or conf.get("chat_template")
            if isinstance(self.chat_template, list):  # named templates: the default one
                self.chat_template = {t.get("name"): t.get("template") for t in self.chat_template}.get("default")
            self.specials = {k: (v.get("content") if isinstance(v, dict) else v) or ""
                             for k in ("bos_token", "eos_token") for v in [conf.get(k)]}
            self.bos = None
            return
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
            return self.tk.encode(text, add_special_tokens=True).ids if self.hf else self.encode(text)
        if template == "chat":
            if self.chat_template is None:
                raise UserError("--template chat: this model has no chat template")
            import jinja2

            env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
            rendered = env.from_string(self.chat_template).render(
                messages=[{"role": "user", "content": text}], add_generation_prompt=True, **self.specials)
            return self.encode(rendered)
        raise UserError(f"--template {template!r}: must be one of {', '.join(TEMPLATES)}")


class ByteTok:
    """Text as UTF-8 bytes (ids 0-255), for models with random weights (`--model random:NAME`), which
    have no tokenizer; ids above 255 decode as <id>."""
    hf = False
    bos = None
    tk = None  # no `tokenizers` tokenizer: viz labels nodes by id

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) if i < 128 else f"<{i}>" for i in ids)

    def apply(self, text: str, template: str) -> list[int]:
        if template != "raw":
            raise UserError(f"--template {template!r}: a random-weight model has only the raw template")
        return self.encode(text)
