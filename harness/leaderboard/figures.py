"""The per-model figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas
(no pyplot, no global state, no display needed)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from harness.leaderboard.columns import MITIGATION, PERPLEXITY, STATE_STATS
from harness.leaderboard.tables import HeadChoice, Heatmap, token_label

DPI = 100
PANEL_COLUMNS = 3  # mitigations side by side, then wrapped
ANNOTATE_CELLS = 150  # heatmaps with at most this many cells print their values
HEATMAP_COLORS = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgray")


@dataclass(frozen=True)
class Plot:
    name: str  # file stem, e.g. "passkey-heatmap"
    title: str
    png: bytes


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def panels(count: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure with `count` panels in rows of PANEL_COLUMNS; unused panels hidden."""
    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows + 0.6), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def token_axis(axis: Axes) -> None:
    """A log2 position axis labelled 1K, 2K, 4K..."""
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: token_label(x)))


def passkey_heatmap(model: str, heatmaps: dict[str, Heatmap]) -> Plot:
    """Accuracy by needle depth (y, 0% at the top) and length (x), red to green, one panel
    per mitigation titled with its sample count; grey where nothing was tested."""
    figure, axes = panels(len(heatmaps), 4.6, 3.6)
    image = None
    for axis, (mitigation, heatmap) in zip(axes, heatmaps.items(), strict=True):
        grid = heatmap.accuracy
        values = grid.to_numpy(dtype=float)
        image = axis.imshow(values, cmap=HEATMAP_COLORS, vmin=0, vmax=1, aspect="auto")
        axis.set_xticks(range(grid.shape[1]), [token_label(n) for n in grid.columns])
        axis.set_yticks(range(grid.shape[0]), [str(label) for label in grid.index])
        axis.set(xlabel="context length (tokens)", ylabel="needle depth")
        axis.set_title(f"{mitigation} ({heatmap.samples} samples)")
        if values.size <= ANNOTATE_CELLS:
            annotate(axis, values)
    figure.colorbar(image, ax=axes, label="passkey accuracy")
    figure.suptitle(f"{model}: passkey accuracy by depth and length")
    return Plot("passkey-heatmap", "passkey accuracy by depth and length", to_png(figure))


def annotate(axis: Axes, values: np.ndarray) -> None:
    for (y, x), value in np.ndenumerate(values):
        if np.isfinite(value):
            color = "black" if 0.2 <= value <= 0.85 else "white"  # readable on the colour
            axis.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)


def loss_by_position(model: str, curves: pd.DataFrame, context: float) -> Plot:
    """Perplexity per position bucket, one line per mitigation (and source), the training
    length marked."""
    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    axis = figure.add_subplot()
    several = curves[PERPLEXITY.source].nunique() > 1
    for (mitigation, source), curve in curves.groupby([MITIGATION, PERPLEXITY.source]):
        label = f"{mitigation} ({source})" if several else mitigation
        axis.plot(curve["position"], curve["perplexity"], marker=".", label=label)
    mark_context(axis, context)
    axis.set(yscale="log", xlabel="position (tokens)", ylabel="perplexity")
    token_axis(axis)
    axis.legend(fontsize=8)
    axis.set_title(f"{model}: perplexity by position")
    return Plot("loss-by-position", "perplexity by position", to_png(figure))


def mark_context(axis: Axes, context: float) -> None:
    if math.isfinite(context):
        label = f"training length {token_label(context)}"
        axis.axvline(context, color="black", linestyle="--", linewidth=1, label=label)


def state_norms(model: str, norms: pd.DataFrame, choice: HeadChoice, context: float) -> Plot:
    """State norm by position of the chosen (layer, head)s, one panel per mitigation (and
    source, when there are several)."""
    s = STATE_STATS
    several = norms[s.source].nunique() > 1
    groups = list(norms.groupby([MITIGATION, s.source]))
    figure, axes = panels(len(groups), 4.6, 3.6)
    for axis, ((mitigation, source), own) in zip(axes, groups, strict=True):
        for layer, head in choice.heads:
            line = own[(own[s.layer] == layer) & (own[s.head] == head)].sort_values(s.position)
            axis.plot(line[s.position], line[s.norm], label=f"layer {layer} head {head}")
        mark_context(axis, context)
        title = f"{mitigation} ({source})" if several else mitigation
        axis.set(title=title, yscale="log", xlabel="position (tokens)", ylabel="state norm")
        token_axis(axis)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{model}: state norm of the {choice.what}")
    return Plot("state-norms", f"state norm of the {choice.what}", to_png(figure))
