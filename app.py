"""PagedChat: `python app.py` serves the chat UI, the live dashboard and an OpenAI-compatible API
from one process, with the engine stepping on its own background thread."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine_thread import EngineThread
from engine.llm_engine import LLMEngine
from server.foreground import serve
from server.http_app import build_http_app
from ui.layout import build_ui
from ui.load_generator import LoadGenerator, load_prompts
from ui.utilization import UtilizationMonitor

PROMPTS = Path(__file__).parent / "assets" / "prompts.txt"
ENGINE_DIED = 70  # the exit status when the engine thread died (EX_SOFTWARE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct), a folder or a hub id")
    p.add_argument("--served-model-name", default=None, help="the model's name in the API (default: from --model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"],
                   help="auto: Triton kernels on CUDA, plain torch elsewhere")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (decode steps, lone prefills)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block (a power of two)")
    p.add_argument("--num-blocks", type=int, default=None, help="KV pool size in blocks (default: from memory)")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.85,
                   help="on a GPU without --num-blocks: share of free GPU memory for the KV pool")
    p.add_argument("--cpu-kv-gib", type=float, default=1.0, help="on a CPU without --num-blocks: KV pool GiB")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences batched together at most")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--max-waiting", type=int, default=SchedulerConfig.max_waiting,
                   help="queued requests beyond which new ones are refused (HTTP 429, a message in the chat)")
    p.add_argument("--no-prefix-caching", action="store_true", help="turn off prefix sharing")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return p.parse_args(argv)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    cache = CacheConfig(block_size=args.block_size, num_blocks=args.num_blocks,
                        gpu_memory_fraction=args.gpu_memory_fraction, cpu_kv_gib=args.cpu_kv_gib,
                        enable_prefix_caching=not args.no_prefix_caching)
    scheduler = SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                max_model_len=args.max_model_len, max_waiting=args.max_waiting)
    return EngineConfig(model=args.model, device=args.device, dtype=args.dtype, cache=cache, scheduler=scheduler,
                        attention_backend=args.attention_backend, enforce_eager=args.enforce_eager)


def served_name(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return args.served_model_name
    return "SmolLM2-135M-Instruct" if args.model == "embedded" else Path(args.model).name or args.model


def build_app(config: EngineConfig, name: str, load_seed: int | None = None) -> tuple[Any, EngineThread, LoadGenerator]:
    """The engine on its thread, the load generator, and the HTTP app carrying API and UI."""
    engine = EngineThread(LLMEngine(config)).start()
    load = LoadGenerator(engine, load_prompts(PROMPTS), seed=load_seed)
    utilization = UtilizationMonitor(engine.info.device, engine.history.busy_fraction)
    return build_http_app(engine, name, build_ui(engine, load, utilization, name)), engine, load


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM; then stop the engine (open streams end with an error event)
    and exit 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    app, engine, load = build_app(engine_config(args), served_name(args))
    logging.info("PagedChat on http://%s:%d (API under /v1, /health, /metrics)", args.host, args.port)

    def stop() -> None:
        load.stop()
        engine.stop()

    serve(app, args.host, args.port, on_shutdown=stop, stop_when=lambda: engine.error is not None)
    if engine.error is not None:
        # open streams have ended with an error event; a supervisor (systemd, Docker, Spaces)
        # starts a fresh process, which is the one sure way back from a lost device
        logging.critical("the engine died (%s): exiting with status %d", engine.error, ENGINE_DIED)
        sys.exit(ENGINE_DIED)
    logging.info("PagedChat stopped")


if __name__ == "__main__":
    main()
