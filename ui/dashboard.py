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
from engine.controls import Controls
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


def load_controls(load: LoadGenerator, prefix: str = "", compact: bool = False, scenarios: bool = True) -> gr.Markdown:
    """Slider and buttons (and a presenter-key box when the policy wants one). The handlers pass the
    caller's session and key to the load generator, which decides. `prefix` sets the element ids
    apart from another set's on the same page. `scenarios`: the scenario controls below (else the
    caller places them, with `scenario_controls`)."""
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
        try:  # controls changed during a plain load go back to the defaults when it ends
            load.start(int(n), owner=request.session_hash or "", key=key or None,
                       on_stop=lambda: load.engine.set_controls(Controls()))
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
        scenario_controls(load, prefix, compact, key, line)
    return line


def scenario_controls(load: LoadGenerator, prefix: str = "", compact: bool = False, key: gr.Textbox | None = None,
                      line: gr.Markdown | None = None) -> None:
    """One button a scenario, in the order of the ideas; the batching mode and slow motion, live.
    A scenario is a load: the load generator's policy decides who may start one, and its controls
    end with it. Each button also turns the live views to the panel that shows its idea. `key`: the
    presenter-key box to read (else one of its own when the policy wants a key); `line`: the load
    line to update at once (else the once-a-second refresh does)."""
    engine = load.engine
    if load.policy.mode == "off":
        return
    if key is None:
        key = gr.Textbox(label="Presenter key", type="password", visible=load.policy.mode == "key",
                         elem_id=f"{prefix}scenario-key")
    with gr.Row(elem_classes=["pc-scenarios"]):
        buttons = [(s, gr.Button(s.title, size="sm", min_width=120, elem_id=f"{prefix}scenario-{s.key}"))
                   for s in SCENARIOS]
    with gr.Row(equal_height=True):
        batching = gr.Radio(["continuous", "static"], value="continuous", label="Batching", scale=1,
                            elem_id=f"{prefix}batching")
        delay = gr.Slider(0.0, 1.0, value=0.0, step=0.1, label="Slow motion: pause after each step (s)", scale=2,
                          elem_id=f"{prefix}slow-motion")
    note = gr.Markdown(elem_id=f"{prefix}scenario-note")

    def start(s_key: str, key_: str, request: gr.Request) -> tuple:
        s = scenario(s_key)
        try:
            run_scenario(engine, load, s_key, owner=request.session_hash or "", key_=key_ or None)
        except LoadRefused as exc:
            gr.Warning(str(exc))
        c = engine.controls
        text = f"**{s.title}** ({s.concept}): {s.explain}"
        done = (c.batching, c.step_delay_s, text)
        return (load_line(load, request.session_hash or ""), *done) if line is not None else done

    def adjust(mode: str, seconds: float, key_: str, request: gr.Request) -> tuple:
        try:
            adjust_controls(engine, load, owner=request.session_hash or "", key_=key_ or None, batching=mode,
                            step_delay_s=float(seconds))
        except (LoadRefused, ValueError) as exc:
            gr.Warning(str(exc))
        c = engine.controls
        return c.batching, c.step_delay_s

    for s, button in buttons:
        show = (f"(...args) => {{ (window.PagedChatLive ? window.PagedChatLive.instances : [])"
                f".forEach(v => v.showScenario('{s.key}', '{SCENARIO_PANELS[s.key]}')); return args; }}")
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


def build_dashboard(info: EngineInfo, model_name: str, load: LoadGenerator | None,
                    replay: str | None = None) -> gr.Markdown | None:
    """Render the dashboard in the current Blocks context; returns its load line (None when
    replaying: no load generator then)."""
    line = load_controls(load) if load is not None and replay is None else None
    live_view(replay=replay, elem_id="live-view")
    with gr.Accordion("Why a token costs what it costs: the KV-cache formula", open=False):
        gr.Markdown(kv_formula_markdown(info, model_name), elem_id="kv-formula")
    return line
