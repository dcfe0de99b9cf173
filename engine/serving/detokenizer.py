"""Token ids to streamed text, one request at a time, with stop strings.

Decoding the whole output every step costs O(length) per token; instead (as vLLM does) two
offsets into the token list bound a small window. `prefix_offset:read_offset` is text already
shown, decoded again only as context; `read_offset:` is new. The delta is
decode(window) minus decode(prefix). A window whose text ends in U+FFFD is an incomplete UTF-8
character (byte-level BPE splits emoji and CJK over tokens), so it is held until a later token
completes it. The window starts a few prompt tokens back, because tokenizers such as
sentencepiece drop the leading space of the first token decoded.

A byte-level BPE with a lone ByteLevel decoder (GPT-2's, SmolLM2's, Qwen's: tokenizers that do not
ask the wrapper to clean up spaces afterwards, which Llama 3's does) needs no window: its
decode(ids) is the UTF-8 of the tokens' bytes end to end, so a token's text is a lookup
(`BytePieces`), and only the bytes of a character still incomplete wait for the next token. That
path costs a fraction of the window's two decodes a token, which matters at 256 sequences a step.
"""
from __future__ import annotations

import codecs
from typing import Any, Protocol

from engine.serving.token_strings import spelled_bytes

# How many prompt tokens give the first output token its context.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class Tokenizer(Protocol):
    """The one method we need of a Hugging Face tokenizer."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def rust_decoder(tokenizer: Any) -> Any:
    """The Rust tokenizer behind a Hugging Face one, where its decode is the wrapper's exactly (no
    clean-up of spaces afterwards); else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True) else None


class BytePieces(dict):
    """A byte-level tokenizer's token id -> (the bytes it stands for, their text if they are whole
    UTF-8 else None), as its decoder joins them; filled on first use of each id. Special tokens
    are empty when skipped, and so is an id the tokenizer lacks (a padded LM head's), as decode
    drops both."""

    def __init__(self, backend: Any, skip_special_tokens: bool) -> None:
        super().__init__()
        self._backend = backend
        self.skip_special_tokens = skip_special_tokens
        added = backend.get_added_tokens_decoder()
        self._skipped = {i for i, token in added.items() if token.special} if skip_special_tokens else set()

    @classmethod
    def of(cls, tokenizer: Any, skip_special_tokens: bool) -> "BytePieces | None":
        """The pieces of a tokenizer whose decode is exactly its Rust ByteLevel decoder's; else None."""
        backend = rust_decoder(tokenizer)
        if backend is None or type(backend.decoder).__name__ != "ByteLevel":
            return None
        return cls(backend, skip_special_tokens)

    def __missing__(self, token_id: int) -> tuple[bytes, str | None]:
        token = None if token_id in self._skipped else self._backend.id_to_token(token_id)
        raw = b""
        if token is not None:  # the decoder's rule: GPT-2's alphabet spells bytes, else the text is itself
            raw = spelled_bytes(token)
            if raw is None:
                raw = token.encode()
        try:
            text: str | None = raw.decode()
        except UnicodeDecodeError:
            text = None
        self[token_id] = (raw, text)
        return raw, text


