"""Pure plot builders: a snapshot or history view in, a Plotly figure out. No Gradio, no engine state."""
from ui.plots.block_map import BlockCell, block_cells, block_map_figure, grid_columns
from ui.plots.common import percentile, request_color
from ui.plots.kv_memory import kv_memory_figure
from ui.plots.latency import LatencySummary, latency_figure, latency_summary, throughput_figure
from ui.plots.utilization import utilization_figure

__all__ = ["BlockCell", "LatencySummary", "block_cells", "block_map_figure", "grid_columns", "kv_memory_figure",
           "latency_figure", "latency_summary", "percentile", "request_color", "throughput_figure",
           "utilization_figure"]
