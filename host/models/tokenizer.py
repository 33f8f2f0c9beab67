"""Text in and out through a checkpoint's ``tokenizer.json`` (the ``tokenizers`` package).

The file's own padding and truncation settings are switched off (sentence-transformers ships
tokenizers that pad every text to 128 tokens); :meth:`TextTokenizer.batch` pads to the longest
text of the batch and returns the attention mask. :class:`StreamDecoder` turns generated ids
into text as they come, holding back a byte-level token that ends inside a UTF-8 character.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError

__all__ = ["TextTokenizer", "StreamDecoder"]


class TextTokenizer:
    """``path``: a tokenizer.json; ``max_length``: truncate longer texts (None: no limit)."""

    def __init__(self, path, *, max_length: int | None = None):
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:                    # tokenizers raises its own Exception subclass
            raise CheckpointError(f"{Path(path).name}: not a readable tokenizers file ({err})") from None
        self._pad_id = tok.padding["pad_id"] if tok.padding else None
        tok.no_padding()
        if max_length is None:
            tok.no_truncation()
        else:
            tok.enable_truncation(int(max_length))
        self._tok = tok
        self.max_length = max_length
        self.path = Path(path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        if self._pad_id is not None:
            return int(self._pad_id)
        for name in ("[PAD]", "<pad>", "<|endoftext|>"):
            i = self._tok.token_to_id(name)
            if i is not None:
                return int(i)
        return 0

    def token_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)

    def _check_text(self, text) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return text

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(self._check_text(text), add_special_tokens=add_special_tokens).ids)

    def batch(self, texts, *, add_special_tokens: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [B, T], attention_mask int64 [B, T]) padded on the right with :attr:`pad_id`."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
            raise TypeError("texts must be a non-empty list of str")
        rows = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Incremental detokenization: :meth:`push` a token id, get the text it completes."""

    def __init__(self, tokenizer: TextTokenizer):
        self._tok = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token: int) -> str:
        self._ids.append(int(token))
        text = self._tok.decode(self._ids)
        if text.endswith("\ufffd"):                 # a multi-byte character is not complete yet
            return ""
        new = text[self._emitted:]
        self._emitted = len(text)
        return new
