"""The chat tab: streaming answers from the engine thread, with a stop button that aborts the request.

The chat function is an async generator, so a waiting user holds no worker thread: with the
queue's concurrency raised, many browsers stream at once and the engine batches them together.
Stop, a closed tab or a dropped connection cancels the generator; `finally` aborts the request
in the engine, which frees its blocks, and a stopped answer is marked as such. An empty message is
refused by a validator before anything runs, so the chat stays usable; examples only fill the
message box, keeping the user's own system prompt and sampling settings.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, AsyncIterator, Callable

import gradio as gr

from engine.serving.engine_thread import ChatPrompt, EngineThread
from engine.serving.prompt_encoder import check_text
from engine.serving.request_stream import EngineDeadError, EngineOverloaded, RequestRejected
from engine.core.sampling_params import SamplingParams

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and briefly."
EXAMPLES = ["Explain how a paged KV cache works, in three sentences.", "Write a haiku about GPUs.",
            "What is continuous batching?"]
STOPPED = "… *(stopped)*"
_ids = itertools.count()


def check_message(message: Any, *settings: Any) -> dict[str, Any]:
    """The chat's validator: an empty or blank message gets a notice on the box, and nothing runs."""
    return gr.validate(isinstance(message, str) and bool(message.strip()), "Please type a message first.")


def mark_stopped(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last answer, stopped by the user, says so."""
    if history and history[-1].get("role") == "assistant":
        last = dict(history[-1])
        text = content_text(last.get("content"))
        if not text.endswith(STOPPED):
            last["content"] = text + STOPPED
        return history[:-1] + [last]
    return history


def content_text(content: Any) -> str:
    """The text of a Gradio message's content: a string, a text part, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(content_text(part) for part in content)
    return ""


def conversation(message: str, history: list[dict[str, Any]], system_prompt: str) -> ChatPrompt:
    """System prompt, earlier turns (text only) and the new message, in messages format."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages += [{"role": m["role"], "content": content_text(m.get("content"))}
                 for m in history if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    messages.append({"role": "user", "content": message})
    return ChatPrompt(tuple(messages))


def chat_request(message: Any, history: Any, system_prompt: Any, temperature: Any, top_p: Any,
                 max_new_tokens: Any, max_len: int) -> tuple[ChatPrompt, SamplingParams]:
    """The chat's inputs checked as the API checks its fields (the Gradio API can send anything):
    ValueError with a message for the user."""
    if not isinstance(message, str) or not message.strip():
        raise ValueError("Please type a message first.")
    system_prompt = system_prompt if isinstance(system_prompt, str) else ""
    history = history if isinstance(history, list) else []
    numbers = {"temperature": temperature, "top_p": top_p, "max new tokens": max_new_tokens}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a number, got {str(value)[:40]}")
    if not 1 <= max_new_tokens < max_len:
        raise ValueError(f"max new tokens must be between 1 and {max_len - 1}")
    prompt = conversation(message, history, system_prompt)
    for m in prompt.messages:
        check_text(m["content"], "the message")
    return prompt, SamplingParams(temperature=float(temperature), top_p=float(top_p), max_tokens=int(max_new_tokens))


Responder = Callable[[str, list[dict[str, Any]], str, float, float, float], AsyncIterator[str]]
# a chat's text as it streams: (prompt, params, request id) -> the first sample's deltas; errors are
# the engine's kinds (RequestRejected, EngineOverloaded, EngineDeadError)
TextStream = Callable[[ChatPrompt, SamplingParams, str], AsyncIterator[str]]


def engine_texts(engine: EngineThread) -> TextStream:
    """Text deltas from the engine thread; closing the iterator aborts the request."""

    async def texts(prompt: ChatPrompt, params: SamplingParams, request_id: str) -> AsyncIterator[str]:
        stream = await engine.submit_async(prompt, params, request_id=request_id)
        try:
            async for out in stream:
                if out.error:
                    raise RequestRejected(f"Sorry, this answer failed ({out.error}). Please try again.")
                yield out.delta_text
        finally:
            stream.close()  # a no-op when finished; otherwise (stop, closed tab) an abort

    return texts


def make_responder(texts: TextStream, max_len: Callable[[], int]) -> Responder:
    """The ChatInterface function over `texts` (the engine's, or remote engines'); `max_len`: the
    context length the answer must fit in."""

    async def respond(message: str, history: list[dict[str, Any]], system_prompt: str, temperature: float,
                      top_p: float, max_new_tokens: float) -> AsyncIterator[str]:
        try:  # the validator stops an empty message in the UI; an API caller gets a clear error
            prompt, params = chat_request(message, history, system_prompt, temperature, top_p, max_new_tokens,
                                          max_len())
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        chunks = texts(prompt, params, f"chat-{next(_ids)}")
        text = ""
        try:
            async for delta in chunks:
                text += delta
                yield text
        except EngineOverloaded as exc:
            raise gr.Error("The server is busy right now: please try again in a few seconds.") from exc
        except (RequestRejected, EngineDeadError) as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            await chunks.aclose()

    return respond


def build_chat(texts: TextStream, max_len: int, default_max_tokens: int = 256, prefix: str = "", height: int = 460,
               api_name: str | None = "chat") -> gr.ChatInterface:
    """Render the chat interface inside the current Blocks context, answering from `texts` within a
    context of `max_len` tokens. `prefix` sets its element ids
    apart from another chat's on the same page (the presenter's stage has its own)."""
    settings = gr.Accordion("System prompt and sampling", open=False, render=False)
    system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2, render=False)
    temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)", render=False)
    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p", render=False)
    max_tokens = gr.Slider(1, min(2048, max_len - 1), value=default_max_tokens, step=1,
                           label="Max new tokens", render=False)
    chat = gr.ChatInterface(
        make_responder(texts, lambda: max_len),
        chatbot=gr.Chatbot(height=height, label="PagedChat", elem_id=f"{prefix}chatbot"),
        textbox=gr.Textbox(placeholder="Ask something...", elem_id=f"{prefix}chat-input", submit_btn=True,
                           stop_btn=True),
        additional_inputs=[system, temperature, top_p, max_tokens],
        additional_inputs_accordion=settings,
        examples=[[e] for e in EXAMPLES],  # the message only: the user's settings stay
        run_examples_on_click=False,  # an example fills the box; the user sends it
        validator=check_message,
        api_name=api_name,
        api_visibility="public" if api_name else "private",
        fill_height=False,
    )
    chat.textbox.stop(mark_stopped, chat.chatbot, chat.chatbot, api_visibility="private", queue=False)
    return chat
