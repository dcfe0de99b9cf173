"""Structured output: the grammar's token mask (on a tiny bitmask, on the real tokenizer, on CUDA),
the engine (n > 1, a batch mixing grammar and free rows, preemption) and the API (response_format,
vLLM's guided_* and structured_outputs, the `openai` client's `parse()`, streaming, 400s)."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from engine.core.guided_decoding import GuidedDecoding
from engine.serving.llm import LLM
from engine.runner.sampler import SampleRow, Sampler
from engine.core.sampling_params import SamplingParams
from engine.runner.structured_output import GrammarCompiler, apply_guides, fill_bitmask, unpack_bitmask

EOS = 2  # SmolLM2's <|im_end|>
# small, and bounded (maxLength, an enum, no free whitespace): a 135M model cannot ramble past max_tokens
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
          "required": ["name", "age", "city"], "additionalProperties": False}
MODEL = "SmolLM2-135M-Instruct"  # the live server's name for it (tests/live_server.py)
ASK = "Describe a person as JSON with a name, an age and a city."


def check_person(text: str) -> dict:
    """The text parses as JSON valid against PERSON (jsonschema where installed, else by hand)."""
    value = json.loads(text)
    try:
        import jsonschema
    except ImportError:
        assert set(value) == {"name", "age", "city"} and value["city"] in ("Paris", "Rome", "Oslo")
        assert isinstance(value["age"], int) and len(value["name"]) <= 24
    else:
        jsonschema.validate(value, PERSON)
    return value


@pytest.fixture(scope="module")
def compiler(smol_tokenizer) -> GrammarCompiler:
    # 64 more logits than tokens, as a padded lm head has: those ids are never allowed
    return GrammarCompiler(smol_tokenizer, len(smol_tokenizer) + 64, frozenset({EOS}))


# ---- the mask --------------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab", [1, 31, 32, 70, 96, 130])
def test_unpack_bitmask_matches_a_bit_by_bit_reference(vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    words = 3  # 96 bits: vocab 130 is wider than the mask (its last ids are all disallowed)
    bitmask = torch.randint(-2**31, 2**31, (4, words), generator=gen, dtype=torch.int64).to(torch.int32)
    ref = torch.tensor([[t < 32 * words and bool(int(bitmask[r, t // 32]) >> (t % 32) & 1) for t in range(vocab)]
                        for r in range(4)])
    assert torch.equal(unpack_bitmask(bitmask, vocab), ref)


def test_the_mask_allows_what_the_grammar_allows_and_leaves_other_rows_alone(compiler, smol_tokenizer) -> None:
    guide = compiler.start(GuidedDecoding.choice(["yes", "no way"]))
    vocab = compiler.vocab_size
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    rows = [SimpleNamespace(guide=None), SimpleNamespace(guide=guide), SimpleNamespace(guide=None)]
    out = apply_guides(logits, rows)
    assert torch.equal(logits, before), "the caller's logits are never modified"
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    allowed = out[1].isfinite().nonzero().squeeze(1).tolist()
    assert allowed and torch.equal(out[1, allowed], logits[1, allowed])
    texts = [smol_tokenizer.decode([t]) for t in allowed]
    assert all("yes".startswith(t) or "no way".startswith(t) for t in texts), texts
    assert {"y", "yes", "no"} <= set(texts)
    assert max(allowed) < len(smol_tokenizer), "padded logits are never allowed"
    # "no" then " way": the grammar can take nothing more, and its sequence stops
    ids = smol_tokenizer.encode("no way")
    assert guide.advance([0] + ids[:1], 1) is False
    assert guide.advance([0] + ids, 1) is True
    with pytest.raises(ValueError, match="refused"):
        compiler.start(GuidedDecoding.choice(["yes"])).advance(smol_tokenizer.encode("no"), 0)


def test_rows_sharing_a_guide_before_their_fork_get_the_same_mask(compiler) -> None:
    a, b = compiler.start(GuidedDecoding.json_schema(PERSON)), compiler.start(GuidedDecoding("regex", "[0-9]{3}"))
    masks = fill_bitmask([a, b, a, a])
    assert torch.equal(masks[0], masks[2]) and torch.equal(masks[0], masks[3])
    assert not torch.equal(masks[0], masks[1])
    assert torch.equal(fill_bitmask([a])[0], masks[0])


@pytest.mark.parametrize("guided, field", [
    (GuidedDecoding.json_schema({"type": "bogus"}), "response_format"),
    (GuidedDecoding("regex", "(ab", "guided_regex"), "guided_regex"),
    (GuidedDecoding("grammar", "start: ???", "guided_grammar"), "guided_grammar"),
])
def test_an_invalid_grammar_is_a_value_error_naming_its_field(compiler, guided, field) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        compiler.grammar(guided)


def test_sampling_params_with_a_grammar_stay_frozen_and_hashable() -> None:
    a = SamplingParams(guided=GuidedDecoding.json_schema(PERSON))
    assert a == SamplingParams(guided=GuidedDecoding.json_schema(json.dumps(PERSON), field="guided_json"))
    assert hash(a) == hash(SamplingParams(guided=GuidedDecoding.json_schema(PERSON)))
    with pytest.raises(ValueError, match="unknown structured output kind"):
        GuidedDecoding("xml", "x")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_mask_on_cuda_logits_equals_the_cpus(compiler) -> None:
    guides = [compiler.start(GuidedDecoding.json_schema(PERSON)), None,
              compiler.start(GuidedDecoding.choice(["a", "b"]))]
    rows = [SimpleNamespace(guide=g) for g in guides]
    logits = torch.randn(3, compiler.vocab_size, generator=torch.Generator().manual_seed(1))
    on_gpu = apply_guides(logits.cuda(), rows)
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), apply_guides(logits, rows))
    # through the sampler: greedy rows take the best allowed token, a free row its plain argmax
    sample_rows = [SampleRow(SamplingParams(temperature=0.0), [0], guide=g) for g in guides]
    tokens = Sampler().sample(logits.cuda(), sample_rows).tolist()
    assert tokens == apply_guides(logits, rows).argmax(dim=-1).tolist()
    assert tokens[1] == int(logits[1].argmax())


# ---- the engine ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(embedded_model_dir: str) -> LLM:
    return LLM(embedded_model_dir, num_blocks=256, check_integrity=True)


def test_n_samples_each_follow_the_schema(llm: LLM) -> None:
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=120, guided=GuidedDecoding.json_schema(PERSON))
    result = llm.chat([{"role": "user", "content": ASK}], params)[0]
    assert [o.finish_reason for o in result.outputs] == ["stop"] * 4
    assert len({o.text for o in result.outputs}) > 1, "four samples, not one copied four times"
    for o in result.outputs:
        check_person(o.text)
    assert llm.engine.block_manager.stats().used == 0


def test_free_rows_are_untouched_by_grammar_rows_in_their_batch(llm: LLM) -> None:
    """Seeded free rows draw the same tokens whether grammar rows share their batch or not."""
    prompts = [llm.engine.encode_chat([{"role": "user", "content": q}])
               for q in ("Write a haiku about rain.", "Name three rivers.", ASK, "Is water wet?")]
    free = [SamplingParams(temperature=1.0, seed=s, max_tokens=20) for s in (1, 2)]
    alone = llm.generate(prompts[:2], free)
    guided = [SamplingParams(temperature=1.0, seed=5, max_tokens=120, guided=GuidedDecoding.json_schema(PERSON)),
              SamplingParams(temperature=0.0, max_tokens=10, guided=GuidedDecoding.choice(["yes", "no"]))]
    mixed = llm.generate(prompts, free + guided)
    assert [r.outputs[0].token_ids for r in mixed[:2]] == [r.outputs[0].token_ids for r in alone]
    check_person(mixed[2].outputs[0].text)
    assert mixed[3].outputs[0].text in ("yes", "no") and mixed[3].outputs[0].finish_reason == "stop"


def test_preempted_grammar_sequences_still_follow_the_schema(embedded_model_dir: str) -> None:
    # 12 blocks of 16 tokens for six requests of about 60 tokens each: preemptions by recompute
    small = LLM(embedded_model_dir, num_blocks=12, max_num_batched_tokens=16, check_integrity=True)
    prompt = small.engine.encode_chat([{"role": "user", "content": ASK}])
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=100, n=1 + s % 2,
                             guided=GuidedDecoding.json_schema(PERSON)) for s in range(6)]
    results = small.generate([prompt] * 6, params)
    assert small.engine.scheduler.num_preemptions > 0
    for r in results:
        for o in r.outputs:
            assert o.finish_reason == "stop"
            check_person(o.text)
    assert small.engine.block_manager.stats().used == 0


# ---- the API -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    from live_server import start_live_server  # imports gradio: not at the top, for the GPU test's sake

    server = start_live_server(embedded_model_dir, num_blocks=256, max_num_seqs=32)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(live) -> Any:
    import openai
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=120)


def post(live, path: str, body: dict, timeout: float = 120) -> Any:
    import httpx  # here, not at the top: the GPU machine has no httpx

    return httpx.post(f"{live.url}{path}", json=body, timeout=timeout)


def chat(content: str = ASK, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 150, **extra}


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def test_the_openai_clients_parse_returns_a_parsed_object(oai: Any) -> None:
    from pydantic import BaseModel, Field  # here: the GPU machine has no pydantic

    class Person(BaseModel):
        name: str = Field(max_length=24)
        age: int = Field(ge=0, le=120)

    done = oai.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": ASK}],
                                      response_format=Person, max_tokens=150, temperature=0)
    parsed = done.choices[0].message.parsed
    assert isinstance(parsed, Person) and done.choices[0].finish_reason == "stop"


def test_twenty_seeded_sampled_requests_all_follow_the_schema(live) -> None:
    def ask(seed: int) -> dict:
        body = chat(response_format=json_schema_format(PERSON), temperature=1.0, seed=seed)
        return post(live, "/v1/chat/completions", body, 180).json()

    with ThreadPoolExecutor(20) as pool:  # together: one batch
        answers = list(pool.map(ask, range(20)))
    for answer in answers:
        assert answer["choices"][0]["finish_reason"] == "stop", answer
        check_person(answer["choices"][0]["message"]["content"])
    assert len({a["choices"][0]["message"]["content"] for a in answers}) > 10


def test_json_object_and_vllms_parameters(live) -> None:
    url = "/v1/chat/completions"
    body = chat("Give me a JSON object with a key 'colour' for the colour of the sky.",
                response_format={"type": "json_object"}, temperature=0)
    choice = post(live, url, body).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and isinstance(json.loads(choice["message"]["content"]), dict)
    body = chat("Is the sky blue?", guided_choice=["yes", "no"], temperature=1.0, seed=0, n=4)
    assert {c["message"]["content"] for c in post(live, url, body).json()["choices"]} <= {"yes", "no"}
    body = chat("Give me a phone number.", structured_outputs={"regex": r"\d{3}-\d{4}"}, temperature=1.0, seed=0)
    text = post(live, url, body).json()["choices"][0]["message"]["content"]
    assert len(text) == 8 and text[3] == "-" and text.replace("-", "").isdigit() and text.isascii(), text
    body = {"prompt": "The person, as JSON:", "max_tokens": 150, "temperature": 0,
            "guided_json": PERSON}
    check_person(post(live, "/v1/completions", body).json()["choices"][0]["text"])


def test_streamed_samples_each_follow_the_schema(oai: Any) -> None:
    stream = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ASK}], n=2,
                                         max_tokens=150, temperature=1.0, seed=11, stream=True,
                                         response_format=json_schema_format(PERSON))
    texts, reasons = ["", ""], [None, None]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert reasons == ["stop", "stop"]
    for text in texts:
        check_person(text)


@pytest.mark.parametrize("extra, named", [
    ({"response_format": json_schema_format({"type": "bogus"})}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "structural_tag"}}, "response_format"),
    ({"guided_regex": "(ab"}, "guided_regex"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs.whitespace_pattern"),
    ({"guided_decoding_backend": "xgrammar"}, "guided_decoding_backend"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
])
def test_what_cannot_be_served_is_a_400_naming_it(live, extra: dict, named: str) -> None:
    response = post(live, "/v1/chat/completions", chat(**extra), 60)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]["message"]
