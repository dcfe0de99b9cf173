"""Our Llama-family model through the paged cache against Hugging Face's own, on tiny random models."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from engine.attention import TorchAttentionBackend
from engine.core.config import ModelConfig
from engine.runner.forward_metadata import ScheduledChunk
from engine.runner.step_inputs import build_metadata
from engine.runner.model_loader import load_model
from engine.models import LlamaForCausalLM, build_model

BLOCK_SIZE = 4
NUM_BLOCKS = 64
TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)
CONFIGS = {
    "llama": lambda: LlamaConfig(**TINY),
    "llama-tied-bias": lambda: LlamaConfig(**TINY, tie_word_embeddings=True, attention_bias=True),
    "llama3-rope": lambda: LlamaConfig(**TINY, rope_theta=10000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}),
    "linear-rope": lambda: LlamaConfig(**TINY, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral": lambda: MistralConfig(**TINY, head_dim=16, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**TINY, tie_word_embeddings=True),
    "qwen3": lambda: Qwen3Config(**TINY, head_dim=24, tie_word_embeddings=False),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations (HF's std 0.02 init makes every model look alike)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 2 and "embed_tokens" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() == 1 else 1.0))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(HF model, our model loaded from the HF model's saved folder), both fp32."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[request.param](), attn_implementation="eager").eval()
    randomize(hf, seed=1)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    ours, config = load_model(str(path), TorchAttentionBackend(), torch.float32, "cpu")
    return hf, ours, config


class PagedRun:
    """Drives our model step by step over a NaN-poisoned paged cache with shuffled block tables."""

    def __init__(self, model: LlamaForCausalLM, config: ModelConfig, num_seqs: int) -> None:
        self.model = model
        shape = (2, NUM_BLOCKS, BLOCK_SIZE, config.num_kv_heads, config.head_dim)
        self.caches = [torch.full(shape, float("nan")) for _ in range(config.num_layers)]
        blocks = torch.randperm(NUM_BLOCKS, generator=torch.Generator().manual_seed(3)).tolist()
        per_seq = NUM_BLOCKS // num_seqs
        self.tables = [blocks[i * per_seq:(i + 1) * per_seq] for i in range(num_seqs)]
        self.lens = [0] * num_seqs

    def step(self, feeds: dict[int, list[int]]) -> list[torch.Tensor]:
        """feeds: sequence -> its new tokens. One forward; returns each fed sequence's logits [n, vocab]."""
        chunks = [ScheduledChunk(toks, self.lens[s], self.tables[s], 1) for s, toks in feeds.items()]
        meta = build_metadata(chunks, BLOCK_SIZE, "cpu")
        with torch.inference_mode():
            logits = self.model.compute_logits(self.model(meta.input_ids, meta.positions, self.caches, meta))
        for s, toks in feeds.items():
            self.lens[s] += len(toks)
        return list(logits.split([len(t) for t in feeds.values()]))


