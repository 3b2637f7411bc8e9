"""The exact text behind token ids of a byte-level BPE tokenizer (Qwen3, SmolLM2): each token's bytes, where a
token sequence's tokens lie in its decoded characters, and how many characters of a reference token a
predicted token reproduces."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders

from qft_core.model.tokenizer import byte_to_unicode

TOKENIZER_FILE = "tokenizer.json"


class TokenPiecesError(ValueError):
    """Token ids whose bytes do not decode as UTF-8 text; the message names the sequence."""


@cache
def _unicode_to_byte() -> dict[str, int]:
    return {symbol: byte for byte, symbol in byte_to_unicode().items()}


class TokenPieces:
    """Bytes and text of token ids, read from a byte-level BPE vocabulary.

    A vocabulary token is written in GPT-2's byte alphabet, so its bytes are exact even when it holds part of a
    multi-byte character. Added tokens (`<|im_end|>`, `<think>`) are atomic: they are never a prefix or a
    spelling of ordinary text.
    """

    def __init__(self, backend: Tokenizer) -> None:
        self._backend = backend
        self._added = set(backend.get_added_tokens_decoder())
        self._bytes_of: dict[int, bytes] = {}
        self._text_of: dict[int, str] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> TokenPieces | None:
        """Pieces of a Hugging Face fast tokenizer (or a `tokenizers.Tokenizer`); None unless it is byte-level
        BPE, the only kind whose tokens have exact bytes."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not isinstance(backend, Tokenizer) or not isinstance(backend.decoder, decoders.ByteLevel):
            return None
        return cls(backend)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TokenPieces | None:
        """Pieces of the tokenizer saved in `directory` (its tokenizer.json); None if it has none or is not
        byte-level."""
        path = Path(directory) / TOKENIZER_FILE
        return cls.of(Tokenizer.from_file(str(path))) if path.is_file() else None

    def char_spans(self, token_ids: Sequence[int], what: str = "token sequence") -> tuple[str, list[tuple[int, int]]]:
        """The decoded text of `token_ids` and each token's half-open character span in it. A token holding only
        part of a character spans that whole character (as do the other tokens that share it)."""
        pieces = [self._bytes(token_id) for token_id in token_ids]
        try:
            text = b"".join(pieces).decode("utf-8")
        except UnicodeDecodeError as error:
            raise TokenPiecesError(f"{what}: token bytes are not UTF-8 text ({error})") from None
        char_of_byte = [index for index, char in enumerate(text) for _ in range(len(char.encode("utf-8")))]
        spans = []
        byte_start = 0
        for piece in pieces:
            byte_end = byte_start + len(piece)
            spans.append((char_of_byte[byte_start], char_of_byte[byte_end - 1] + 1))
            byte_start = byte_end
        return text, spans

    def char_credit(self, predicted: int, target: int) -> tuple[int, int]:
        """(characters of the target token the predicted token reproduces, characters of the target token).

        Reproduced characters are the common prefix of the two tokens' texts: predicting 密 for the target 密码
        earns 1 of 2, predicting 密码 for the target 密 earns 1 of 1 (the next character is right). An added
        token counts as one character, matched only by itself; a predicted id outside the vocabulary earns 0.
        """
        if target in self._added:
            return int(predicted == target), 1
        reference = self._text(target)
        # Embedding rows past the tokenizer's vocabulary (Qwen3 pads 151,669 tokens to 151,936) decode to nothing:
        # a model can still predict them, and they reproduce no character.
        if predicted in self._added or self._backend.id_to_token(predicted) is None:
            return 0, len(reference)
        return len(os.path.commonprefix([reference, self._text(predicted)])), len(reference)

    def _bytes(self, token_id: int) -> bytes:
        found = self._bytes_of.get(token_id)
        if found is None:
            token = self._backend.id_to_token(token_id)
            if token is None:
                raise TokenPiecesError(f"token id {token_id} is not in the vocabulary")
            alphabet = _unicode_to_byte()
            found = token.encode("utf-8") if token_id in self._added else bytes(alphabet[symbol] for symbol in token)
            self._bytes_of[token_id] = found
        return found

    def _text(self, token_id: int) -> str:
        """The token's characters; a byte that is only part of a character stands as one lone surrogate (Python's
        'surrogateescape'), so partial characters compare byte by byte."""
        found = self._text_of.get(token_id)
        if found is None:
            found = self._text_of[token_id] = self._bytes(token_id).decode("utf-8", "surrogateescape")
        return found
