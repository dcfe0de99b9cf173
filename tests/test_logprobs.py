"""logprobs and top_logprobs: the model's own log-probabilities (checked against a plain
transformers forward pass), in OpenAI's chat and legacy-completions shapes, streamed or not, n > 1."""
from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
import torch

from engine.serving.llm import LLM
from engine.core.sampling_params import SamplingParams
from live_server import MODEL_NAME, LiveServer, start_live_server


@pytest.fixture(scope="module")
def live(embedded_model_dir: str):
    server = start_live_server(embedded_model_dir, num_blocks=128, max_num_seqs=8)
    yield server
    server.stop()


def test_logprobs_are_the_models_own(embedded_model_dir: str) -> None:
    """Greedy: each token's logprob and its alternatives equal log_softmax of a transformers forward
    pass over prompt + output; a sampled run with n = 3 has one entry per token of each sample."""
    from transformers import AutoModelForCausalLM

    llm = LLM(embedded_model_dir, num_blocks=64)
    result = llm.chat([{"role": "user", "content": "Name a colour."}], SamplingParams(temperature=0, max_tokens=6,
                                                                                      logprobs=4))[0]
    out = result.outputs[0]
    assert len(out.logprobs) == len(out.token_ids) == 6
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([result.prompt_token_ids + out.token_ids])).logits[0].log_softmax(-1)
    start = len(result.prompt_token_ids) - 1
    for i, (token, lp) in enumerate(zip(out.token_ids, out.logprobs)):
        assert lp.token.token_id == token
        assert lp.token.logprob == pytest.approx(ref[start + i, token].item(), abs=1e-3)
        expected = ref[start + i].topk(4)
        assert [c.token_id for c in lp.top] == expected.indices.tolist()
        assert [c.logprob for c in lp.top] == pytest.approx(expected.values.tolist(), abs=1e-3)
        assert lp.top[0].token_id == token  # greedy draws the most likely
    assert b"".join(bytes(lp.token.bytes) for lp in out.logprobs).decode() == out.text

    sampled = llm.generate(["The capital of France is"], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=5,
                                                                          logprobs=0))[0]
    for sample in sampled.outputs:
        assert len(sample.logprobs) == len(sample.token_ids) and all(lp.top == () for lp in sample.logprobs)
        assert all(lp.token.logprob <= 0 for lp in sample.logprobs)
    plain = llm.generate(["The capital of France is"], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=5))[0]
    assert [s.token_ids for s in plain.outputs] == [s.token_ids for s in sampled.outputs]  # asking changes nothing
    assert all(s.logprobs is None for s in plain.outputs)


