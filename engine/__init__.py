"""PagedChat's inference engine: paged KV cache, continuous batching, prefix sharing.

Names are imported lazily, so the torch-free parts (block manager, scheduler) load without torch.
"""
from importlib import import_module
from typing import Any

__version__ = "0.10.0"

_EXPORTS = {
    "CacheConfig": "engine.config", "EngineConfig": "engine.config", "ModelConfig": "engine.config",
    "SchedulerConfig": "engine.config", "SamplingParams": "engine.sampling_params", "LLM": "engine.llm",
    "LLMEngine": "engine.llm_engine", "StepOutput": "engine.llm_engine", "RequestOutput": "engine.outputs",
    "CompletionOutput": "engine.outputs", "GenerationResult": "engine.outputs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
