"""Offline batch generation on top of LLMEngine: `LLM(...).generate(prompts, params)`."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence as Seq

from engine.core.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.serving.llm_engine import LLMEngine
from engine.core.outputs import CompletionOutput, GenerationResult
from engine.core.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    """Generate for many prompts at once; every prompt runs in the same continuous batch.

    Keyword arguments override EngineConfig fields, and CacheConfig / SchedulerConfig fields by name
    (`LLM(num_blocks=64, max_num_seqs=8)`).
    """

    def __init__(self, model: str = "embedded", config: EngineConfig | None = None, **overrides: Any) -> None:
        config = config or EngineConfig(model=model)
        cache = {k: overrides.pop(k) for k in list(overrides) if k in CacheConfig.__dataclass_fields__}
        sched = {k: overrides.pop(k) for k in list(overrides) if k in SchedulerConfig.__dataclass_fields__}
        config = replace(config, cache=replace(config.cache, **cache),
                         scheduler=replace(config.scheduler, **sched), **overrides)
        self.engine = LLMEngine(config)
        self._counter = 0

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Seq[Prompt],
                 params: SamplingParams | Seq[SamplingParams] | None = None) -> list[GenerationResult]:
        """Run every prompt to completion; results come back in the order of the prompts."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("give one SamplingParams, or one per prompt")
        results: dict[str, GenerationResult] = {}
        seqs = {}
        for prompt, p in zip(prompts, params):
            request_id = f"gen-{self._counter}"
            self._counter += 1
            seq = seqs[request_id] = self.engine.add_request(request_id, prompt, p)
            results[request_id] = GenerationResult(request_id, list(seq.token_ids),
                                                   [CompletionOutput(i) for i in range(p.n)])
        while self.engine.has_unfinished_requests():
            for out in self.engine.step().outputs:
                sample = results[out.request_id].outputs[out.index]
                sample.text = out.text
                sample.token_ids.extend(out.delta_token_ids)
                sample.finish_reason = out.finish_reason
                if out.prompt_logprobs is not None:
                    sample.prompt_logprobs = out.prompt_logprobs
                if out.logprobs is not None:
                    sample.logprobs = (sample.logprobs or []) + list(out.logprobs)
        for request_id, result in results.items():
            result.num_cached_tokens = seqs[request_id].num_cached_tokens
        return list(results.values())

    def reset_prefix_cache(self) -> int:
        """Forget the cached prompt blocks no request holds (LLMEngine.reset_prefix_cache)."""
        return self.engine.reset_prefix_cache()

    def chat(self, conversations: list[dict[str, Any]] | list[list[dict[str, Any]]],
             params: SamplingParams | Seq[SamplingParams] | None = None) -> list[GenerationResult]:
        """Like generate, for conversations in messages format, through the model's chat template."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        return self.generate([self.engine.encode_chat(c) for c in conversations], params)
