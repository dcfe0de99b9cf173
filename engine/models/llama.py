"""Our Llama-family decoder over a paged KV cache: Llama 2/3, SmolLM2, Mistral, Qwen2/2.5, Qwen3.

Differences between the family members are flags of ModelConfig: q/k/v bias (Qwen2), per-head
q/k RMSNorm before rope (Qwen3), tied embeddings, rope scaling. Mistral's sliding window is ignored
(full attention). Projections are fused: one qkv matmul and one gate_up matmul per layer.

The residual stream travels beside the hidden state, vLLM style: each norm first adds the previous
sub-block's output into the residual, so with `fused` (CUDA) a layer runs four elementwise Triton
kernels (add+norm, q/k norm+rope with the K/V store, add+norm, silu*up); without it, the same
functions in plain torch. In a small decode step (the skinny kernels' few rows), silu*up runs
inside the gate-up product, and o_proj's and down_proj's split-K sums inside the add+norm after
them: eight launches a layer instead of eleven, which is most of a single stream's step time.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention.backend import AttentionBackend
from engine.core.config import ModelConfig
from engine.runner.forward_metadata import ForwardMetadata
from engine.models import layers
from engine.models.blocked_matmul import block_weight, linear
from engine.models.layers import Linear, RMSNorm, RotaryEmbedding
from engine.models.quantized_linear import QuantizedWeight, quantize, quantized_matmul
from engine.models.weight_map import load_into


class LlamaAttention(nn.Module):
    """Self-attention of one layer: fused qkv, optional q/k norm, rope, paged attention, o_proj."""

    def __init__(self, config: ModelConfig, backend: AttentionBackend, fused: bool = False) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim ** -0.5
        self.backend = backend
        qkv_out = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
        self.qkv_proj = Linear(config.hidden_size, qkv_out, bias=config.attention_bias)
        # Qwen2 biases q/k/v only; Llama's attention_bias also biases o_proj
        o_bias = config.attention_bias and config.model_type != "qwen2"
        self.o_proj = Linear(config.num_heads * config.head_dim, config.hidden_size, bias=o_bias)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.eps = config.rms_norm_eps
        # fused: q/k norm, rope and the K/V store in one launch (Triton); else rotate_qk, then the backend stores
        self._rotate_qk_store_kv = None
        if fused:
            from engine.models.triton_rotary import rotate_qk_store_kv  # imports triton: only where it runs

            self._rotate_qk_store_kv = rotate_qk_store_kv

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: torch.Tensor, meta: ForwardMetadata,
        new_kv: list[torch.Tensor] | None = None, rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; stores this step's K/V into kv_cache on the way, or, given
        new_kv (a pure-decode step), appends them there [2, T, kv_heads, d] and leaves the cache as it was.
        rows [S]: only these rows' outputs, o_proj over those alone -> [S, hidden]."""
        n_q, n_kv = self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(x.shape[0], n_q + 2 * n_kv, self.head_dim)  # heads: q, then k, then v
        v = qkv[:, n_q + n_kv:]
        q_weight = None if self.q_norm is None else self.q_norm.weight
        k_weight = None if self.k_norm is None else self.k_norm.weight
        if self._rotate_qk_store_kv is not None:
            q, k = self._rotate_qk_store_kv(qkv, n_q, n_kv, cos, sin, q_weight, k_weight, self.eps, kv_cache, meta)
            out = self.backend.attend(q, kv_cache, meta, self.scale, k, v)  # [T, n_q, head_dim]
        elif new_kv is None:
            q, k = layers.rotate_qk(qkv, n_q, n_kv, cos, sin, q_weight, k_weight, self.eps)
            out = self.backend.forward(q, k, v, kv_cache, meta, self.scale)
        else:
            q, k = layers.rotate_qk(qkv, n_q, n_kv, cos, sin, q_weight, k_weight, self.eps)
            out = self.backend.attend_unstored(q, k, v, kv_cache, meta, self.scale)
            new_kv.append(torch.stack([k, v]))
        if rows is not None:
            out = out[rows]
        # the caller's add_rms_norm takes a skinny product's split sums (one launch fewer)
        return self.o_proj(out.reshape(out.shape[0], n_q * self.head_dim), defer_sum=True)


class LlamaMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(self, config: ModelConfig, fused: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)
        if fused:
            from engine.models.triton_silu_mul import silu_and_mul  # imports triton: only where it runs

            self._act = silu_and_mul
        else:
            self._act = layers.silu_and_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the caller's add_rms_norm takes a skinny product's split sums (one launch fewer)
        return self.down_proj(self.gate_up_proj.silu_mul(x, self._act), defer_sum=True)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: r += attn(norm(r)); r += mlp(norm(r)), each add fused into the norm after it."""

    def __init__(self, config: ModelConfig, backend: AttentionBackend, fused: bool = False) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, backend, fused)
        self.mlp = LlamaMLP(config, fused)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, fused)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, fused)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
        kv_cache: torch.Tensor, meta: ForwardMetadata, new_kv: list[torch.Tensor] | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, residual) [T, hidden] -> (this layer's mlp output, residual), residual updated in place.

        The residual stream is residual + h: the previous layer's mlp output h is not yet added
        (residual None: h is the embedding, which becomes the residual). rows [S]: past the
        attention (which stores every token's keys and values), only these rows: [S, hidden] each.
        """
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h = self.input_layernorm(h, residual)
        h = self.self_attn(h, cos, sin, kv_cache, meta, new_kv, rows)
        if rows is not None:
            residual = residual[rows]
        h = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig, backend: AttentionBackend, fused: bool = False) -> None:
        super().__init__()
        # _weight given: no random init (load_weights fills it)
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, _weight=torch.empty(config.vocab_size, config.hidden_size),
        )
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, backend, fused) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, fused)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling,
        )


