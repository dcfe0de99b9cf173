"""How the engine's outputs look in OpenAI's (and vLLM's) response bodies: one choice, one stream
chunk, and their logprobs, for chat and for legacy completions. Pure functions of the outputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.core.outputs import Logprobs, RequestOutput, TokenChoice

Entries = list[tuple[int, str, Logprobs | None]]  # per token: where its text starts, its text, its logprobs


@dataclass(frozen=True)
class Shape:
    """What a request asked to see besides the text."""

    chat: bool
    echo: str = ""  # completions: the prompt's text before each completion's
    logprobs: int | None = None  # the output tokens' logprobs, with this many alternatives
    echo_logprobs: bool = False  # completions with echo and logprobs: the prompt's tokens lead the lists
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs field, with this many alternatives
    # streaming: where each sample's next token's text starts (one Shape per request)
    _next_offset: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    def chunk(self, out: RequestOutput, first: bool) -> dict[str, Any]:
        """A stream chunk's choice for one output (`first`: the sample's first)."""
        if self.chat:
            delta = {"role": "assistant", "content": out.delta_text} if first else {"content": out.delta_text}
            logprobs = None if self.logprobs is None else chat_logprobs([lp for lp in out.logprobs or ()])
            return {"index": out.index, "delta": delta, "logprobs": logprobs, "finish_reason": out.finish_reason}
        entries: Entries = self._echoed(out.prompt_logprobs) if first else []
        at = self._next_offset.get(out.index, len(self.echo))
        entries += self._running(out.logprobs or (), at)
        if entries:
            self._next_offset[out.index] = entries[-1][0] + len(entries[-1][1])
        return {"index": out.index, "text": self.echo + out.delta_text if first else out.delta_text,
                "logprobs": None if self.logprobs is None else text_logprobs(entries, self.logprobs),
                "finish_reason": out.finish_reason}

    def choice(self, out: RequestOutput, logprobs: list[Logprobs],
               prompt: tuple[Logprobs | None, ...] | None) -> dict[str, Any]:
        """A whole answer's choice: its last output, its tokens' logprobs, and its prompt's
        logprobs if asked."""
        if self.chat:
            shown = None if self.logprobs is None else chat_logprobs(logprobs)
            return {"index": out.index, "message": {"role": "assistant", "content": out.text}, "logprobs": shown,
                    "finish_reason": out.finish_reason}
        entries = self._echoed(prompt) + self._running(logprobs, len(self.echo))
        body = {"index": out.index, "text": self.echo + out.text,
                "logprobs": None if self.logprobs is None else text_logprobs(entries, self.logprobs),
                "finish_reason": out.finish_reason}
        if self.prompt_logprobs is not None:
            body["prompt_logprobs"] = vllm_prompt_logprobs(prompt, self.prompt_logprobs)
        return body

    def extra(self, prompt: tuple[Logprobs | None, ...] | None) -> dict[str, Any]:
        """Fields of a whole chat answer's body beside its choices (vLLM's prompt_logprobs)."""
        if not self.chat or self.prompt_logprobs is None:
            return {}
        return {"prompt_logprobs": vllm_prompt_logprobs(prompt, self.prompt_logprobs)}

    @staticmethod
    def _running(logprobs: Any, at: int) -> Entries:
        """Output tokens' entries, each token's text starting where the one before it ends (vLLM's
        text_offset: text held back for a possible stop string does not shift it)."""
        entries: Entries = []
        for lp in logprobs:
            entries.append((at, lp.token.text, lp))
            at += len(lp.token.text)
        return entries

    def _echoed(self, prompt: tuple[Logprobs | None, ...] | None) -> Entries:
        """The prompt's tokens, leading an echoed completion's logprobs (the first has none)."""
        if not self.echo_logprobs or prompt is None:
            return []
        at = max(0, len(self.echo) - sum(len(lp.token.text) for lp in prompt if lp))
        entries: Entries = [(0, self.echo[:at], None)]  # the first token: what the others leave of the prompt
        for lp in prompt[1:]:
            entries.append((at, lp.token.text, lp))
            at += len(lp.token.text)
        return entries


def chat_logprobs(entries: list[Logprobs]) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}."""
    def one(c: TokenChoice) -> dict[str, Any]:
        return {"token": c.text, "logprob": c.logprob, "bytes": list(c.bytes)}
    return {"content": [one(e.token) | {"top_logprobs": [one(c) for c in e.top]} for e in entries], "refusal": None}


def text_logprobs(entries: Entries, k: int) -> dict[str, Any]:
    """The legacy completions `logprobs`: parallel lists of tokens, their logprobs, {text: logprob} of
    k alternatives (and the token itself, as vLLM), and where each token's text starts. An echoed
    prompt's first token has None for both, as in OpenAI's answers."""
    tokens, values, tops = [], [], []
    for _, text, e in entries:
        tokens.append(text)
        values.append(e.token.logprob if e else None)
        tops.append({c.text: c.logprob for c in (*e.top[:k], e.token)} if e else None)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": [offset for offset, _, _ in entries]}


def vllm_prompt_logprobs(prompt: tuple[Logprobs | None, ...] | None, k: int) -> list[Any] | None:
    """vLLM's `prompt_logprobs`: per prompt token (None for the first), {token id: {logprob, rank,
    decoded_token}} for the token itself and the k most likely."""
    if prompt is None:
        return None

    def entry(c: TokenChoice, rank: int) -> dict[str, Any]:
        return {"logprob": c.logprob, "rank": rank, "decoded_token": c.text}
    return [None if lp is None else {str(c.token_id): entry(c, r) for c, r in
                                     [(c, i + 1) for i, c in enumerate(lp.top[:k])] + [(lp.token, lp.rank)]}
            for lp in prompt]