def test_chat_logprobs_in_openais_shape_streamed_or_not(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none")
    ask = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Say something nice."}], temperature=0,
               max_tokens=8, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**ask)
    choice = whole.choices[0]
    content = choice.logprobs.content
    assert len(content) == whole.usage.completion_tokens - (choice.finish_reason == "stop")  # EOS shows no text
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    assert bytes(b for e in content for b in e.bytes).decode() == choice.message.content
    streamed = [c for chunk in client.chat.completions.create(**ask, stream=True) for c in chunk.choices]
    entries = [e for c in streamed if c.logprobs for e in c.logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in entries] == [(e.token, round(e.logprob, 4)) for e in content]
    plain = client.chat.completions.create(**{**ask, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content
    n = client.chat.completions.create(**{**ask, "temperature": 1.0, "seed": 3, "n": 3, "top_logprobs": 0})
    for c in n.choices:
        assert c.logprobs.content and all(e.top_logprobs == [] for e in c.logprobs.content)


def test_completions_logprobs_in_the_legacy_shape(live: LiveServer) -> None:
    body = {"model": MODEL_NAME, "prompt": "one two three four", "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, "logprobs": 2}
    choice = httpx.post(live.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 6
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert 2 <= len(top) <= 3 and top[token] == value and max(top.values()) == value  # greedy: the best
        assert all(math.isfinite(v) and v <= 0 for v in top.values())
    with httpx.stream("POST", live.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        chunks = [json.loads(line[6:])["choices"][0] for line in r.iter_lines() if line.startswith("data: {")]
    streamed = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
    offsets = [o for c in chunks if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    assert streamed == lp["tokens"] and offsets == lp["text_offset"]
    none = httpx.post(live.url + "/v1/completions", json={**body, "logprobs": None}, timeout=60).json()
    assert none["choices"][0]["logprobs"] is None


def test_prompt_logprobs_are_the_models_own_through_chunks_cache_and_preemption(embedded_model_dir: str) -> None:
    """vLLM's prompt_logprobs: each prompt token after the first scored by transformers' forward
    pass, with its rank and top k; the prompt is computed whole although its blocks are cached, in
    chunks of a small token budget, and a preemption mid-prompt scores nothing twice."""
    from transformers import AutoModelForCausalLM

    prompt = "The quick brown fox jumps over the lazy dog. " * 10
    llm = LLM(embedded_model_dir, num_blocks=12, max_num_batched_tokens=16, check_integrity=True)
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=2))  # its blocks now in the prefix cache
    engine = llm.engine
    crowd = SamplingParams(temperature=0, max_tokens=150, ignore_eos=True)
    engine.add_request("c1", "Tell me a story.", crowd)
    engine.add_request("c2", "Count to ten.", crowd)
    for _ in range(40):  # the crowd holds 6 of 12 blocks and grows while the 7-block prompt is prefilled
        engine.step()
    preempted_mid_prompt = []
    preempt = engine.scheduler._preempt

    def spy(seq):
        preempted_mid_prompt.append(seq.request_id == "asked" and 0 < len(seq.prompt_logprobs))
        preempt(seq)
    engine.scheduler._preempt = spy
    seq = engine.add_request("asked", prompt, SamplingParams(temperature=0.8, seed=5, max_tokens=4, n=2,
                                                             prompt_logprobs=2, ignore_eos=True))
    scored_by_sample = {}
    while engine.has_unfinished_requests():
        for out in engine.step().outputs:
            if out.prompt_logprobs is not None:
                assert out.request_id == "asked"
                scored_by_sample[out.index] = out.prompt_logprobs
    assert any(preempted_mid_prompt) and seq.num_cached_tokens == 0
    ids = seq.token_ids[:seq.num_prompt_tokens]
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    assert sorted(scored_by_sample) == [0, 1]
    for scored in scored_by_sample.values():
        assert scored[0] is None and len(scored) == len(ids)
        for i in range(1, len(ids)):
            lp, row = scored[i], ref[i - 1]
            assert lp.token.token_id == ids[i] and lp.token.logprob == pytest.approx(row[ids[i]].item(), abs=1e-3)
            assert lp.rank == int((row > row[ids[i]]).sum()) + 1
            assert [c.token_id for c in lp.top] == row.topk(2).indices.tolist()


def test_echo_with_logprobs_and_vllms_prompt_logprobs_through_the_api(live: LiveServer) -> None:
    """OpenAI's legacy echo + logprobs: the prompt's tokens lead the lists (the first with None),
    then the completion's; streamed, the first chunk carries them. vLLM's prompt_logprobs field
    on completions (per choice) and chat (beside the choices)."""
    body = {"model": MODEL_NAME, "prompt": "Paris is the capital of", "max_tokens": 3, "temperature": 0,
            "ignore_eos": True, "logprobs": 1, "echo": True}
    choice = httpx.post(live.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    lp = choice["logprobs"]
    prompt_ids = httpx.post(live.url + "/tokenize", json={"prompt": body["prompt"]}).json()["tokens"]
    n = len(prompt_ids)
    assert len(lp["tokens"]) == n + 3 and "".join(lp["tokens"]) == choice["text"]
    assert choice["text"].startswith(body["prompt"])
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"][1:])
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(n + 3)]
    with httpx.stream("POST", live.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        chunks = [json.loads(line[6:])["choices"][0] for line in r.iter_lines() if line.startswith("data: {")]
    assert [t for c in chunks for t in c["logprobs"]["tokens"]] == lp["tokens"]
    assert [v for c in chunks for v in c["logprobs"]["token_logprobs"]] == pytest.approx(lp["token_logprobs"])

    vllm = httpx.post(live.url + "/v1/completions", json={**body, "echo": False, "logprobs": None,
                                                          "prompt_logprobs": 3}, timeout=60).json()["choices"][0]
    scored = vllm["prompt_logprobs"]
    assert scored[0] is None and len(scored) == n
    for token, entry in zip(prompt_ids[1:], scored[1:]):
        assert str(token) in entry and 3 <= len(entry) <= 4
        assert sorted(e["rank"] for e in entry.values())[:3] == [1, 2, 3]
        assert entry[str(token)]["logprob"] == pytest.approx(lp["token_logprobs"][prompt_ids.index(token)], abs=1e-4) \
            if prompt_ids.count(token) == 1 else True
    chat = httpx.post(live.url + "/v1/chat/completions", json={
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "prompt_logprobs": 0}, timeout=60).json()
    assert chat["prompt_logprobs"][0] is None and chat["usage"]["prompt_tokens"] == len(chat["prompt_logprobs"])
    assert all(len(e) == 1 for e in chat["prompt_logprobs"][1:])


def test_text_offsets_follow_the_tokens_while_a_stop_string_holds_text_back(live: LiveServer) -> None:
    """A stop string of several characters makes the detokenizer hold text back; each token's
    text_offset still starts where the token before it ends (vLLM's rule), streamed or not; and
    completions take the chat API's `logprobs: false` as no logprobs."""
    body = {"model": MODEL_NAME, "prompt": "Count: 1, 2, 3,", "max_tokens": 12, "logprobs": 0, "temperature": 0,
            "stop": [", 9"]}
    lp = httpx.post(live.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    expected = [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert len(lp["tokens"]) > 3 and lp["text_offset"] == expected
    with httpx.stream("POST", live.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        chunks = [json.loads(line[6:])["choices"][0] for line in r.iter_lines() if line.startswith("data: {")]
    assert [o for c in chunks if c["logprobs"] for o in c["logprobs"]["text_offset"]] == expected
    plain = httpx.post(live.url + "/v1/completions", json={**body, "logprobs": False}, timeout=60)
    assert plain.status_code == 200 and plain.json()["choices"][0]["logprobs"] is None


def test_token_strings_read_sentencepiece_spaces_and_byte_fallback() -> None:
    """Llama 2 / Mistral vocabularies: U+2581 is a space and <0xNN> a raw byte, so logprobs' token
    texts join into the text (decode() of a token alone would drop its leading space)."""
    from engine.serving.token_strings import TokenStrings

    class SentencePieceLike:
        backend_tokenizer = None
        all_special_ids = [1]
        vocab = {1: "<s>", 5: "\u2581hello", 6: "<0xE2>", 7: "world"}

        def convert_ids_to_tokens(self, token_id: int) -> str | None:
            return self.vocab.get(token_id)

    spell = TokenStrings(SentencePieceLike())
    assert spell(5) == (" hello", tuple(b" hello")) and spell(7)[0] == "world"
    assert spell(6)[1] == (0xE2,) and spell(1)[0] == "<s>" and spell(99) == ("", ())


def test_many_rows_are_scored_in_slices_with_the_same_values() -> None:
    from engine.runner import logprobs

    torch.manual_seed(0)
    n = logprobs.SCORE_ROWS * 2 + 37
    logits, tokens = torch.randn(n, 300), torch.randint(0, 300, (n,))
    whole = logprobs._score(logits, tokens, 5)
    sliced = logprobs.score(logits, tokens, 5)
    for a, b in zip((whole.chosen, whole.rank, whole.top_ids, whole.top_logprobs),
                    (sliced.chosen, sliced.rank, sliced.top_ids, sliced.top_logprobs)):
        assert torch.equal(a, b)
    assert logprobs.score(logits, tokens, 0).top_ids is None
