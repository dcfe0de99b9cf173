"""Prompts to token ids, safely and off the engine thread: raw text, checked token ids, or a chat
put through the model's template.

Thread-safe: the API's event loop, Gradio's workers and the load generator all encode in their own
threads, so that a megabyte of prompt delays nobody's step.

Chat-template safety: text in a message's content that spells a special token (`<|im_start|>`,
`<|im_end|>`...) is tokenized as plain text by default, so a user cannot close their turn and open
a system one. The template's own markup stays special. `parse_special_in_chat=True` restores the
old behaviour (content parsed like the template). A raw completion prompt is the caller's whole
prompt: its special-token text is parsed, as in vLLM.
"""
from __future__ import annotations

import re
import secrets
from typing import Any

from tokenizers import Tokenizer


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls and DEL, less tab and newlines


def check_text(text: str, what: str) -> str:
    """`text` unchanged, or ValueError for control characters or lone surrogates (invalid UTF-8)."""
    if _CONTROL.search(text):
        raise ValueError(f"{what} contains control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None
    return text


class PromptTooLong(ValueError):
    """The prompt cannot fit the context (found before tokenizing all of it)."""


def check_token_ids(token_ids: list[int] | tuple[int, ...], vocab_size: int, what: str) -> None:
    """ValueError unless every id is an int in [0, vocab_size): an id outside the embedding would
    fail the whole batch's step (on a GPU, a device-side assert that ends the CUDA context)."""
    if not token_ids:
        return
    bad = next((t for t in token_ids if type(t) is not int), None)
    if bad is not None:
        raise ValueError(f"{what}: token ids must be integers, got {str(bad)[:40]!r}")
    low, high = min(token_ids), max(token_ids)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{what}: token id {str(bad)[:40]} is out of vocabulary (0 to {vocab_size - 1})")


def check_prompt_chars(chars: int, max_chars: int, max_model_len: int) -> None:
    """PromptTooLong if a prompt of `chars` characters cannot fit `max_model_len` tokens."""
    if chars > max_chars:
        raise PromptTooLong(f"the prompt is far longer than the context of {max_model_len} tokens "
                            f"({chars:,} characters)")


class PromptEncoder:
    """Encodes prompts for one model (`tokenizer` is a Hugging Face fast tokenizer)."""

    def __init__(self, tokenizer: Any, vocab_size: int, max_model_len: int, parse_special_in_chat: bool = False) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.parse_special_in_chat = parse_special_in_chat
        # the same tokenizer, reading special-token text as plain text (a copy: the flag is shared
        # state, and flipping it on the one the engine decodes with would race)
        self._plain = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._plain.encode_special_tokens = True
        self._specials = tuple(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
        # no token covers more characters than the longest vocabulary entry, so a text longer than
        # max_model_len of those cannot fit: refused before spending seconds tokenizing it
        longest = max(len(t) for t in tokenizer.get_vocab())
        self.max_chars = max_model_len * max(longest, 1)

    # ---- what callers use ----------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a raw prompt (special-token text parsed) or checked ids; ValueError if bad."""
        if isinstance(prompt, str):
            self._check_length(prompt)
            return self.tokenizer(prompt).input_ids
        ids = list(prompt)
        check_token_ids(ids, self.vocab_size, "the prompt")
        return ids

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a conversation through the chat template, ready for the answer."""
        if self.parse_special_in_chat or not any(self._has_special(m.get("content")) for m in messages):
            text = self._render(messages)
            self._check_length(text)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self._encode_chat_plain(messages)

    # ---- inside --------------------------------------------------------------------------------
    def _render(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _check_length(self, text: str) -> None:
        check_prompt_chars(len(text), self.max_chars, self.max_model_len)

    def _has_special(self, content: Any) -> bool:
        return isinstance(content, str) and any(s in content for s in self._specials)

    def _encode_chat_plain(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render with a unique marker in place of each content, then tokenize the template's text
        with special tokens and each content with none."""
        nonce = secrets.token_hex(8)
        marked = [{**m, "content": f"\ue000{nonce}:{i}\ue001"} if isinstance(m.get("content"), str) else m
                  for i, m in enumerate(messages)]
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", self._render(marked))
        found = [int(i) for i in pieces[1::2]]
        if sorted(found) != [i for i, m in enumerate(messages) if isinstance(m.get("content"), str)]:
            raise ValueError("this model's chat template transforms message content, so special-token text in it "
                             "cannot be kept as plain text")
        self._check_length("".join(pieces[::2]) + "".join(messages[i]["content"] for i in found))
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 0:
                ids += self.tokenizer(piece, add_special_tokens=False).input_ids if piece else []
            else:
                ids += self._plain.encode(messages[int(piece)]["content"], add_special_tokens=False).ids
        return ids
