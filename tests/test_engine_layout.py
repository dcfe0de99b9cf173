"""engine/ in three groups: core (no torch), runner, serving; the paths from before still import."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent


def test_each_module_sits_in_its_group_and_its_old_path_gives_the_same_module() -> None:
    for group, modules in engine._GROUPS.items():
        for name in modules:
            assert (ROOT / "engine" / group / f"{name}.py").is_file()
            assert not (ROOT / "engine" / f"{name}.py").exists()
            old = importlib.import_module(f"engine.{name}")
            assert old is importlib.import_module(f"engine.{group}.{name}")
    from engine.llm_engine import LLMEngine  # as code written before the grouping imports it
    from engine.serving.llm_engine import LLMEngine as Same
    assert LLMEngine is Same


def test_the_core_imports_without_torch() -> None:
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not for the core')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import importlib, engine\n"
        "for name in engine._GROUPS['core']:\n"
        "    importlib.import_module('engine.core.' + name)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
