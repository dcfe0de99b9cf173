"""Runs one step on the device: block copies, the forward pass over the flattened batch, sampling."""
from __future__ import annotations

import gc

import torch

from engine.attention import get_backend
from engine.attention.backend import AttentionShape
from engine.core.config import CacheConfig, EngineConfig, ModelConfig
from engine.runner.compiled_decode import CompiledDecode
from engine.runner.cuda_graphs import DecodeGraphs, graph_sizes
from engine.runner.device_peaks import measure_peaks
from engine.runner.forward_metadata import ForwardMetadata, ScheduledChunk
from engine.runner.model_loader import load_model
from engine.runner.prefill_graphs import PrefillGraphs, prefill_sizes
from engine.runner.logprobs import LogprobTensors, prompt_logprobs, sampled_logprobs
from engine.core.outputs import TokenLogprobs
from engine.core.sampling_params import SamplingParams
from engine.runner.sampler import SampleRow, Sampler
from engine.runner.step_inputs import Feed, Padding, StepInputs, StepLimits, build_metadata
from engine.runner.token_return import TokenReturn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, bf16_supported: bool | None = None) -> torch.dtype:
    """auto: fp32 on a CPU; on a GPU bf16, or fp16 where the card has no bf16 (a T4, a V100)."""
    if name != "auto":
        return _DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if bf16_supported else torch.float16


def check_quantization_supported(mode: str | None, device: torch.device,
                                 capability: tuple[int, int] | None = None) -> None:
    """ValueError up front where the kernels cannot run: int4's CUDA kernel (tinygemm) needs sm80 or
    newer (an A100, an H100); an older card (a T4, a V100) can run int8."""
    if mode != "int4" or device.type != "cuda":
        return
    capability = capability or torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        raise ValueError(f"--quantization int4 needs a GPU of compute capability 8.0 or newer (this one has "
                         f"{capability[0]}.{capability[1]}); use int8, or run without quantization")


