"""One token's text and bytes, as a logprobs answer names it (OpenAI's `token` and `bytes`).

A byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen) stores each token as the bytes it stands for,
spelled with GPT-2's printable alphabet; so a token's bytes come straight from its vocabulary
entry, even when it holds only part of a UTF-8 character (its text then shows U+FFFD, as vLLM's
does). SentencePiece vocabularies (Llama 2, Mistral) spell a space as U+2581 and a raw byte as
<0xNN>: both are read back, so that tokens' texts still join into the text.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from engine.core.outputs import Logprobs, TokenChoice, TokenLogprobs


@lru_cache(maxsize=1)
def byte_of_char() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable character -> the byte it spells."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def spelled_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level vocabulary entry spells in GPT-2's alphabet; None if it is not so spelled
    (an added token's own text)."""
    table = byte_of_char()
    return bytes(table[c] for c in piece) if all(c in table for c in piece) else None


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in type(backend.decoder).__name__ + backend.decoder.__repr__()


class TokenStrings:
    """Text and bytes of token ids under one tokenizer, cached per id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._byte_level = _is_byte_level(tokenizer)
        self._special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        self._cache: dict[int, tuple[str, tuple[int, ...]]] = {}

    def __call__(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._spell(token_id)
        return hit

    def _spell(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:  # an id past the tokenizer's vocabulary (a padded lm head)
            return "", ()
        if self._byte_level and token_id not in self._special:
            raw = spelled_bytes(piece)
            if raw is not None:
                return raw.decode("utf-8", errors="replace"), tuple(raw)
        if token_id in self._special:
            return piece, tuple(piece.encode("utf-8"))
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece's byte fallback
            raw = bytes([int(piece[3:5], 16)])
            return raw.decode("utf-8", errors="replace"), tuple(raw)
        text = piece.replace("\u2581", " ")  # SentencePiece spells a space as U+2581; decode() would drop a leading one
        return text, tuple(text.encode("utf-8"))

    def choice(self, token_id: int, logprob: float) -> TokenChoice:
        text, raw = self(token_id)
        return TokenChoice(token_id, text, raw, logprob)

    def logprobs(self, token_id: int, raw: TokenLogprobs) -> Logprobs:
        """The API's view of a drawn token's TokenLogprobs: texts attached."""
        top = tuple(self.choice(t, lp) for t, lp in zip(raw.top_ids, raw.top_logprobs))
        return Logprobs(self.choice(token_id, raw.logprob), top, raw.rank)