class LlamaForCausalLM(nn.Module):
    """A Llama-family causal LM whose attention runs through an AttentionBackend over a paged cache.

    fused: run the elementwise ops as Triton kernels (CUDA); else in plain torch (the CPU path).
    """

    def __init__(self, config: ModelConfig, backend: AttentionBackend, fused: bool = False) -> None:
        super().__init__()
        self.config = config
        self.fused = fused
        self.model = LlamaModel(config, backend, fused)
        self.lm_head = None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size)
        self._head_blocked: torch.Tensor | None = None  # tied embeddings as LM head, after pack_for_cpu()
        self._head_quantized: QuantizedWeight | None = None  # tied embeddings as LM head, after quantize()
        if fused:  # the few rows of small decode steps through the Triton kernel that reads W at full pace
            for module in self.modules():
                if isinstance(module, Linear) and module is not self.lm_head:
                    module.use_skinny()

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor], meta: ForwardMetadata,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, positions [T] -> final-normed hidden states [T, hidden], or [S, hidden] of rows [S]
        (int64 row indices, repeats allowed: the rows to sample).

        kv_caches[i] is layer i's cache [2, num_blocks, block_size, num_kv_heads, head_dim]; this
        step's keys and values are written into it at meta.slot_mapping.

        Given fewer rows than tokens (a prefill, which samples its last token alone), the last layer
        runs past its attention on those rows only: the other tokens' keys and values are stored
        by then, and nothing reads the rest of their hidden states (a 1,024-token prompt of
        Qwen3-0.6B's shape on an H200: o_proj, the MLP and a norm over 1,024 rows, about 45 us).
        """
        return self._forward(input_ids, positions, kv_caches, meta, None, rows)

    def forward_unstored(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor], meta: ForwardMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pure-decode step that only reads the caches: (final-normed hidden states [T, hidden], this
        step's keys and values [num_layers, 2, T, num_kv_heads, head_dim]), which the caller stores.

        A function without side effects, for torch.compile: a write into a cache inside a compiled
        graph costs a copy of the whole cache (engine.runner.compiled_decode)."""
        new_kv: list[torch.Tensor] = []
        hidden = self._forward(input_ids, positions, kv_caches, meta, new_kv, None)
        return hidden, torch.stack(new_kv)

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor], meta: ForwardMetadata,
        new_kv: list[torch.Tensor] | None, rows: torch.Tensor | None,
    ) -> torch.Tensor:
        if len(kv_caches) != len(self.model.layers):
            raise ValueError(f"{len(kv_caches)} KV caches for {len(self.model.layers)} layers")
        cos, sin = self.model.rotary(positions)  # looked up once, shared by all layers
        h = F.embedding(input_ids, self.model.embed_tokens.weight)  # [T, hidden], a fresh tensor we own
        residual = None
        layers = self.model.layers
        # shapes only, no sync; no rows (a step of unfinished chunks) stays untrimmed: a product of 0 rows is
        # not every kernel's case (the quantized ones)
        trim = rows is not None and 0 < rows.shape[0] < input_ids.shape[0] and len(layers) > 0
        for i, (layer, kv_cache) in enumerate(zip(layers, kv_caches)):
            h, residual = layer(h, residual, cos, sin, kv_cache, meta, new_kv,
                                rows if trim and i == len(layers) - 1 else None)
        hidden = self.model.norm(h) if residual is None else self.model.norm(h, residual)  # residual None: no layers
        return hidden if rows is None or trim else hidden[rows]

    def compute_logits(self, hidden: torch.Tensor, widen: bool = True) -> torch.Tensor:
        """hidden [S, hidden] (only the rows to sample) -> logits [S, vocab] in float32; with widen=False
        in the head's own dtype (bf16 on a GPU: the same values, half the bytes; the engine's sampler
        and logprobs widen where they need to, and a greedy step reads them as they are)."""
        if self.lm_head is not None:
            logits = self.lm_head(hidden)
        elif self._head_quantized is not None:
            logits = quantized_matmul(hidden, self._head_quantized)
        else:
            logits = linear(hidden, self.model.embed_tokens.weight, blocked=self._head_blocked)
        return logits.float() if widen else logits

    @torch.no_grad()
    def quantize(self, mode: str) -> None:
        """Weight-only quantization of every projection, and of the LM head at int8 whatever the mode:
        the head decides every token, and 4 bits there cost the embedded model 5% of perplexity
        where int8 costs none (llama.cpp's 4-bit files, the shipped GGUF included, keep it at 8
        bits too). A tied head gets its own quantized copy; the embedding table stays, read one
        row per token."""
        # on the CPU the head's rows go in as int8 too: torch._int_mm multiplies them faster (w8a8)
        head = "w8a8" if self.model.embed_tokens.weight.device.type == "cpu" else "int8"
        for module in self.modules():
            if isinstance(module, Linear):
                module.quantize(head if module is self.lm_head else mode)
        if self.lm_head is None:
            self._head_quantized = quantize(self.model.embed_tokens.weight, head)

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every projection and the LM head, as stored
        (quantized or not), plus one embedding row a token; norms are noise."""
        total = 0
        for module in self.modules():
            if isinstance(module, Linear):
                total += module.quantized.nbytes if module.quantized is not None else \
                    module.weight.numel() * module.weight.element_size()
        if self.lm_head is None:
            embed = self.model.embed_tokens.weight
            total += self._head_quantized.nbytes if self._head_quantized is not None else \
                embed.numel() * embed.element_size()
        return total

    def pack_for_cpu(self) -> None:
        """Blocked copies of every projection and of the LM head, for the few-row products of decode
        steps on the CPU (engine.models.blocked_matmul)."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()
        if self.lm_head is None and self._head_quantized is None:
            with torch.no_grad():
                self._head_blocked = block_weight(self.model.embed_tokens.weight)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into our (fused) parameters; raise on missing, unexpected or misshapen ones."""
        load_into(self, weights)
