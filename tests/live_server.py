"""A whole PagedChat server (engine thread, Gradio UI, HTTP API) on a free loopback port, for tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine_thread import EngineThread
from engine.llm_engine import LLMEngine
from server.http_app import build_http_app
from server.uvicorn_thread import ServerThread
from ui.layout import build_ui
from ui.load_generator import LoadGenerator, load_prompts
from ui.utilization import UtilizationMonitor

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.txt"
MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass
class LiveServer:
    engine: EngineThread
    load: LoadGenerator
    http: ServerThread

    @property
    def url(self) -> str:
        return self.http.url

    def stop(self) -> None:
        self.load.stop()
        self.http.stop()
        self.engine.stop()


def start_live_server(model_dir: str, num_blocks: int = 256) -> LiveServer:
    config = EngineConfig(model=model_dir, device="cpu", cache=CacheConfig(num_blocks=num_blocks),
                          scheduler=SchedulerConfig(max_num_seqs=64), check_integrity=True)
    engine = EngineThread(LLMEngine(config)).start()
    load = LoadGenerator(engine, load_prompts(PROMPTS), seed=0)
    util = UtilizationMonitor(engine.info.device, engine.history.busy_fraction)
    app = build_http_app(engine, MODEL_NAME, build_ui(engine, load, util, MODEL_NAME))
    return LiveServer(engine, load, ServerThread(app).start())
