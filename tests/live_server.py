"""A whole PagedChat server (engine thread, Gradio UI, HTTP API) on a free loopback port, for tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app import build_app
from engine.core.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.serving.engine_thread import EngineThread
from server.limits import ServerLimits
from server.uvicorn_thread import ServerThread
from ui.load_generator import LoadGenerator

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


def start_live_server(model_dir: str, num_blocks: int = 256, max_num_seqs: int = 64, max_waiting: int = 256,
                      max_num_batched_tokens: int = 2048, limits: ServerLimits = ServerLimits(),
                      **app_options: Any) -> LiveServer:
    """`app_options` go to `app.build_app` (policy, hosts, api_key)."""
    scheduler = SchedulerConfig(max_num_seqs=max_num_seqs, max_waiting=max_waiting,
                                max_num_batched_tokens=max_num_batched_tokens)
    config = EngineConfig(model=model_dir, device="cpu", cache=CacheConfig(num_blocks=num_blocks),
                          scheduler=scheduler, check_integrity=True)
    app, engine, load = build_app(config, MODEL_NAME, load_seed=0, limits=limits, **app_options)
    return LiveServer(engine, load, ServerThread(app, limits=limits).start())
