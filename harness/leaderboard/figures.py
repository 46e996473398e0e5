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

from harness.leaderboard.columns import MITIGATION, MODEL, PERPLEXITY, STATE_STATS
from harness.leaderboard.tables import HeadChoice, Heatmap, token_label

DPI = 100
PANEL_COLUMNS = 3  # mitigations side by side, then wrapped
ANNOTATE_CELLS = 150  # heatmaps with at most this many cells print their values
HEATMAP_COLORS = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgray")
CLIFF = "passkey-by-length"  # the file stem of the all-models figure
MIN_WIDTH = 7.0  # inches: a one-panel figure still has room for its title
# A value axis spans at least this share of its middle value: a constant curve with float
# noise is drawn flat, not magnified into a zigzag over the whole axis.
MIN_SPAN = 0.05
LOG_RATIO = 10.0  # values spanning a larger ratio than this get a log axis
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@dataclass(frozen=True)
class Plot:
    name: str  # file stem, e.g. "passkey-heatmap"
    title: str
    png: bytes


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")  # whole legends
    return buffer.getvalue()


def panels(count: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure with `count` panels in rows of PANEL_COLUMNS; unused panels hidden."""
    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    size = (max(width * columns, MIN_WIDTH), height * rows + 0.6)
    figure = Figure(figsize=size, layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def token_axis(axis: Axes) -> None:
    """A log2 position axis labelled 1K, 2K, 4K..."""
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: token_label(x)))


def value_axis(axis: Axes, values: pd.Series | np.ndarray) -> None:
    """A y axis for positive values: log when they span more than LOG_RATIO, else linear and
    at least MIN_SPAN of their middle value high; plain numbers as tick labels."""
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array) & (array > 0)]
    if len(finite):
        low, high = float(finite.min()), float(finite.max())
        if high / low > LOG_RATIO:
            axis.set_yscale("log")
        else:
            middle = (low + high) / 2
            half = max((high - low) / 2 * 1.1, middle * MIN_SPAN / 2)
            axis.set_ylim(middle - half, middle + half)
    plain = FuncFormatter(lambda y, _: f"{y:.4g}")
    axis.yaxis.set_major_formatter(plain)
    axis.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))


def passkey_heatmap(model: str, heatmaps: dict[str, Heatmap]) -> Plot:
    """Accuracy by needle depth (y, 0% at the top) and length (x), red to green, one panel
    per mitigation titled with its sample count; grey where nothing was tested. Each cell
    prints its accuracy over the mean key log-probability."""
    figure, axes = panels(len(heatmaps), 4.6, 3.6)
    image = None
    for axis, (mitigation, heatmap) in zip(axes, heatmaps.items(), strict=True):
        grid = heatmap.accuracy
        values = grid.to_numpy(dtype=float)
        image = axis.imshow(values, cmap=HEATMAP_COLORS, vmin=0, vmax=1, aspect="auto")
        axis.set_xticks(range(grid.shape[1]), [token_label(n) for n in grid.columns])
        axis.set_yticks(range(grid.shape[0]), [str(label) for label in grid.index])
        axis.set(xlabel="context length (tokens)", ylabel="needle depth")
        axis.set_title(f"{mitigation} ({heatmap.samples} samples in all)")
        if values.size <= ANNOTATE_CELLS:
            logprob = heatmap.logprob
            annotate(axis, values, None if logprob is None else logprob.to_numpy(dtype=float))
    figure.colorbar(image, ax=axes, label="passkey accuracy")
    below = "" if all(h.logprob is None for h in heatmaps.values()) else " (below: key log p)"
    figure.suptitle(f"{model}: passkey accuracy by depth and length{below}")
    return Plot("passkey-heatmap", "passkey accuracy by depth and length", to_png(figure))


def annotate(axis: Axes, values: np.ndarray, logprob: np.ndarray | None) -> None:
    """Each tested cell's accuracy, and below it the mean key log-probability when given."""
    for (y, x), value in np.ndenumerate(values):
        if np.isfinite(value):
            color = "black" if 0.2 <= value <= 0.85 else "white"  # readable on the colour
            text = f"{value:.2f}"
            if logprob is not None and np.isfinite(logprob[y, x]):
                text += f"\n{logprob[y, x]:.1f}"
            axis.text(x, y, text, ha="center", va="center", fontsize=7, color=color)


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
    axis.set(xlabel="position (tokens)", ylabel="perplexity")
    value_axis(axis, curves["perplexity"])
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
        axis.set(title=title, xlabel="position (tokens)", ylabel="state norm")
        value_axis(axis, own[s.norm])
        token_axis(axis)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{model}: state norm of the {choice.what}")
    return Plot("state-norms", f"state norm of the {choice.what}", to_png(figure))


def length_cliff(points: pd.DataFrame, chance: float) -> Plot:
    """Passkey accuracy (left) and mean key log-probability (right) against length over the
    training length, every model and mitigation on the same axes: a colour per model, a line
    style and marker per mitigation, the training length and the chance level marked."""
    models = list(dict.fromkeys(points[MODEL]))
    mitigations = list(dict.fromkeys(points[MITIGATION]))
    lines = len(points.groupby([MODEL, MITIGATION]))
    columns = 1 if lines <= 4 else 2 if lines <= 12 else 3
    legend_height = 0.22 * math.ceil(lines / columns) + 0.3
    figure = Figure(figsize=(12, 4.4 + legend_height), layout="constrained")
    accuracy, logprob = figure.subplots(1, 2)
    colors = matplotlib.colormaps["tab10" if len(models) <= 10 else "tab20"].colors
    for (model, mitigation), line in points.groupby([MODEL, MITIGATION], sort=False):
        line = line.sort_values("ratio")
        style = mitigations.index(mitigation)
        look = {
            "color": colors[models.index(model) % len(colors)],
            "linestyle": LINE_STYLES[style % len(LINE_STYLES)],
            "marker": MARKERS[style % len(MARKERS)],
            "alpha": 0.85,
            "label": f"{model} / {mitigation}",
        }
        accuracy.plot(line["ratio"], line["accuracy"], **look)
        logprob.plot(line["ratio"], line["logprob"], **look)
    for axis in (accuracy, logprob):
        axis.set_xscale("log", base=2)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
        axis.axvline(1.0, color="black", linestyle="--", linewidth=1)
        axis.set_xlabel("length / training length (dashed: the training length)")
    accuracy.set(ylim=(-0.04, 1.04), ylabel="passkey accuracy", title="passkey accuracy")
    logprob.set(ylabel="mean log-probability of the key", title="key log-probability")
    if math.isfinite(chance):
        logprob.axhline(chance, color="gray", linestyle=":", linewidth=1.5)
        logprob.annotate(
            f"uniform guess ({chance:.1f})",
            (0.01, chance),
            xycoords=("axes fraction", "data"),
            va="bottom",
            fontsize=8,
            color="dimgray",
        )
    handles, labels = accuracy.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", fontsize=8, ncols=columns)
    figure.suptitle("Passkey retrieval against length over the training length, every model")
    return Plot(CLIFF, "passkey accuracy and key log-probability by length", to_png(figure))
