"""/metrics through prometheus_client: vLLM's families, names, types, labels and bucket bounds
beside PagedChat's own, and counters that move as requests are served (the embedded model)."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from engine.core.config import CacheConfig, EngineConfig
from engine.serving.engine_thread import EngineThread
from engine.serving.llm_engine import LLMEngine
from server.http_app import build_http_app

MODEL = "my-model"
LABELS = {"model_name": MODEL, "engine": "0"}
# vLLM's families (vllm/v1/metrics/loggers.py) and their types
FAMILIES = {
    "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge", "vllm:gpu_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter", "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter", "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram", "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram", "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_inference_time_seconds": "histogram", "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram", "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram", "vllm:request_max_num_generation_tokens": "histogram",
    "vllm:request_params_n": "histogram", "vllm:request_params_max_tokens": "histogram",
    "vllm:iteration_tokens_total": "histogram", "vllm:cache_config_info": "gauge",  # an info, as vLLM shows it
}
REQUEST_LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0]
TOKEN_LATENCY = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0]
BOUNDS = {  # vLLM's bucket bounds
    "vllm:time_to_first_token_seconds": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                                         5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0],
    "vllm:inter_token_latency_seconds": TOKEN_LATENCY,
    "vllm:request_time_per_output_token_seconds": TOKEN_LATENCY,
    "vllm:e2e_request_latency_seconds": REQUEST_LATENCY,
    "vllm:request_decode_time_seconds": REQUEST_LATENCY,
    "vllm:iteration_tokens_total": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    "vllm:request_params_n": [1, 2, 5, 10, 20],
}
SHARED = ("You are a patient assistant who answers in one short sentence, plainly, without lists, "
          "and never asks a question back. ") * 3


@pytest.fixture(scope="module")
def thread(embedded_model_dir: str):
    engine = LLMEngine(EngineConfig(model=embedded_model_dir, cache=CacheConfig(num_blocks=64)))
    thread = EngineThread(engine, block_map_interval=0.05).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http(thread: EngineThread) -> TestClient:
    return TestClient(build_http_app(thread, MODEL))


def scrape(http: TestClient) -> dict[str, object]:
    """Families by name; and each sample's value under 'name{k=v,...}' (labels sorted)."""
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found: dict[str, object] = {}
    for family in text_string_to_metric_families(response.text):
        found[family.name] = family
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def value(found: dict[str, object], name: str, **labels: str) -> float:
    key = ",".join(f"{k}={v}" for k, v in sorted({**LABELS, **labels}.items()))
    return found[f"{name}{{{key}}}"]


def test_every_vllm_family_with_its_type_labels_and_buckets(thread: EngineThread, http: TestClient) -> None:
    found = scrape(http)
    lengths = [m * 10 ** e for e in range(6) for m in (1, 2, 5) if m * 10 ** e <= thread.info.max_model_len]
    for name, kind in FAMILIES.items():
        family = found[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert sample.labels["model_name"] == MODEL and sample.labels["engine"] == "0", sample
    for name, bounds in {**BOUNDS, "vllm:request_prompt_tokens": lengths}.items():
        les = [s.labels["le"] for s in found[name].samples if s.name.endswith("_bucket")]
        assert les == [str(float(b)) for b in bounds] + ["+Inf"], name
    reasons = {s.labels["finished_reason"] for s in found["vllm:request_success"].samples}
    assert {"stop", "length", "abort"} <= reasons
    info = found["vllm:cache_config_info"].samples[0].labels
    assert info["block_size"] == "16" and info["num_gpu_blocks"] == "64" and info["enable_prefix_caching"] == "True"
    assert found["pagedchat_engine_up"].samples[0].value == 1  # PagedChat's own families stay beside them


def test_counters_and_histograms_move_as_requests_finish(http: TestClient) -> None:
    before = scrape(http)
    for question, extra in (("Name a colour.", {"max_tokens": 3, "ignore_eos": True}),  # ends by length
                            ("Name a fruit.", {"max_tokens": 30, "stop": [" "]}),  # ends by a stop string
                            ("Name a fruit.", {"max_tokens": 30, "stop": [" "]})):  # its prompt is cached now
        body = {"messages": [{"role": "system", "content": SHARED}, {"role": "user", "content": question}],
                "temperature": 0, **extra}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    after = scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("vllm:request_success_total", finished_reason="length") == 1
    assert moved("vllm:request_success_total", finished_reason="stop") == 2
    assert moved("vllm:e2e_request_latency_seconds_count") == 3
    assert moved("vllm:request_params_n_count") == 3 and moved("vllm:request_params_max_tokens_sum") == 63
    assert moved("vllm:request_generation_tokens_sum") == moved("vllm:generation_tokens_total") >= 5
    assert moved("vllm:time_to_first_token_seconds_count") == 3
    assert moved("vllm:inter_token_latency_seconds_count") == moved("vllm:generation_tokens_total") - 3
    assert moved("vllm:time_per_output_token_seconds_count") == moved("vllm:inter_token_latency_seconds_count")
    prompts = moved("vllm:request_prompt_tokens_sum")
    assert prompts > 3 * 60 and moved("vllm:prompt_tokens_total") == prompts
    assert moved("vllm:prefix_cache_queries_total") == prompts
    assert moved("vllm:prefix_cache_hits_total") >= 48  # the shared system prompt, in whole blocks
    assert moved("vllm:iteration_tokens_total_count") >= moved("vllm:generation_tokens_total")
    # the phases of a request add up: queue + inference <= e2e, prefill + decode == inference
    assert moved("vllm:request_queue_time_seconds_sum") + moved("vllm:request_inference_time_seconds_sum") <= \
        moved("vllm:e2e_request_latency_seconds_sum") + 1e-6
    assert moved("vllm:request_prefill_time_seconds_sum") + moved("vllm:request_decode_time_seconds_sum") == \
        pytest.approx(moved("vllm:request_inference_time_seconds_sum"))
    assert value(after, "vllm:num_requests_running") == 0 and value(after, "vllm:kv_cache_usage_perc") == 0


def test_each_app_has_its_own_registry(thread: EngineThread, http: TestClient) -> None:
    """Several apps in one process (as the tests start them) each serve their own metrics."""
    text = TestClient(build_http_app(thread, "other")).get("/metrics").text
    assert 'model_name="other"' in text and f'model_name="{MODEL}"' not in text
    assert f'model_name="{MODEL}"' in http.get("/metrics").text
