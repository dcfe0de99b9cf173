"""The dashboard tab: headline numbers, the block map and three time-series panels, refreshed by a
`gr.Timer`, plus the load generator's controls and the KV-formula panel.

Figures are built at most once per `ttl` seconds and shared by every open dashboard, so twenty
watching browsers cost the server what one does.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any

import gradio as gr

from engine.block_map import BlockMapSnapshot
from engine.engine_thread import EngineThread
from engine.metrics_history import HistoryView
from ui.kv_formula import kv_formula_markdown
from ui.load_generator import LoadGenerator, LoadRefused, LoadStatus
from ui.plots import (block_map_figure, kv_memory_figure, latency_figure, latency_summary, throughput_figure,
                      utilization_figure)
from ui.request_colors import RequestColors
from ui.utilization import UtilizationMonitor


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def token_rates(view: HistoryView, window_s: float = 3.0) -> tuple[float, float]:
    """(prefill, decode) tokens per second over the last `window_s` seconds."""
    points = [p for p in view.points if p.t >= view.now - window_s]
    return (sum(p.prefill_tokens for p in points) / window_s, sum(p.decode_tokens for p in points) / window_s)


def headline_markdown(view: HistoryView, bm: BlockMapSnapshot, load: LoadStatus, alive: bool) -> str:
    """One line of the numbers a presenter reads out."""
    s, lat = bm.stats, latency_summary(view)
    running = sum(1 for q in bm.seqs if q.running)
    prefill, decode = token_rates(view)
    snap = view.latest
    state = "engine **up**" if alive else "engine **DOWN**"
    parts = [state, f"**{running}** running · **{len(bm.seqs) - running}** waiting",
             f"KV **{s.used}/{s.total}** blocks ({100 * s.used / s.total:.0f}%), {s.shared} shared",
             f"decode **{decode:.0f}** tok/s · prefill {prefill:.0f} tok/s",
             f"TTFT p50 **{_ms(lat.ttft_p50)}** p95 {_ms(lat.ttft_p95)}",
             f"ITL p50 **{_ms(lat.itl_p50)}** p95 {_ms(lat.itl_p95)}"]
    if snap is not None:
        parts.append(f"{snap.total_generated_tokens:,} tokens generated · {snap.total_cached_tokens:,} prompt tokens"
                     f" from the prefix cache · {snap.total_preemptions} preemptions")
    parts.append(load.describe())
    return " · ".join(parts)


class DashboardData:
    """Caches one refresh's outputs for `ttl` seconds."""

    def __init__(self, engine: EngineThread, utilization: UtilizationMonitor, load: LoadGenerator, model_name: str,
                 ttl: float = 0.5) -> None:
        self.engine, self.utilization, self.load, self.ttl = engine, utilization, load, ttl
        self.model_name = model_name
        self.colors = RequestColors()  # a live request keeps its colour; no two live ones alike
        self._lock = threading.Lock()
        self._at = -math.inf
        self._outputs: tuple[Any, ...] = ()

    def refresh(self) -> tuple[Any, ...]:
        with self._lock:
            if time.perf_counter() - self._at >= self.ttl:
                self._outputs = self._build()
                self._at = time.perf_counter()
            return self._outputs

    def _build(self) -> tuple[Any, ...]:
        self.utilization.sample()
        view, bm = self.engine.history.view(), self.engine.block_map
        colors = self.colors.update(s.request_id for s in bm.seqs)
        return (headline_markdown(view, bm, self.load.status(), self.engine.alive), block_map_figure(bm, colors),
                kv_memory_figure(view), utilization_figure(self.utilization.view()), latency_figure(view),
                throughput_figure(view))


def _load_controls(load: LoadGenerator) -> None:
    """Slider and buttons (and a presenter-key box when the policy wants one). The handlers pass the
    caller's session and key to the load generator, which decides."""
    if load.policy.mode == "off":
        gr.Markdown("The load generator is turned off on this server.", elem_id="load-off")
        return
    minutes = load.policy.time_limit_s / 60
    gr.Markdown(f"Simulated users show up on the block map like real ones (their requests are `sim-...`). A load "
                f"belongs to the browser tab that started it: it stops when that tab closes, or after {minutes:g} "
                "minutes.")
    with gr.Row(equal_height=True):
        users = gr.Slider(1, load.MAX_USERS, value=8, step=1, label="Simulate N users", scale=3)
        key = gr.Textbox(label="Presenter key", type="password", scale=2, visible=load.policy.mode == "key",
                         elem_id="presenter-key")
        start = gr.Button("Start load", variant="primary", scale=1, elem_id="load-start")
        stop = gr.Button("Stop load", variant="stop", scale=1, elem_id="load-stop")

    def start_load(n: float, key: str, request: gr.Request) -> None:
        try:
            load.start(int(n), owner=request.session_hash or "", key=key or None)
        except LoadRefused as exc:
            gr.Warning(str(exc))

    def stop_load(key: str, request: gr.Request) -> None:
        try:
            load.stop(owner=request.session_hash or "", key=key or None)
        except LoadRefused as exc:
            gr.Warning(str(exc))

    start.click(start_load, inputs=[users, key], outputs=None, show_progress="hidden", api_visibility="private")
    stop.click(stop_load, inputs=[key], outputs=None, show_progress="hidden", api_visibility="private")


def build_dashboard(data: DashboardData, tick_s: float = 1.0) -> gr.Timer:
    """Render the dashboard in the current Blocks context; returns its (inactive) timer."""
    _load_controls(data.load)
    headline = gr.Markdown(elem_id="headline")
    block_map = gr.Plot(label="Block map", elem_id="plot-block-map")
    with gr.Row():
        kv = gr.Plot(label="KV memory", elem_id="plot-kv-memory")
        util = gr.Plot(label="Utilization", elem_id="plot-utilization")
    with gr.Row():
        latency = gr.Plot(label="Latency", elem_id="plot-latency")
        throughput = gr.Plot(label="Throughput", elem_id="plot-throughput")
    with gr.Accordion("Why a token costs what it costs: the KV-cache formula", open=True):
        gr.Markdown(kv_formula_markdown(data.engine.info, data.model_name), elem_id="kv-formula")
    timer = gr.Timer(tick_s, active=False)
    timer.tick(data.refresh, inputs=None, outputs=[headline, block_map, kv, util, latency, throughput],
               show_progress="hidden", queue=True, api_visibility="private")
    return timer
