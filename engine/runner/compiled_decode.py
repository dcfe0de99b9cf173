"""Pure-decode steps through torch.compile, on the CPU: a CPU's CUDA graph, in effect.

A decode token of a small model on a CPU is mostly eager overhead: 30 layers of some 25 torch ops
each, a few microseconds of dispatch apiece, around 4 ms of matmuls (the embedded model at int4:
about 17 ms a token, 6 of them in the products). Inductor fuses the elementwise ops of a layer into
a few C++ loops and calls the matmul kernels directly, which takes most of that overhead away.

The compiled function has no side effects: `LlamaForCausalLM.forward_unstored` reads the caches and
returns this step's keys and values, which `run` then writes into the pool in one op for all layers.
(A write into a cache inside the graph is functionalised into a copy of the whole cache, every layer.)

Prefills and mixed steps stay eager: they are compute-bound, and their shapes vary too much to compile.
Shapes: the first decode compiles for its batch and context length; the context length turns dynamic
at its first change, the batch at its first change past one sequence (dynamo keeps a size of 1 apart).
`warm_up` takes those three compiles at start-up: a minute or two on two cores for the embedded
model, seconds when inductor's on-disk cache has them.

A quantized model's products (`tune_products`) are compiled with its weights frozen into the graph as
constants, which lets inductor time its own C++ GEMM templates against ATen's kernel for each
product and keep the faster (TUNED_PRODUCTS). PyTorch's int4 kernel dequantizes its weights again
for every 4 rows; inductor's int4 template dequantizes a tile once for 16 or 32 rows and multiplies
it on AMX where the CPU has it (4th-generation Xeon on), and the int8 LM head becomes a oneDNN
or AMX int8 product. On a 2-core Xeon with AMX, the embedded model's 120 int4 products of a
16-row step took 12.4 ms instead of 28.8, of 32 rows 20.2 instead of 59.3, and of one row about
the same (6.3 and 5.7; benchmarks/cpu_products.py). The choice is
made once per graph, at the sizes it is compiled for, so `warm_up` compiles the many-sequence
graph at 16 sequences. The price is start-up time: inductor does not cache a graph with frozen
weights, so every start compiles its graphs afresh (the embedded model at int4, on that machine:
6.9 minutes with inductor's on-disk cache empty, 4.1 with it holding the kernels and timings; 4.0
and seconds without the tuning: benchmarks/compile_startup.py).
"""
from __future__ import annotations

import contextlib
import types
from typing import Any

import torch

from engine.runner.forward_metadata import ForwardMetadata, ScheduledChunk


def _options() -> dict[str, Any]:
    """Inductor's options: no guards on the model's parameters and buffers, which never change after
    loading (checking them took about 1 ms a step; torch >= 2.6, older versions keep them), and no
    size, alignment or scalar asserts on the kernels' outputs (some 600 calls a step, 0.5 ms)."""
    options: dict[str, Any] = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}
    skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    return options if skip is None else {**options, "guard_filter_fn": skip}


def _own_code(fn: Any) -> Any:
    """A copy of the function fn with a code object of its own."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


# inductor's settings for a quantized model's steps (see above). They are set around each call, not
# passed as the compile's options: torch 2.13 decides freezing outside the options' scope
TUNED_PRODUCTS = {"freezing": True, "max_autotune_gemm": True, "max_autotune_gemm_backends": "CPP,ATEN"}
WARM_BATCH = 16  # sequences of the warm-up step that compiles the many-sequence graph (its products' sizes)


class CompiledDecode:
    """The model's pure-decode steps, compiled; `run` returns the logits of meta.logits_indices."""

    def __init__(self, model: torch.nn.Module, kv_pool: torch.Tensor, tune_products: bool = False) -> None:
        self.model = model
        self.kv_pool = kv_pool  # [layers, 2, num_blocks, block_size, kv_heads, head_dim]
        self.tune_products = tune_products
        self._settings: Any = contextlib.nullcontext()  # entered around every step: made once (reusable)
        if tune_products:  # inductor's config module takes over a second to import: only where it is used
            import torch._inductor.config as inductor_config
            self._settings = inductor_config.patch(TUNED_PRODUCTS)
        # dynamo keeps compiled graphs per code object, and (_options) no longer
        # tells one model from another: each engine compiles a code object of its own
        step = types.MethodType(_own_code(CompiledDecode._logits_and_kv), self)
        self._step = torch.compile(step, dynamic=None, options=_options())

    @staticmethod
    def accepts(meta: ForwardMetadata) -> bool:
        return meta.num_tokens > 0 and meta.is_pure_decode

    def _logits_and_kv(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_pool: torch.Tensor,
                       meta: ForwardMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, new_kv = self.model.forward_unstored(input_ids, positions, list(kv_pool.unbind(0)), meta)
        return self.model.compute_logits(hidden[meta.logits_indices]), new_kv

    def run(self, meta: ForwardMetadata) -> torch.Tensor:
        # a compile can happen at any call (a new shape); setting and restoring costs about 14 us a step
        with self._settings:
            logits, new_kv = self._step(meta.input_ids, meta.positions, self.kv_pool, meta)
        store_new_kv(self.kv_pool, new_kv, meta.slot_mapping)
        return logits

    @torch.inference_mode()  # as the engine's steps run: grad mode is one of the compiled graph's guards
    def warm_up(self, build: Any, max_samples: int = WARM_BATCH + 1) -> None:
        """Compile now, not at the first user's first token: a decode step of one sequence at two
        context lengths, then of B sequences, one of them sampled twice (n > 1), B = WARM_BATCH or
        fewer, to stay within `max_samples` sampled rows a step. Sizes that are equal when a graph
        is compiled share a symbol in it, so the batch, the sampled rows and the context differ in
        that step (B, B + 1, B + 2). `build(chunks)` makes a step's metadata. The steps write
        garbage into block 0, which nothing holds yet."""
        batch = max(2, min(WARM_BATCH, max_samples - 1))
        many = (1,) * (batch - 1) + (2,)
        for samples, context in (((1,), 2), ((1,), 3), (many, batch + 2)):
            chunks = [ScheduledChunk([0], context - 1, [0] * context, n) for n in samples]
            self.run(build(chunks))


def store_new_kv(kv_pool: torch.Tensor, new_kv: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write a step's keys and values [layers, 2, T, kv_heads, d] into the pool [layers, 2, num_blocks,
    block_size, kv_heads, d] at slot_mapping [T], every layer in one op."""
    layers, _, tokens, kv_heads, head_dim = new_kv.shape
    kv_pool.view(layers, 2, -1, kv_heads * head_dim).index_copy_(
        2, slot_mapping, new_kv.reshape(layers, 2, tokens, kv_heads * head_dim))
