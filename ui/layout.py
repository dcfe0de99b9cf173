"""The whole Gradio UI: a Chat tab and a Dashboard tab whose timer runs only while it is shown."""
from __future__ import annotations

import gradio as gr

from engine.engine_thread import EngineThread
from ui.chat import build_chat
from ui.dashboard import DashboardData, build_dashboard
from ui.load_generator import LoadGenerator
from ui.utilization import UtilizationMonitor

INTRO = ("**PagedChat**: chat with a small LLM served by a from-scratch engine, and watch it work: paged KV "
         "blocks, continuous batching, prefix sharing, preemption. Open *Dashboard* in a second tab while you chat.")


def build_ui(engine: EngineThread, load: LoadGenerator, utilization: UtilizationMonitor, model_name: str,
             tick_s: float = 1.0) -> gr.Blocks:
    """Blocks for `engine`; queue it (with a high concurrency limit) before serving."""
    data = DashboardData(engine, utilization, load, model_name)
    with gr.Blocks(title="PagedChat") as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat") as chat_tab:
                build_chat(engine)
            with gr.Tab("Dashboard", id="dashboard") as dash_tab:
                timer = build_dashboard(data, tick_s)
        dash_tab.select(lambda: gr.Timer(active=True), None, timer, show_progress="hidden", api_visibility="private")
        chat_tab.select(lambda: gr.Timer(active=False), None, timer, show_progress="hidden",
                        api_visibility="private")

        def tab_closed(request: gr.Request) -> None:
            load.release(request.session_hash or "")  # a load ends with the tab that started it

        demo.unload(tab_closed)
    return demo