class IncrementalDetokenizer:
    """Turn one sequence's output tokens into text deltas, holding back what is not final yet.

    Text is held back while it ends in an incomplete character, or while its end could be the
    start of a stop string. Once a stop string appears the visible text ends just before it (or
    just after it, `include_stop`),
    `stopped` is True, and later tokens are ignored. The concatenation of all deltas (and the
    final `flush()`) equals tokenizer.decode(output_ids), truncated before the first stop string.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        stop: tuple[str, ...] = (),
        skip_special_tokens: bool = True,
        include_stop: bool = False,
        pieces: BytePieces | None = None,
    ) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        # the Rust tokenizer directly, 3x cheaper a call than the Python wrapper (it runs every token),
        # where the wrapper would add nothing (no clean-up of tokenization spaces)
        self._fast = rust_decoder(tokenizer)
        self._stop = tuple(stop)
        self._include_stop = include_stop  # the text ends after the stop string, not before
        self._max_stop_len = max((len(s) for s in stop), default=0)
        self._decoded = ""  # every output character decoded so far, including held-back ones
        self._shown = 0  # len of the visible prefix of _decoded
        self.stop_string: str | None = None
        if pieces is not None and pieces.skip_special_tokens != bool(skip_special_tokens):
            raise ValueError("the pieces were made for the other skip_special_tokens")
        self._pieces = pieces  # the byte-level path: no window, no prompt context
        self._pending = b""  # with pieces: the start of a character whose other bytes are still to come
        if pieces is not None:
            return
        context = self._prompt_context(list(prompt_token_ids))
        self._tokens: list[int] = context  # context prompt tokens, then every output token
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._prefix_text = self._decode(0, len(context))

    @property
    def stopped(self) -> bool:
        """True once a stop string has appeared in the output."""
        return self.stop_string is not None

    @property
    def text(self) -> str:
        """All text shown so far."""
        return self._decoded[: self._shown]

    def add_tokens(self, token_ids: list[int]) -> str:
        """Append new output tokens; return the text that became visible (maybe "")."""
        if self.stopped:
            return ""
        if self._pieces is not None:
            for token_id in token_ids:
                self._decoded += self._piece(token_id)
        else:
            for token_id in token_ids:
                self._tokens.append(token_id)
                self._decoded += self._advance(final=False)
        return self._release(final=False)

    def flush(self) -> str:
        """Release all held-back text at the end of generation (nothing past a stop string).

        Incomplete characters come out as U+FFFD, as tokenizer.decode would show them.
        """
        if self.stopped:
            return ""
        self._decoded += self._bytes(b"", final=True) if self._pieces is not None else self._advance(final=True)
        return self._release(final=True)

    def _piece(self, token_id: int) -> str:
        """The text a token adds on the byte-level path: its own if whole and nothing waits."""
        raw, text = self._pieces[token_id]
        return text if text is not None and not self._pending else self._bytes(raw, final=False)

    def _bytes(self, raw: bytes, final: bool) -> str:
        """Decode the waiting bytes and `raw`; an incomplete character's bytes wait (unless final)."""
        data = self._pending + raw
        text, used = codecs.utf_8_decode(data, "replace", final)
        self._pending = data[used:]
        return text

    def _prompt_context(self, prompt: list[int]) -> list[int]:
        """The last few prompt tokens, or none if they end inside a character.

        Context that ends mid-character would make the first output token's text start with a
        completed character that decode(output_ids) never shows.
        """
        context = prompt[-PROMPT_CONTEXT_TOKENS:]
        text = self._tokenizer.decode(context, skip_special_tokens=self._skip_special)
        return [] if text.endswith(REPLACEMENT_CHAR) else context

    def _decode(self, start: int, end: int) -> str:
        if self._fast is not None:
            return self._fast.decode(self._tokens[start:end], skip_special_tokens=self._skip_special)
        return self._tokenizer.decode(self._tokens[start:end], skip_special_tokens=self._skip_special)

    def _advance(self, final: bool) -> str:
        """Text that the tokens past read_offset add, once it ends on a whole character."""
        if self._read_offset == len(self._tokens):
            return ""
        window = self._decode(self._prefix_offset, len(self._tokens))
        if not final and window.endswith(REPLACEMENT_CHAR):
            return ""  # wait for the rest of the character
        if len(window) <= len(self._prefix_text) and not final:
            return ""  # e.g. a skipped special token: nothing new to show yet
        delta = window[len(self._prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)
        return delta

    def _release(self, final: bool) -> str:
        """Look for a stop string in the unseen text, then show what can no longer change."""
        if not self._stop:  # the common request: all the text is final but an incomplete character
            delta = self._decoded[self._shown:]
            self._shown = len(self._decoded)
            return delta
        start = self._shown  # a stop string starting earlier would have been found already
        hit = self._find_stop(start)
        if hit is not None:
            index, self.stop_string = hit
            end = index + len(self.stop_string) if self._include_stop else index
            self._decoded = self._decoded[:end]
        else:
            end = len(self._decoded) if final else len(self._decoded) - self._held_back()
        delta = self._decoded[self._shown : max(end, self._shown)]
        self._shown = max(end, self._shown)
        return delta

    def _find_stop(self, start: int) -> tuple[int, str] | None:
        """The earliest stop string occurrence starting at or after `start`."""
        best: tuple[int, str] | None = None
        for s in self._stop:
            index = self._decoded.find(s, start)
            if index != -1 and (best is None or index < best[0]):
                best = (index, s)
        return best

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        text = self._decoded
        for n in range(min(self._max_stop_len - 1, len(text) - self._shown), 0, -1):
            suffix = text[-n:]
            if any(s.startswith(suffix) for s in self._stop):
                return n
        return 0
