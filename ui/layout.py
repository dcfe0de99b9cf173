"""The whole Gradio UI: a Chat tab and a Dashboard tab, and a presenter mode that puts a chat
beside a large live view on one page. Replaying a recording, the chat is off."""
from __future__ import annotations

import gradio as gr

from engine.engine_info import EngineInfo
from engine.engine_thread import EngineThread
from ui.chat import build_chat
from ui.dashboard import build_dashboard, load_controls, load_line, scenario_controls
from ui.live_view import live_view
from ui.load_generator import LoadGenerator

INTRO = ("**PagedChat**: chat with a small LLM served by a from-scratch engine, and watch it work: paged KV "
         "blocks, continuous batching, prefix sharing, preemption. Open *Dashboard* in a second tab while you chat.")
REPLAY_INTRO = ("**PagedChat**, replaying a recorded run of its engine: the dashboard shows what the engine did, "
                "step by step, as it happened. The chat is off.")
# every live view on the page starts its charts again
RESET_VIEWS = "() => { (window.PagedChatLive ? window.PagedChatLive.instances : []).forEach(v => v.reset()); }"


def build_ui(info: EngineInfo, model_name: str, engine: EngineThread | None = None,
             load: LoadGenerator | None = None, replay: str | None = None, tick_s: float = 1.0) -> gr.Blocks:
    """Blocks for `engine`; queue it (with a high concurrency limit) before serving. `replay`: the
    label of the recording the feed replays instead (no engine: no chat, no load generator)."""
    if replay is None and (engine is None or load is None):
        raise ValueError("a live UI needs the engine and the load generator")
    with gr.Blocks(title="PagedChat") as demo:
        with gr.Row(equal_height=False):
            intro = gr.Markdown(REPLAY_INTRO if replay else INTRO, elem_id="intro", min_width=300)
            presenter = gr.Checkbox(label="Presenter mode", value=False, scale=0, min_width=170,
                                    elem_id="presenter-mode")
        with gr.Column(visible=True) as normal:
            with gr.Tabs(selected="dashboard" if replay else "chat"):
                if replay is None:
                    with gr.Tab("Chat", id="chat") as chat_tab:
                        build_chat(engine)
                with gr.Tab("Dashboard", id="dashboard") as dash_tab:
                    line = build_dashboard(info, model_name, load, replay)
        with gr.Column(visible=False, elem_id="stage") as stage:
            with gr.Row():
                with gr.Column(scale=2, min_width=360):
                    if replay is None:
                        stage_chat = build_chat(engine, prefix="stage-", height=520, api_name=None)
                    reset = gr.Button("Reset: clear the chat and the charts", size="sm", elem_id="stage-reset")
                    if replay is None:  # beside the chat, so that the view's panels stay on screen
                        scenario_controls(load, prefix="stage-", compact=True)
                with gr.Column(scale=3, min_width=360):
                    stage_line = load_controls(load, prefix="stage-", compact=True, scenarios=False) if replay is None else None
                    live_view(presenter=True, replay=replay, elem_id="stage-live-view")
        # on stage the screen is the audience's: the intro goes, the chat and the view fill it
        presenter.change(lambda on: (gr.Column(visible=not on), gr.Column(visible=on), gr.Markdown(visible=not on)),
                         presenter, [normal, stage, intro], show_progress="hidden", api_visibility="private")
        if replay is not None:
            reset.click(None, js=RESET_VIEWS)
            return demo
        # an answer still streaming is stopped first, and its "(stopped)" mark lands, before the clear
        # (else they bring the history back)
        stop_then_reset = ("async () => { const stop = document.querySelector('#stage-chat-input .stop-button');"
                           " if (stop && stop.offsetParent) { stop.click(); await new Promise(r => setTimeout(r, 800)); }"
                           f" ({RESET_VIEWS})(); }}")
        reset.click(lambda: ([], []), None, [stage_chat.chatbot, stage_chat.chatbot_state], js=stop_then_reset,
                    show_progress="hidden", api_visibility="private")

        # the load lines say who runs a load and the time left; refreshed while a dashboard shows
        timer = gr.Timer(tick_s, active=False)

        def refresh(request: gr.Request) -> list[str]:
            return [load_line(load, request.session_hash or "")] * 2

        timer.tick(refresh, None, [line, stage_line], show_progress="hidden", queue=False, api_visibility="private")
        dash_tab.select(lambda: gr.Timer(active=True), None, timer, show_progress="hidden", api_visibility="private")
        chat_tab.select(lambda on: gr.Timer(active=on), presenter, timer, show_progress="hidden",
                        api_visibility="private")
        presenter.change(lambda on: gr.Timer(active=True) if on else gr.Timer(), presenter, timer,
                         show_progress="hidden", api_visibility="private")

        def tab_closed(request: gr.Request) -> None:
            assert load is not None
            load.release(request.session_hash or "")  # a load ends with the tab that started it

        demo.unload(tab_closed)
    return demo
