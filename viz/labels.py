"""Token labels for the nodes of an animation: text when a tokenizer is available, else the id.

`--tokenizer auto` uses the tokenizer the reference engine cached for the trace's model
(`dexref fetch`), but only for a recorded trace: a synthetic trace's token ids are random, and
decoding them would print real-looking words that no model produced.

Two ids are not real tokens. A replay's root holds -1: the last prompt token, which the trace does not
record. Tokens at or above the vocabulary size are a replay's off-path guesses (dexsim/replay/executor.py gives
them fresh ids so they never match): the trace does not know what a real model would have guessed
there, so they are shown as a dot.
"""
from __future__ import annotations

from pathlib import Path

from dexsim.errors import UserError

OFF_PATH = "·"
MAX_CHARS = 7


class TokenLabels:
    def __init__(self, vocab: int | None = None, tokenizer=None):
        self.vocab = vocab
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`, or None
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token < 0:
            return ""
        if self.vocab is not None and token >= self.vocab:
            return OFF_PATH
        if token not in self._cache:
            self._cache[token] = self._text(token)
        return self._cache[token]

    def _text(self, token: int) -> str:
        if self.tokenizer is None:
            return str(token)
        text = self.tokenizer.decode([token], skip_special_tokens=False)
        # visible whitespace, short enough to sit above a column
        text = text.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣")
        return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"

    def sequence(self, tokens: list[int], last: int = 6) -> str:
        """The last few committed tokens, quoted, for a caption."""
        shown = [f"'{self(t)}'" if self.tokenizer is not None else self(t) for t in tokens[-last:]]
        return ("… " if len(tokens) > last else "") + " ".join(shown)


def _load_tokenizer_file(path: str):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("--tokenizer: needs the `tokenizers` package") from None
    if not Path(path).is_file():
        raise UserError(f"--tokenizer {path}: no such file (expected a Hugging Face tokenizer.json)")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own exception types
        raise UserError(f"--tokenizer {path}: cannot read ({e})") from None


def _cached_tokenizer(model: str | None):
    """The tokenizer dexref cached for `model`, if dexref and the file are there."""
    if not model:
        return None
    try:
        from dexref.assets.sources import model_dir
    except ImportError:
        return None
    path = model_dir(model) / "tokenizer.json"
    return _load_tokenizer_file(str(path)) if path.is_file() else None


def make_labels(spec: str, run) -> TokenLabels:
    """Labels from `--tokenizer` (auto | ids | a tokenizer.json path) for a RunLog (viz/source.py)."""
    trace = run.trace
    vocab = run.vocab if run.vocab is not None else (trace.vocab if trace is not None else None)
    if spec == "ids":
        return TokenLabels(vocab)
    if spec != "auto":
        return TokenLabels(vocab, _load_tokenizer_file(spec))
    if run.tokenizer is not None:  # a live model run: its own tokenizer
        return TokenLabels(vocab, run.tokenizer)
    if trace is None or trace.meta.get("synthetic", True):
        return TokenLabels(vocab)
    return TokenLabels(vocab, _cached_tokenizer(trace.meta.get("model")))
