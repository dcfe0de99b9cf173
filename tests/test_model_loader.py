"""Resolving and loading models: the embedded GGUF converted once, our logits equal to HF's."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import engine.runner.embedded_model as embedded_model
from engine.attention import TorchAttentionBackend
from engine.runner.forward_metadata import ScheduledChunk
from engine.runner.step_inputs import build_metadata
from engine.runner.model_loader import load_model, load_tokenizer, resolve_model

BLOCK_SIZE = 16


def test_second_resolve_reuses_the_cache(embedded_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reconversion(*_: object) -> None:
        raise AssertionError("the embedded model was converted again")

    monkeypatch.setattr(embedded_model, "convert_gguf", no_reconversion)
    start = time.perf_counter()
    assert resolve_model("embedded", cache_dir=str(Path(embedded_model_dir).parent)) == embedded_model_dir
    assert time.perf_counter() - start < 1.0
    files = {p.name for p in Path(embedded_model_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files


def test_killed_conversion_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def dies_halfway(_: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded_model, "convert_gguf", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("embedded", cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_local_folder_and_bad_names(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path.parent))
    with pytest.raises(RuntimeError, match="neither 'embedded' nor a local folder"):
        resolve_model("not a/valid repo id!")


def test_embedded_logits_and_greedy_tokens_match_hf(embedded_model_dir: str) -> None:
    """Our model on a chat prompt, then 8 greedy tokens through the paged cache, against HF (fp32)."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(embedded_model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
        return_dict=False,
    )
    ours, config = load_model(embedded_model_dir, TorchAttentionBackend(), torch.float32, "cpu")
    hf = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()

    caches = [torch.zeros(2, 8, BLOCK_SIZE, config.num_kv_heads, config.head_dim) for _ in range(config.num_layers)]
    table = [5, 2, 7, 0, 3, 6, 1, 4]
    chunk = ScheduledChunk(prompt, 0, table, 1)
    generated: list[int] = []
    with torch.inference_mode():
        for step in range(8):
            meta = build_metadata([chunk], BLOCK_SIZE, "cpu")
            logits = ours.compute_logits(ours(meta.input_ids, meta.positions, caches, meta))
            if step == 0:
                torch.testing.assert_close(logits, ref, atol=1e-3, rtol=1e-4)
            generated.append(int(logits[-1].argmax()))
            chunk = ScheduledChunk([generated[-1]], len(prompt) + step, table, 1)
    # HF stops early at end-of-turn; up to there the tokens must agree
    assert generated[:len(expected)] == expected, tokenizer.decode(generated)


def test_auto_dtype_is_fp16_on_a_gpu_without_bf16() -> None:
    """fp32 on a CPU; bf16 on a GPU that has it; fp16 on one that has not (a T4 on a Space)."""
    import torch

    from engine.runner.model_runner import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda"), bf16_supported=True) is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda"), bf16_supported=False) is torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda"), bf16_supported=False) is torch.bfloat16  # as asked
