"""Configuration dataclasses: what the engine is asked to run, validated where built."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-family model, read from a transformers config.

    Covers Llama 2/3, SmolLM2, Mistral, Qwen2/2.5 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @classmethod
    def from_hf(cls, hf: Any) -> "ModelConfig":
        """Build from a `transformers.PretrainedConfig` (v4 `rope_theta` or v5 `rope_parameters`)."""
        rope = dict(getattr(hf, "rope_parameters", None) or {})
        legacy = getattr(hf, "rope_scaling", None)
        if legacy and not rope:
            rope = dict(legacy)
        theta = rope.pop("rope_theta", None) or getattr(hf, "rope_theta", None) or 10000.0
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        eos = getattr(hf, "eos_token_id", None)
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        num_heads = hf.num_attention_heads
        return cls(
            model_type=hf.model_type,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // num_heads,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=None if rope_type == "default" else rope,
            max_position_embeddings=getattr(hf, "max_position_embeddings", 4096),
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(hf, "attention_bias", hf.model_type == "qwen2")),
            qk_norm=hf.model_type == "qwen3",
            eos_token_ids=eos_ids,
        )

    def matmul_params(self) -> int:
        """Weights a token meets in a matrix product (each costs 2 FLOPs a token): every layer's
        projections and the LM head. The embedding is a lookup, the norms are negligible."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attention + mlp) + self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        """All weights: the products', the embedding unless tied to the LM head, and the norms."""
        embed = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        norms = (2 * self.num_layers + 1) * self.hidden_size
        return self.matmul_params() + embed + norms

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """2 (K and V) x layers x kv_heads x head_dim x bytes per element."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: `num_blocks` blocks of `block_size` token slots each."""

    block_size: int = 16
    num_blocks: int | None = None  # None: sized from memory (gpu_memory_fraction or cpu_kv_gib)
    gpu_memory_fraction: float = 0.85
    cpu_kv_gib: float = 1.0
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one engine step."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048  # the per-step token budget shared by prefill chunks and decodes
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_waiting: int = 256  # queued sequences beyond which new requests are refused (overload)
    # One sequence's prefill chunk takes at most this many tokens of a step, so that a long prompt
    # cannot hold everyone's next token back for the seconds a whole budget of prefill takes on a
    # CPU. A prompt alone that fits the budget still gets it whole (its TTFT). 0: no cap; None: 128
    # on a CPU, 512 on a GPU (see LLMEngine).
    long_prefill_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_waiting < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and max_waiting must be positive")
        if self.long_prefill_tokens is not None and self.long_prefill_tokens < 0:
            raise ValueError("long_prefill_tokens must be >= 0")


@dataclass(frozen=True)
class EngineConfig:
    """Everything `LLMEngine` needs: which model, where it runs, and the cache and scheduler limits."""

    model: str = "embedded"  # "embedded" (SmolLM2-135M-Instruct GGUF), a local folder, or a hub id
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (fp32 on CPU; bf16 on GPU, fp16 without bf16) | float32 | bfloat16 | float16
    attention_backend: str = "auto"  # auto | torch | triton
    seed: int = 0
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    check_integrity: bool = False  # run the block manager's integrity check after every step (tests)
    enforce_eager: bool = False  # no CUDA graphs (decode steps, lone prefills)
    parse_special_in_chat: bool = False  # special-token text in chat messages becomes special tokens (unsafe)
    event_feed_capacity: int = 4096  # step records the event feed keeps (0: no feed)
    quantization: str | None = None  # weight-only: int8 | int4 (None: the model's dtype)
    # torch.compile of pure-decode steps on the CPU (engine/runner/compiled_decode.py): tokens come
    # faster after a minute of compiling at start-up
    compile_decode: bool = False
    # overlapped scheduling: plan and launch the next step while the device runs this one
    # (None: on a GPU; on a CPU the forward pass runs on the host, so nothing would overlap)
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"unknown device {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if self.quantization not in (None, "int8", "int4"):
            raise ValueError(f"unknown quantization {self.quantization!r} (int8 or int4)")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"unknown attention backend {self.attention_backend!r}")