def eager_token_sizes(max_seqs: int, max_tokens: int) -> list[int]:
    """The token counts an eager step (prompt chunks, on a GPU with graphs) is padded up to: those the
    graphs' captures run (the decode batch sizes, the prefill ladder), and above 256 eight sizes a
    doubling (a pad of at most an eighth), up to the budget. A count cuBLAS has not seen costs each
    of a step's matmul shapes 3-5 ms of host time (an H200's host) the first time; padding costs only
    device time, which a mixed step, host-bound, mostly has to spare."""
    sizes = {*graph_sizes(max_seqs), *prefill_sizes(max_tokens), max_tokens}
    octave = 256
    while octave < max_tokens:
        sizes.update(range(octave, 2 * octave, octave // 8))
        octave *= 2
    return sorted(n for n in sizes if n <= max_tokens)


class ModelRunner:
    """Owns the weights, the KV cache tensors, the step inputs' buffers, the graphs and the sampler;
    knows nothing of scheduling."""

    def __init__(self, config: EngineConfig, model_path: str) -> None:
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.backend = get_backend(config.attention_backend, self.device)
        self.model, self.model_config = load_model(model_path, self.backend, self.dtype, self.device)
        self.quantization = config.quantization
        check_quantization_supported(self.quantization, self.device)
        if self.quantization:
            self.model.quantize(self.quantization)
            gc.collect()  # the full-precision weights' memory goes back before the KV pool is sized
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if self.device.type == "cpu" and self.dtype == torch.float32:
            self.model.pack_for_cpu()  # decode-step products 1.4-2x faster, the same values (not quantized ones)
        self.block_size = config.cache.block_size
        if self.device.type == "cuda":
            self._warm_up(config.scheduler.max_num_batched_tokens)
        self.peaks = measure_peaks(self.device, self.dtype)  # before the KV pool takes the memory; None on a CPU
        self.num_blocks = self._count_blocks(config.cache, self.model_config)
        # one sequence must always fit the pool, or preemption could never make room for it
        self.max_model_len = min(config.scheduler.max_model_len or self.model_config.max_position_embeddings,
                                 self.num_blocks * self.block_size)
        self._allocate_kv(self.num_blocks)
        self.sampler = Sampler(config.seed)
        sched, mc = config.scheduler, self.model_config
        max_blocks = -(-self.max_model_len // self.block_size)
        # a captured decode batch pads to max_num_seqs tokens, which may exceed the token budget
        limits = StepLimits(max(sched.max_num_batched_tokens, sched.max_num_seqs), sched.max_num_seqs, max_blocks,
                            sched.max_num_seqs)
        shape = AttentionShape(mc.num_heads, mc.num_kv_heads, self.num_blocks * self.block_size, self.device)
        captures = self.device.type == "cuda" and not config.enforce_eager and self.backend.name == "triton"
        # the copy's event is recorded once a step is queued (launch): not before a lone prompt's graph
        # runs; an eager step's logits rows and tokens are padded to counts cuBLAS has seen (StepInputs)
        token_sizes = eager_token_sizes(sched.max_num_seqs, sched.max_num_batched_tokens) if captures else ()
        self.inputs = StepInputs(limits, self.block_size, self.device, self.backend, shape, self.sampler,
                                 mc.vocab_size, defer_record=True,
                                 row_sizes=graph_sizes(sched.max_num_seqs) if captures else (),
                                 token_sizes=token_sizes)
        self.compiled: CompiledDecode | None = None
        if config.compile_decode:
            if self.device.type != "cpu" or self.backend.name != "torch":
                raise ValueError("compile_decode is for the CPU (a GPU replays CUDA graphs instead)")
            self.compiled = CompiledDecode(self.model, self.kv_pool, tune_products=bool(self.quantization))
            self.compiled.warm_up(lambda chunks: self.inputs.build(chunks).meta, sched.max_num_seqs)
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        if captures:
            self.graphs = DecodeGraphs(self._logits_of, self.inputs, sched.max_num_seqs, max_blocks, self.device)
            self.prefill_graphs = PrefillGraphs(self._logits_of, self.inputs, sched.max_num_batched_tokens,
                                                max_blocks, self.device)
            # the eager token sizes no capture ran (nor the first warm-up's full budget)
            seen = {*self.graphs.sizes, *self.prefill_graphs.sizes, sched.max_num_batched_tokens}
            self._warm_up_matmuls([n for n in token_sizes if n not in seen], max_blocks)
        # the sampled tokens' way back to the host (a page-locked ring: CUDA only)
        self.returns = TokenReturn(sched.max_num_seqs, self.device) if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            self._warm_up_sampler()

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model_config.kv_bytes_per_token(torch.finfo(self.dtype).bits // 8)

    def _allocate_kv(self, num_blocks: int) -> None:
        """The pool [layers, 2 (K, V), num_blocks, block_size, kv_heads, head_dim], and a view of each
        layer's cache in it: a write or a copy across all layers is one op on the pool."""
        mc = self.model_config
        shape = (mc.num_layers, 2, num_blocks, self.block_size, mc.num_kv_heads, mc.head_dim)
        self.kv_pool = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kv_caches = list(self.kv_pool.unbind(0))

    @torch.inference_mode()
    def _warm_up(self, num_tokens: int) -> None:
        """One prefill of a full token budget, so activation peaks are taken before the KV pool is sized."""
        per_seq = min(num_tokens, self.model_config.max_position_embeddings - 1)
        blocks = -(-num_tokens // self.block_size)
        self._allocate_kv(blocks)
        chunks, table, left = [], list(range(blocks)), num_tokens
        while left > 0:
            n = min(per_seq, left)
            chunks.append(ScheduledChunk([0] * n, 0, table, 1))
            left -= n
        mc = self.model_config
        shape = AttentionShape(mc.num_heads, mc.num_kv_heads, blocks * self.block_size, self.device)
        meta = build_metadata(chunks, self.block_size, self.device, self.backend, shape)
        self._logits_of(meta.input_ids, meta.positions, meta)
        del self.kv_caches, self.kv_pool
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    @torch.inference_mode()
    def _warm_up_matmuls(self, sizes: list[int], max_blocks: int) -> None:
        """One all-padding forward of each of these token counts (pad slots: written nowhere), so that
        cuBLAS has chosen its kernels for them before a step of that count waits for it."""
        for n in sizes:
            meta = self.inputs.build([], pad=Padding(1, n, max_blocks)).meta
            self._logits_of(meta.input_ids, meta.positions, meta)
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def _warm_up_sampler(self) -> None:
        """Sample once each way a request may ask, so that the first such request does not wait for a
        sampling kernel's compile (Triton's: a second and more on a fresh machine, in the middle of
        serving) or its loading: greedy rows, and sampled ones with and without top-k, on the logits
        as the forward leaves them (the head's dtype) and widened (a batch with a penalty). The rows
        are seeded: the engine's own generator is left as it was."""
        logits = torch.randn(3, self.model_config.vocab_size, device=self.device).to(self.dtype)
        kinds = [dict(temperature=0.0), dict(temperature=0.8, seed=0),
                 dict(temperature=0.8, top_p=0.9, min_p=0.05, seed=0), dict(temperature=0.8, top_k=20, seed=0)]
        for adjust in ({}, {"repetition_penalty": 1.1}):
            rows = [SampleRow(SamplingParams(**kind, **adjust), [0]) for kind in kinds]
            self.sampler.sample(logits, rows[:3])  # greedy and sampled rows, no top-k
            self.sampler.sample(logits[:1], rows[3:])  # top-k
        self.sampler.sample(logits, [SampleRow(SamplingParams(temperature=0.0), [0])] * 3)
        torch.cuda.synchronize(self.device)

    def _count_blocks(self, cache: CacheConfig, model: ModelConfig) -> int:
        if cache.num_blocks is not None:
            return cache.num_blocks
        per_block = self.kv_bytes_per_token * cache.block_size
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free * cache.gpu_memory_fraction
        else:
            budget = cache.cpu_kv_gib * 2**30
        return max(1, int(budget // per_block))

    def _logits_of(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: ForwardMetadata) -> torch.Tensor:
        # the hidden states of the rows to sample alone (a prefill's last layer runs on those only)
        # in the head's dtype: a greedy step's argmax reads them so (no widening copy in the graph)
        return self.model.compute_logits(self.model(input_ids, positions, self.kv_caches, meta, meta.logits_indices),
                                         widen=False)

    @torch.inference_mode()
    def launch(self, chunks: list[ScheduledChunk], copies: list[tuple[int, int]], rows: list[SampleRow],
               feed: Feed | None = None) -> "PendingTokens":
        """Queue one forward pass and its sampling on the device; the host is free until result().

        The step's inputs (metadata, attention plan, sampling tensors, block copies) go over in one
        copy; a step that a captured graph holds is built in its padded shape and replays it. `feed`:
        the input tokens still on the device, sampled by the step before (overlapped scheduling)."""
        graphs = self._graphs_for(chunks)
        step = self.inputs.build(chunks, rows, copies, graphs.padding(chunks) if graphs is not None else None, feed)
        self._copy_blocks(step.block_copies)
        meta = step.meta
        if graphs is not None:
            logits = graphs.run(chunks, meta)
        elif self.compiled is not None and self.compiled.accepts(meta):
            logits = self.compiled.run(meta)
        else:  # its rows padded (StepInputs' row_sizes): the real ones first
            real = len(rows) + sum(len(c.prompt_targets) for c in chunks)
            logits = self._logits_of(meta.input_ids, meta.positions, meta)[:real]
        prompt = None
        if any(c.prompt_targets for c in chunks):  # the rows after the sampled ones
            targets = [t for c in chunks for t in c.prompt_targets]
            ks = [c.prompt_k for c in chunks for _ in c.prompt_targets]
            prompt = ks, prompt_logprobs(logits[len(rows):], targets, max(ks))
            logits = logits[:len(rows)]
        if not rows:
            pending = PendingTokens(None, prompt=prompt)
        else:
            tokens = self.sampler.sample(logits, rows, step.sampling)
            pending = PendingTokens(tokens, sampled_logprobs(logits, [r.params.logprobs for r in rows], tokens),
                                    prompt, self.returns)
        self.inputs.record_copy()
        return pending

    def _graphs_for(self, chunks: list[ScheduledChunk]) -> DecodeGraphs | PrefillGraphs | None:
        """The captured graphs that hold a step of these chunks, if any."""
        for graphs in (self.graphs, self.prefill_graphs):
            if graphs is not None and graphs.accepts(chunks):
                return graphs
        return None

    def device_usable(self) -> bool:
        """After a failed step: can the device still run work? A device-side assert or a lost CUDA
        context makes every later call fail; an out-of-memory or a host-side error does not."""
        if self.device.type != "cuda":
            return True
        try:
            torch.cuda.synchronize(self.device)
            torch.zeros(1, device=self.device).add_(1).item()
        except Exception:  # noqa: BLE001 - any failure here means the context is gone
            return False
        torch.cuda.empty_cache()
        return True

    def _copy_blocks(self, copies: torch.Tensor | None) -> None:
        """Copy-on-write of shared blocks: copies [2, C] int64 (sources, destinations) on the device."""
        if copies is None:
            return
        src, dst = copies
        self.kv_pool[:, :, dst] = self.kv_pool[:, :, src]


class PendingTokens:
    """Sampled token ids, and the logprobs some requests asked for, on their way to the host:
    copied without blocking, waited for on result(). `returns`: the runner's ring of host buffers,
    which the common step's tokens (no logprobs) come back through."""

    def __init__(self, tokens: torch.Tensor | None,
                 sampled: tuple[list[int], list[int], LogprobTensors] | None = None,
                 prompt: tuple[list[int], LogprobTensors] | None = None,
                 returns: TokenReturn | None = None) -> None:
        self._event = None
        self._returns, self._slot, self._values = None, None, None
        self.device_tokens = tokens  # [S] where they were sampled: the next step may read them there
        if returns is not None and tokens is not None and sampled is None and prompt is None and tokens.is_cuda:
            slot = returns.send(tokens)
            if slot is not None:
                self._returns, self._slot = returns, slot
                self._tokens, self._sampled, self._prompt = tokens, None, None
                return
        if tokens is not None and tokens.is_cuda or prompt is not None and prompt[1].chosen.is_cuda:
            tokens = None if tokens is None else self._to_host(tokens)
            sampled = None if sampled is None else (sampled[0], sampled[1], sampled[2].map(self._to_host))
            prompt = None if prompt is None else (prompt[0], prompt[1].map(self._to_host))
            self._event = torch.cuda.Event()
            self._event.record()
        self._tokens, self._sampled, self._prompt = tokens, sampled, prompt

    @staticmethod
    def _to_host(t: torch.Tensor) -> torch.Tensor:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t, non_blocking=True)

    def result(self) -> list[int]:
        if self._returns is not None:
            if self._values is None:
                self._values = self._returns.read(self._slot, self._tokens.shape[0])
            return self._values
        if self._event is not None:
            self._event.synchronize()
        return [] if self._tokens is None else self._tokens.tolist()

    def __del__(self) -> None:
        if self._returns is not None and self._values is None:  # never taken (a fault): its slot goes back
            self._returns.release(self._slot)

    def logprobs(self) -> list[TokenLogprobs | None] | None:
        """Per sampled row (after result()): its TokenLogprobs, None for a row that did not ask;
        None when no row asked (the common step: nothing to build)."""
        if self._sampled is None:
            return None
        rows, ks, tensors = self._sampled
        out: list[TokenLogprobs | None] = [None] * len(self._tokens)
        for row, lp in zip(rows, tensors.unpack(ks)):
            out[row] = lp
        return out

    def prompt_logprobs(self) -> list[TokenLogprobs] | None:
        """The prompt rows' TokenLogprobs (after result()), in the chunks' order; None if none asked."""
        return None if self._prompt is None else self._prompt[1].unpack(self._prompt[0])
