"""PagedChat's inference engine: paged KV cache, continuous batching, prefix sharing.

Three groups, each a package: `engine.core` (plain Python: sequences, block manager, scheduler,
parameters, configuration, outputs), `engine.runner` (a step on the device: model runner, step
inputs, CUDA graphs, sampler; with `engine.models` and `engine.attention`) and `engine.serving`
(LLMEngine, LLM, the engine thread, detokenizing, what a screen reads). docs/engine.md maps them.

Names are imported lazily, so the torch-free parts (block manager, scheduler) load without torch.
The modules' paths before the grouping (`engine.scheduler`, `engine.llm_engine`, ...) still import,
as the same module objects, for code written against them.
"""
import importlib.abc
import importlib.util
import sys
from importlib import import_module
from typing import Any

__version__ = "0.10.0"

_EXPORTS = {
    "CacheConfig": "engine.core.config", "EngineConfig": "engine.core.config", "ModelConfig": "engine.core.config",
    "SchedulerConfig": "engine.core.config", "SamplingParams": "engine.core.sampling_params",
    "RequestOutput": "engine.core.outputs", "CompletionOutput": "engine.core.outputs",
    "GenerationResult": "engine.core.outputs", "LLM": "engine.serving.llm", "LLMEngine": "engine.serving.llm_engine",
    "StepOutput": "engine.serving.llm_engine",
}
__all__ = sorted(_EXPORTS)


_GROUPS = {
    "core": ("sequence", "block_manager", "scheduler", "sampling_params", "guided_decoding", "outputs", "config",
             "controls", "kv_cache_events", "metrics"),
    "runner": ("model_runner", "step_inputs", "staging", "forward_metadata", "cuda_graphs", "prefill_graphs",
               "sampler", "sampling_tensors", "triton_sample", "logprobs", "device_peaks", "model_loader",
               "embedded_model", "structured_output"),
    "serving": ("llm_engine", "llm", "engine_thread", "request_stream", "detokenizer", "prompt_encoder",
                "token_strings", "event_feed", "metrics_history", "engine_info", "block_map", "request_inspection"),
}
_MOVED = {f"engine.{m}": f"engine.{group}.{m}" for group, mods in _GROUPS.items() for m in mods}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import engine.scheduler` gives the module engine.core.scheduler itself (not a copy)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in _MOVED else None

    def create_module(self, spec: Any) -> Any:
        return import_module(_MOVED[spec.name])

    def exec_module(self, module: Any) -> None:
        pass  # already executed under its own name


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.append(_OldPaths())


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
