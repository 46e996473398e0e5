"""The leaderboard as files: leaderboard.md, leaderboard.csv, index.html and figures/*.png.

The CSV keeps raw numbers (acc_<L> and n_<L> side by side); Markdown and HTML show formatted
text. index.html is self-contained: inline CSS, a few lines of JS that sort the table when a
header is clicked (or on load, from '#sort=<column>:asc' or ':desc'), figures embedded as
base64 PNG; it loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from harness.leaderboard.build import Leaderboard
from harness.leaderboard.columns import (
    FIT_COLUMNS,
    PARAMS,
    STATE_CAPACITY,
    STATE_SIZE,
    TRAIN_CONTEXT,
)
from harness.leaderboard.figures import Plot
from harness.leaderboard.tables import ACC, EFFECTIVE, N, token_label

TOKEN_COLUMNS = {
    TRAIN_CONTEXT,
    EFFECTIVE,
    STATE_CAPACITY.collapse_length,
    STATE_CAPACITY.searched_to,
    STATE_CAPACITY.recall_length,
}
COUNT_COLUMNS = {PARAMS, STATE_SIZE}
FAILURE_COLUMNS = ["table", "model", "mitigation", "status", "message", "unit_id", "run_id"]
FITS_NOTE = (
    "From the state-capacity rows of every model, per mitigation: T_forget = a N_S + b and "
    "T_recall = b (a^N_S - 1) + c, T in K tokens, N_S in the paper's M state elements; "
    "paper_* are Stuffed Mamba's coefficients."
)

SCRIPT = """
function sortTable(table, column, ascending) {
  const key = (row) => {
    const cell = row.cells[column];
    const text = cell.dataset.sort ?? cell.textContent;
    const number = Number(text);
    return text === "" ? null : Number.isNaN(number) ? text : number;
  };
  const compare = (a, b) => {
    const [x, y] = [key(a), key(b)];
    if (x === null || y === null) return (x === null) - (y === null);
    if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
    const order = x < y ? -1 : x > y ? 1 : 0;
    return ascending ? order : -order;
  };
  const body = table.tBodies[0];
  Array.from(body.rows).sort(compare).forEach((row) => body.appendChild(row));
  for (const th of table.tHead.rows[0].cells) delete th.dataset.order;
  table.tHead.rows[0].cells[column].dataset.order = ascending ? "asc" : "desc";
}
for (const table of document.querySelectorAll("table.sortable")) {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, column) =>
    th.addEventListener("click", () => sortTable(table, column, th.dataset.order !== "asc")));
  const wanted = decodeURIComponent(location.hash).match(/^#sort=([^:]+):?(asc|desc)?$/);
  const column = wanted ? headers.findIndex((th) => th.dataset.column === wanted[1]) : -1;
  if (column >= 0) sortTable(table, column, wanted[2] !== "desc");
}
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
td:nth-child(-n+3) { text-align: left; }
thead th { background: #f0f0f0; cursor: pointer; position: sticky; top: 0; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafafa; }
.scroll { overflow-x: auto; }
.warnings { background: #fff6e0; border: 1px solid #e0b040; padding: 0.5em 1em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def definitions(board: Leaderboard) -> list[str]:
    threshold = board.options.threshold
    return [
        f"effective length: the largest tested length L such that every length up to L that "
        f"was attempted has passkey accuracy >= {threshold:g}; a failed unit (oom, "
        "nonfinite, error) counts as not passing; 0 when the shortest length fails.",
        "acc L (n): passkey accuracy at L tokens, and the number of samples behind it.",
        "ppl mx: perplexity (token-weighted over documents) of the position bucket holding "
        "token m x the training length, from the longest unit of each source (named in the "
        "column when there are several); ppl documents: the documents behind those numbers.",
        "Rows with status other than ok are left out of every number and figure; they are "
        "counted in failed units and listed under Failed units.",
        "Settings (dtype, seed, unit parameters) are never mixed within one cell (model, "
        "mitigation and unit: a passkey length, a perplexity source and length): the newest "
        "setting is kept, the others are dropped and named under Warnings.",
    ]


def header(column: str) -> str:
    if column.startswith(ACC):
        return f"acc {column[len(ACC) :]} (n)"
    return column.replace("_", " ")


def shown_columns(main: pd.DataFrame) -> list[str]:
    """Every column but those shown inside others: the n_<L> sample counts (in acc_<L>) and
    how far a collapse was searched (in collapse_length)."""
    return [
        c
        for c in main.columns
        if c != STATE_CAPACITY.searched_to and not (c.startswith(N) and ACC + c[len(N) :] in main)
    ]


def missing(value: object) -> bool:
    return bool(pd.isna(value))


def count_label(value: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def cell_text(row: pd.Series, column: str) -> str:
    value = row[column]
    searched = row.get(STATE_CAPACITY.searched_to)
    if column == STATE_CAPACITY.collapse_length and missing(value) and not missing(searched):
        return f"none to {token_label(float(searched))}"
    if missing(value):
        return ""
    if column.startswith(ACC):
        samples = row.get(N + column[len(ACC) :])
        return f"{value:.2f}" + ("" if missing(samples) else f" ({samples:.0f})")
    if column in TOKEN_COLUMNS:
        return token_label(float(value))
    if column in COUNT_COLUMNS:
        return count_label(float(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sort_key(value: object) -> str:
    """The raw number behind a cell, or its text; '' when empty (sorted last)."""
    if missing(value):
        return ""
    return repr(float(value)) if isinstance(value, int | float) else str(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def figure_paths(board: Leaderboard) -> Iterator[tuple[str, Plot, str]]:
    """(model, plot, path relative to the output folder) of every figure."""
    for model, plots in board.plots.items():
        for plot in plots:
            yield model, plot, f"figures/{slug(model)}-{plot.name}.png"


def to_csv(board: Leaderboard) -> str:
    return board.main.to_csv(index=False)


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(columns), line(["---"] * len(columns)), *(line(r) for r in rows)]


def to_markdown(board: Leaderboard) -> str:
    columns = shown_columns(board.main)
    rows = [[cell_text(row, c) for c in columns] for _, row in board.main.iterrows()]
    lines = [
        "# Leaderboard",
        "",
        f"From `{board.source}`, built {board.created:%Y-%m-%d %H:%M} UTC; "
        f"passkey threshold {board.options.threshold:g}.",
        "",
    ]
    if board.warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in board.warnings), ""]
    lines += [*markdown_table([header(c) for c in columns], rows), ""]
    lines += ["## How to read it", "", *(f"- {d}" for d in definitions(board)), ""]
    current = None
    for model, plot, path in figure_paths(board):
        if model != current:
            lines += [f"## {model}", ""]
            current = model
        lines += [f"![{model}: {plot.title}]({path})", ""]
    if len(board.fits):
        lines += ["## Fits against state size", "", FITS_NOTE, ""]
        lines += [*markdown_table(list(FIT_COLUMNS), fit_cells(board)), ""]
    if len(board.failures):
        lines += ["## Failed units", "", *markdown_table(FAILURE_COLUMNS, failure_cells(board)), ""]
    return "\n".join(lines) + "\n"


def html_table(board: Leaderboard) -> str:
    columns = shown_columns(board.main)
    head = "".join(
        f'<th data-column="{html.escape(c)}">{html.escape(header(c))}</th>' for c in columns
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td data-sort="{html.escape(sort_key(row[c]))}">{html.escape(cell_text(row, c))}</td>'
            for c in columns
        )
        + "</tr>\n"
        for _, row in board.main.iterrows()
    )
    return (
        f'<div class="scroll"><table class="sortable" id="leaderboard"><thead><tr>{head}</tr>'
        f"</thead><tbody>\n{body}</tbody></table></div>"
    )


def html_figures(board: Leaderboard) -> str:
    parts = []
    for model, plots in board.plots.items():
        parts.append(f"<h2>{html.escape(model)}</h2>")
        for plot in plots:
            data = base64.b64encode(plot.png).decode("ascii")
            title = html.escape(f"{model}: {plot.title}")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{title}">'
                f"<figcaption>{title}</figcaption></figure>"
            )
    return "\n".join(parts)


def failure_cells(board: Leaderboard) -> list[list[str]]:
    failed = board.failures.reindex(columns=FAILURE_COLUMNS)
    return [["" if missing(v) else str(v) for v in row] for row in failed.itertuples(index=False)]


def fit_cells(board: Leaderboard) -> list[list[str]]:
    return [
        ["" if missing(v) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        for row in board.fits.itertuples(index=False)
    ]


def html_section(
    title: str, note: str, table_id: str, columns: list[str], cells: list[list[str]]
) -> str:
    """A titled, sortable table of plain cells; nothing when there are no rows."""
    if not cells:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in cells
    )
    paragraph = f"<p>{html.escape(note)}</p>" if note else ""
    return (
        f'<h2>{html.escape(title)}</h2>{paragraph}<table class="sortable" id="{table_id}">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def to_html(board: Leaderboard) -> str:
    warnings = ""
    if board.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in board.warnings)
        warnings = f'<section class="warnings"><h2>Warnings</h2><ul>{items}</ul></section>'
    notes = "".join(f"<li>{html.escape(d)}</li>" for d in definitions(board))
    source = html.escape(str(board.source))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Leaderboard</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Leaderboard</h1>
<p>From <code>{source}</code>, built {board.created:%Y-%m-%d %H:%M} UTC; passkey threshold
{board.options.threshold:g}. Click a column header to sort.</p>
{warnings}
{html_table(board)}
<h2>How to read it</h2>
<ul>{notes}</ul>
{html_figures(board)}
{html_section("Fits against state size", FITS_NOTE, "fits", list(FIT_COLUMNS), fit_cells(board))}
{html_section("Failed units", "", "failures", FAILURE_COLUMNS, failure_cells(board))}
<script>{SCRIPT}</script>
</body>
</html>
"""


def write_leaderboard(board: Leaderboard, out: Path) -> list[Path]:
    """Write every output under `out`; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for _, plot, relative in figure_paths(board):
        path = out / relative
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(plot.png)
        written.append(path)
    for name, text in (
        ("leaderboard.md", to_markdown(board)),
        ("leaderboard.csv", to_csv(board)),
        ("index.html", to_html(board)),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
