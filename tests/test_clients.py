"""The clients people use against the app: langchain-openai (plain, streamed, structured output)
and litellm (plain, streamed, a pydantic response_format), through the app's real HTTP API."""
from __future__ import annotations

import os

import pytest
from pydantic import BaseModel, Field

from live_server import MODEL_NAME, LiveServer, start_live_server

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of litellm's price list


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population_millions: int


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=128, max_num_seqs=8)
    yield server
    server.stop()


def test_langchain_openai_chats_streams_and_returns_structured_output(live: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=live.url + "/v1", api_key="none", model=MODEL_NAME, temperature=0, max_tokens=48)
    reply = chat.invoke("Say hello in one short sentence.")
    assert isinstance(reply.content, str) and reply.content.strip()
    streamed = "".join(chunk.content for chunk in chat.stream("Say hello in one short sentence."))
    assert streamed == reply.content
    for method in ("json_schema", "json_mode"):
        structured = chat.with_structured_output(City, method=method)
        city = structured.invoke("Name a large city, its country and its population in millions, as JSON "
                                 "with keys name, country and population_millions.")
        assert isinstance(city, City), (method, city)  # parsed and validated by langchain


def test_litellm_chats_streams_and_parses_a_pydantic_format(live: LiveServer) -> None:
    import litellm

    ask = dict(model=f"openai/{MODEL_NAME}", api_base=live.url + "/v1", api_key="none", temperature=0,
               max_tokens=32, messages=[{"role": "user", "content": "Say hello in one short sentence."}])
    reply = litellm.completion(**ask)
    text = reply.choices[0].message.content
    assert text.strip() and reply.usage.completion_tokens > 0
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in litellm.completion(**ask, stream=True))
    assert streamed == text
    structured = litellm.completion(**{**ask, "max_tokens": 96, "response_format": City,
                                       "messages": [{"role": "user", "content": "Name a large city as JSON."}]})
    City.model_validate_json(structured.choices[0].message.content)