def hf_logits(hf: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def prompts(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


def test_model_config_flags(pair: tuple) -> None:
    hf, _, config = pair
    assert config.attention_bias == (hf.config.model_type == "qwen2" or getattr(hf.config, "attention_bias", False))
    assert config.qk_norm == (hf.config.model_type == "qwen3")


def test_batched_prefill_then_decode_match_hf(pair: tuple) -> None:
    """Prompts of different lengths in ONE forward, then greedy decode steps, equal HF's per-prompt runs."""
    hf, ours, config = pair
    batch = prompts(config.vocab_size, [7, 1, 19, 12], seed=0)
    run = PagedRun(ours, config, len(batch))
    got = run.step(dict(enumerate(batch)))
    for ids, logits in zip(batch, got):
        torch.testing.assert_close(logits, hf_logits(hf, ids), atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        outs = [hf(torch.tensor([ids]), use_cache=True) for ids in batch]
    caches = [o.past_key_values for o in outs]
    nxt = [int(g[-1].argmax()) for g in got]
    for _ in range(3):
        got = run.step({s: [t] for s, t in enumerate(nxt)})
        for s, t in enumerate(nxt):
            with torch.no_grad():
                out = hf(torch.tensor([[t]]), past_key_values=caches[s], use_cache=True)
            caches[s] = out.past_key_values
            torch.testing.assert_close(got[s][0], out.logits[0, -1], atol=1e-4, rtol=1e-4)
        nxt = [int(g[-1].argmax()) for g in got]


def test_chunked_prefill_beside_a_decode_matches_hf(pair: tuple) -> None:
    """A prompt fed in two chunks (the second over the cached first) while another sequence decodes."""
    hf, ours, config = pair
    long, short = prompts(config.vocab_size, [21, 6], seed=1)
    run = PagedRun(ours, config, 2)
    first, _ = run.step({0: long[:9], 1: short})
    torch.testing.assert_close(first, hf_logits(hf, long)[:9], atol=1e-4, rtol=1e-4)
    second, decoded = run.step({0: long[9:], 1: [5]})
    torch.testing.assert_close(second, hf_logits(hf, long)[9:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(decoded[0], hf_logits(hf, short + [5])[-1], atol=1e-4, rtol=1e-4)


def test_the_rows_to_sample_alone_match_hf_and_store_every_token(pair: tuple) -> None:
    """Given the rows to sample (fewer than the tokens, repeats allowed), the model returns those
    rows' hidden states alone, its last layer past the attention run on them only: their logits are
    HF's, and the cache holds every token's keys and values, as after a forward of all rows."""
    hf, ours, config = pair
    batch = prompts(config.vocab_size, [9, 1, 14], seed=2)
    full, rows_only = PagedRun(ours, config, len(batch)), PagedRun(ours, config, len(batch))
    full.step(dict(enumerate(batch)))
    chunks = [ScheduledChunk(toks, 0, rows_only.tables[s], 1) for s, toks in enumerate(batch)]
    meta = build_metadata(chunks, BLOCK_SIZE, "cpu")
    rows = torch.tensor([8, 9, 9, 23, 0])  # each prompt's last token (the second's twice: n = 2), a first token
    with torch.inference_mode():
        hidden = ours(meta.input_ids, meta.positions, rows_only.caches, meta, rows)
        logits = ours.compute_logits(hidden)
    assert hidden.shape == (len(rows), config.hidden_size)
    expected = [hf_logits(hf, batch[0])[-1], hf_logits(hf, batch[1])[-1], hf_logits(hf, batch[1])[-1],
                hf_logits(hf, batch[2])[-1], hf_logits(hf, batch[0])[0]]
    torch.testing.assert_close(logits, torch.stack(expected), atol=1e-4, rtol=1e-4)
    for a, b in zip(full.caches, rows_only.caches):
        torch.testing.assert_close(a, b, equal_nan=True)  # NaN where no token was written, in both
    with torch.inference_mode():  # as many rows as tokens: every row's state, then the rows picked
        every = ours(meta.input_ids, meta.positions, rows_only.caches, meta, torch.arange(23, -1, -1))
    torch.testing.assert_close(every, ours(meta.input_ids, meta.positions, full.caches, meta).flip(0))


def test_load_weights_rejects_missing_unexpected_and_misshapen(pair: tuple) -> None:
    hf, _, config = pair
    weights = dict(hf.state_dict())
    fresh = build_model(config, TorchAttentionBackend(), torch.float32, "cpu")
    missing = {k: v for k, v in weights.items() if not k.endswith("k_proj.weight")}
    with pytest.raises(ValueError, match=r"missing .*qkv_proj.weight\[shard 1\]"):
        fresh.load_weights(missing.items())
    with pytest.raises(ValueError, match="unexpected model.layers.0.mlp.extra.weight, missing none"):
        fresh.load_weights([*weights.items(), ("model.layers.0.mlp.extra.weight", torch.zeros(1))])
    bad = dict(weights, **{"model.norm.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="model.norm.weight: checkpoint shape"):
        fresh.load_weights(bad.items())


def test_unsupported_model_type() -> None:
    config = ModelConfig.from_hf(LlamaConfig(**TINY))
    config = ModelConfig(**{**config.__dict__, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="unsupported model type 'gpt2'"):
        build_model(config, TorchAttentionBackend(), torch.float32, "cpu")
