"""Faults on the GPU (Triton attention, CUDA graphs): a step that raises on the host fails only its
requests and the engine serves on, graphs and all; a device-side assert, which ends the CUDA
context, stops the engine with DeviceFailure (the app then exits for a restart). Skipped where there
is no CUDA device."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.synthetic_model import make_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("q3bf16"), dtype=torch.bfloat16, seed=3)


def test_a_host_fault_fails_its_step_and_the_gpu_engine_serves_on(model_dir: Path) -> None:
    llm = LLM(str(model_dir), num_blocks=256, max_model_len=1024, check_integrity=True)
    engine = llm.engine
    prompts = [[5, 6, 7, 8] * 10, [9, 10, 11] * 20]
    alone = [r.outputs[0].token_ids for r in llm.generate(prompts, GREEDY)]
    launch, calls = engine.runner.launch, [0]

    def faulty(chunks, copies, rows, **feed):
        calls[0] += 1
        if calls[0] == 4:  # mid-decode, through the decode graphs
            raise RuntimeError("injected host fault")
        return launch(chunks, copies, rows, **feed)

    engine.runner.launch = faulty
    for i, p in enumerate(prompts):
        engine.add_request(f"bad-{i}", p, GREEDY)
    finals = []
    while engine.has_unfinished_requests():
        finals += [o for o in engine.step().outputs if o.finished]
    assert sorted(o.finish_reason for o in finals) == ["error", "error"]
    engine.runner.launch = launch
    assert [r.outputs[0].token_ids for r in llm.generate(prompts, GREEDY)] == alone
    assert engine.block_manager.stats().used == 0


def test_a_device_side_assert_stops_the_engine(model_dir: Path, tmp_path: Path) -> None:
    """In a child process: the assert poisons the process's CUDA context for good."""
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from engine import LLM, SamplingParams
        from engine.serving.request_stream import DeviceFailure
        llm = LLM({str(model_dir)!r}, num_blocks=64, max_model_len=256)
        engine, launch = llm.engine, llm.engine.runner.launch
        def asserting(chunks, copies, rows, **feed):
            torch.zeros(4, device="cuda")[torch.tensor([10], device="cuda")].item()  # out of bounds
            return launch(chunks, copies, rows, **feed)
        engine.runner.launch = asserting
        engine.add_request("r", [1, 2, 3], SamplingParams(max_tokens=4))
        try:
            engine.step()
        except DeviceFailure as exc:
            print("DEVICE FAILURE:", exc)
            sys.exit(0)
        sys.exit("the engine went on after a device-side assert")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "DEVICE FAILURE" in done.stdout, done.stdout + done.stderr
