"""The whole Gradio UI: a Chat tab and a Dashboard tab, and a presenter mode that puts a chat
beside a large live view on one page. Replaying a recording, the chat is off; over remote engines
(`RemotePage`), the chat streams from them and the view is the fleet's."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from engine.serving.engine_info import EngineInfo
from engine.serving.engine_thread import EngineThread
from ui.chat import TextStream, build_chat, engine_texts
from ui.dashboard import build_dashboard, load_controls, load_line, scenario_controls
from ui.live_view import fleet_view, live_view
from ui.load_generator import LoadGenerator

INTRO = ("**PagedChat**: chat with a small LLM served by a from-scratch engine, and watch it work: paged KV "
         "blocks, continuous batching, prefix sharing, preemption. Open *Dashboard* in a second tab while you chat.")
REPLAY_INTRO = ("**PagedChat**, replaying a recorded run of its engine: the dashboard shows what the engine did, "
                "step by step, as it happened. The chat is off.")
REMOTE_INTRO = ("**PagedChat** over remote engines ({engines}): chat with them, and watch each replica's load, "
                "latency and prefix cache on the *Dashboard*, from what it exports (Prometheus metrics, KV events).")
# every live view on the page starts its charts again
RESET_VIEWS = ("() => { [window.PagedChatLive, window.PagedChatFleet].forEach(k => (k ? k.instances : [])"
               ".forEach(v => v.reset())); }")


@dataclass(frozen=True)
class RemotePage:
    """The page over remote engines: their chat stream, the context an answer must fit in, and their
    URLs (for the intro)."""

    texts: TextStream
    max_len: int
    engines: tuple[str, ...]


def build_ui(info: EngineInfo | None, model_name: str, engine: EngineThread | None = None,
             load: LoadGenerator | None = None, replay: str | None = None, remote: RemotePage | None = None,
             tick_s: float = 1.0) -> gr.Blocks:
    """Blocks for `engine`; queue it (with a high concurrency limit) before serving. `replay`: the
    label of the recording the feed replays instead (no engine: no chat, no load generator);
    `remote`: remote engines instead of `engine` (with a load generator that sends to them)."""
    if replay is None and ((engine is None and remote is None) or load is None):
        raise ValueError("a live UI needs an engine (or remote engines) and the load generator")
    if remote is not None:
        texts, max_len = remote.texts, remote.max_len
        intro_text = REMOTE_INTRO.format(engines=", ".join(remote.engines))
    elif engine is not None:
        texts, max_len, intro_text = engine_texts(engine), engine.info.max_model_len, INTRO
    else:
        intro_text = REPLAY_INTRO

    def view(presenter: bool, elem_id: str) -> gr.HTML:
        return fleet_view(presenter, elem_id) if remote is not None else live_view(presenter, replay, elem_id)

    with gr.Blocks(title="PagedChat") as demo:
        with gr.Row(equal_height=False):
            intro = gr.Markdown(intro_text, elem_id="intro", min_width=300)
            presenter = gr.Checkbox(label="Presenter mode", value=False, scale=0, min_width=170,
                                    elem_id="presenter-mode")
        with gr.Column(visible=True) as normal:
            with gr.Tabs(selected="dashboard" if replay else "chat"):
                if replay is None:
                    with gr.Tab("Chat", id="chat") as chat_tab:
                        build_chat(texts, max_len)
                with gr.Tab("Dashboard", id="dashboard") as dash_tab:
                    line = build_dashboard(info, model_name, load, replay, engine, view,
                                           max_model_len=max_len if replay is None else None)
        with gr.Column(visible=False, elem_id="stage") as stage:
            with gr.Row():
                with gr.Column(scale=2, min_width=360):
                    if replay is None:
                        stage_chat = build_chat(texts, max_len, prefix="stage-", height=520, api_name=None)
                    reset = gr.Button("Reset: clear the chat and the charts", size="sm", elem_id="stage-reset")
                    if replay is None:  # beside the chat, so that the view's panels stay on screen
                        scenario_controls(load, engine, prefix="stage-", compact=True, max_model_len=max_len)
                with gr.Column(scale=3, min_width=360):
                    stage_line = (load_controls(load, engine, prefix="stage-", compact=True, scenarios=False)
                                  if replay is None else None)
                    view(True, "stage-live-view")
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
