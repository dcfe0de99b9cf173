"""The dashboard tab: the live view (drawn in the browser from the engine's event feed), the load
generator's controls with a line saying who runs a load and for how long, and the KV-formula panel.

The server builds no figures: the only thing refreshed from Python is the load line, a few words
once a second while the tab is shown.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

from engine.serving.engine_info import EngineInfo
from engine.serving.engine_thread import EngineThread
from ui.kv_formula import kv_formula_markdown
from ui.live_view import live_view
from engine.core.controls import Controls
from ui.load_generator import LoadGenerator, LoadRefused, owner_label
from ui.scenarios import SCENARIOS, adjust_controls, run_scenario, scenario

# the live view's panel each scenario's idea shows best (ui/live/panels.js)
SCENARIO_PANELS = {"long-prompts": "timeline", "shared-prefix": "table", "parallel-sampling": "table",
                   "static-batching": "timeline", "memory-pressure": "timeline", "slow-motion": "timeline"}


def load_line(load: LoadGenerator, session: str) -> str:
    """Who runs a load, how many users, and the time left, as this visitor should read it."""
    status = load.status()
    if load.policy.mode == "off":
        return "The load generator is turned off on this server."
    text = status.describe()
    if status.users and status.owner == session:
        text = text.replace(f"started by {owner_label(status.owner)}", "started by you")
    return text


def load_controls(load: LoadGenerator, engine: EngineThread | None, prefix: str = "", compact: bool = False,
                  scenarios: bool = True, max_model_len: int | None = None) -> gr.Markdown:
    """Slider and buttons (and a presenter-key box when the policy wants one). The handlers pass the
    caller's session and key to the load generator, which decides. `engine`: whose controls a
    scenario sets (None over remote engines: no controls). `prefix` sets the element ids
    apart from another set's on the same page. `scenarios`: the scenario controls below (else the
    caller places them, with `scenario_controls`)."""
    line = gr.Markdown(elem_id=f"{prefix}load-status")
    if load.policy.mode == "off":
        return line
    minutes = load.policy.time_limit_s / 60
    with gr.Row(equal_height=True):
        who = ("Simulated users show on the block map like real ones (`sim-...`)." if engine is not None else
               "Simulated users chat with the remote engines over their API, each request to the least busy replica.")
        info = (None if compact else f"{who} A load belongs to the tab that started it: it stops when that tab "
                f"closes, or after {minutes:g} min.")
        users = gr.Slider(1, load.MAX_USERS, value=8, step=1, label="Simulate N users", scale=3, info=info)
        key = gr.Textbox(label="Presenter key", type="password", scale=2, visible=load.policy.mode == "key",
                         elem_id=f"{prefix}presenter-key")
        start = gr.Button("Start load", variant="primary", scale=1, elem_id=f"{prefix}load-start")
        stop = gr.Button("Stop load", variant="stop", scale=1, elem_id=f"{prefix}load-stop")

    def start_load(n: float, key: str, request: gr.Request) -> str:
        try:  # controls changed during a plain load go back to the defaults when it ends
            load.start(int(n), owner=request.session_hash or "", key=key or None,
                       on_stop=(lambda: engine.set_controls(Controls())) if engine is not None else None)
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
    if scenarios:
        scenario_controls(load, engine, prefix, compact, key, line, max_model_len)
    return line


def scenario_controls(load: LoadGenerator, engine: EngineThread | None, prefix: str = "", compact: bool = False,
                      key: gr.Textbox | None = None, line: gr.Markdown | None = None,
                      max_model_len: int | None = None) -> None:
    """One button a scenario, in the order of the ideas; the batching mode and slow motion, live.
    A scenario is a load: the load generator's policy decides who may start one, and its controls
    end with it. Each button also turns the live views to the panel that shows its idea. `key`: the
    presenter-key box to read (else one of its own when the policy wants a key); `line`: the load
    line to update at once (else the once-a-second refresh does). Over remote engines (`engine`
    None, a context of `max_model_len`) only the scenarios the API can run are offered, and no batching
    or slow-motion control."""
    if load.policy.mode == "off":
        return
    if key is None:
        key = gr.Textbox(label="Presenter key", type="password", visible=load.policy.mode == "key",
                         elem_id=f"{prefix}scenario-key")
    with gr.Row(elem_classes=["pc-scenarios"]):
        buttons = [(s, gr.Button(s.title, size="sm", min_width=120, elem_id=f"{prefix}scenario-{s.key}"))
                   for s in SCENARIOS if engine is not None or not s.needs_engine]
    with gr.Row(equal_height=True, visible=engine is not None):
        batching = gr.Radio(["continuous", "static"], value="continuous", label="Batching", scale=1,
                            elem_id=f"{prefix}batching")
        delay = gr.Slider(0.0, 1.0, value=0.0, step=0.1, label="Slow motion: pause after each step (s)", scale=2,
                          elem_id=f"{prefix}slow-motion")
    note = gr.Markdown(elem_id=f"{prefix}scenario-note")

    def start(s_key: str, key_: str, request: gr.Request) -> tuple:
        s = scenario(s_key)
        try:
            run_scenario(engine, load, s_key, owner=request.session_hash or "", key_=key_ or None,
                         max_model_len=max_model_len)
        except LoadRefused as exc:
            gr.Warning(str(exc))
        c = engine.controls if engine is not None else Controls()
        text = f"**{s.title}** ({s.concept}): {s.explain}"
        done = (c.batching, c.step_delay_s, text)
        return (load_line(load, request.session_hash or ""), *done) if line is not None else done

    def adjust(mode: str, seconds: float, key_: str, request: gr.Request) -> tuple:
        if engine is None:
            return "continuous", 0.0
        try:
            adjust_controls(engine, load, owner=request.session_hash or "", key_=key_ or None, batching=mode,
                            step_delay_s=float(seconds))
        except (LoadRefused, ValueError) as exc:
            gr.Warning(str(exc))
        c = engine.controls
        return c.batching, c.step_delay_s

    for s, button in buttons:
        show = (f"(...args) => {{ [window.PagedChatLive, window.PagedChatFleet].forEach(k => (k ? k.instances : [])"
                f".forEach(v => v.showScenario('{s.key}', '{SCENARIO_PANELS[s.key]}'))); return args; }}")
        outputs = ([line] if line is not None else []) + [batching, delay, note]
        button.click(_bind(start, s.key), inputs=[key], outputs=outputs, js=show,
                     show_progress="hidden", api_visibility="private")
    batching.input(adjust, inputs=[batching, delay, key], outputs=[batching, delay], show_progress="hidden",
                   api_visibility="private")
    delay.release(adjust, inputs=[batching, delay, key], outputs=[batching, delay], show_progress="hidden",
                  api_visibility="private")


def _bind(start, s_key: str):
    def handler(key_: str, request: gr.Request) -> tuple:
        return start(s_key, key_, request)
    return handler


def build_dashboard(info: EngineInfo | None, model_name: str, load: LoadGenerator | None,
                    replay: str | None = None, engine: EngineThread | None = None,
                    view: Callable[[bool, str], gr.HTML] | None = None,
                    max_model_len: int | None = None) -> gr.Markdown | None:
    """Render the dashboard in the current Blocks context; returns its load line (None when
    replaying: no load generator then). `view(presenter, elem_id)` draws the live view (the
    engine's by default); `info` None (remote engines): no KV-formula panel."""
    line = load_controls(load, engine, max_model_len=max_model_len) if load is not None and replay is None else None
    if view is None:
        live_view(replay=replay, elem_id="live-view")
    else:
        view(False, "live-view")
    if info is not None:
        with gr.Accordion("Why a token costs what it costs: the KV-cache formula", open=False):
            gr.Markdown(kv_formula_markdown(info, model_name), elem_id="kv-formula")
    return line
