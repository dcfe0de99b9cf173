"""The dashboard tab: the live view (drawn in the browser from the engine's event feed), the load
generator's controls with a line saying who runs a load and for how long, and the KV-formula panel.

The server builds no figures: the only thing refreshed from Python is the load line, a few words
once a second while the tab is shown.
"""
from __future__ import annotations

import gradio as gr

from engine.engine_info import EngineInfo
from ui.kv_formula import kv_formula_markdown
from ui.live_view import live_view
from ui.load_generator import LoadGenerator, LoadRefused, owner_label


def load_line(load: LoadGenerator, session: str) -> str:
    """Who runs a load, how many users, and the time left, as this visitor should read it."""
    status = load.status()
    if load.policy.mode == "off":
        return "The load generator is turned off on this server."
    text = status.describe()
    if status.users and status.owner == session:
        text = text.replace(f"started by {owner_label(status.owner)}", "started by you")
    return text


def load_controls(load: LoadGenerator, prefix: str = "", compact: bool = False) -> gr.Markdown:
    """Slider and buttons (and a presenter-key box when the policy wants one). The handlers pass the
    caller's session and key to the load generator, which decides. `prefix` sets the element ids
    apart from another set's on the same page."""
    line = gr.Markdown(elem_id=f"{prefix}load-status")
    if load.policy.mode == "off":
        return line
    minutes = load.policy.time_limit_s / 60
    with gr.Row(equal_height=True):
        info = (None if compact else f"Simulated users show on the block map like real ones (`sim-...`). A load "
                f"belongs to the tab that started it: it stops when that tab closes, or after {minutes:g} min.")
        users = gr.Slider(1, load.MAX_USERS, value=8, step=1, label="Simulate N users", scale=3, info=info)
        key = gr.Textbox(label="Presenter key", type="password", scale=2, visible=load.policy.mode == "key",
                         elem_id=f"{prefix}presenter-key")
        start = gr.Button("Start load", variant="primary", scale=1, elem_id=f"{prefix}load-start")
        stop = gr.Button("Stop load", variant="stop", scale=1, elem_id=f"{prefix}load-stop")

    def start_load(n: float, key: str, request: gr.Request) -> str:
        try:
            load.start(int(n), owner=request.session_hash or "", key=key or None)
        except LoadRefused as exc:
            gr.Warning(str(exc))
        return load_line(load, request.session_hash or "")

    def stop_load(key: str, request: gr.Request) -> str:
        try:
            load.stop(owner=request.session_hash or "", key=key or None)
        except LoadRefused as exc:
            gr.Warning(str(exc))
        return load_line(load, request.session_hash or "")

    start.click(start_load, inputs=[users, key], outputs=line, show_progress="hidden", api_visibility="private")
    stop.click(stop_load, inputs=[key], outputs=line, show_progress="hidden", api_visibility="private")
    return line


def build_dashboard(info: EngineInfo, model_name: str, load: LoadGenerator | None,
                    replay: str | None = None) -> gr.Markdown | None:
    """Render the dashboard in the current Blocks context; returns its load line (None when
    replaying: no load generator then)."""
    line = load_controls(load) if load is not None and replay is None else None
    live_view(replay=replay, elem_id="live-view")
    with gr.Accordion("Why a token costs what it costs: the KV-cache formula", open=False):
        gr.Markdown(kv_formula_markdown(info, model_name), elem_id="kv-formula")
    return line
