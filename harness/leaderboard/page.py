"""index.html: one self-contained page (inline CSS, figures as base64 PNG, nothing loaded from
the network) laid out for a laptop screen (1366x768): the main table's long names wrap (a name
longer than 40 characters loses its middle), with the full text on hover; provenance has its
own table. A few lines of JS sort a table when a header is clicked (or on load, from
'#sort=<column>:asc' or ':desc'); whatever the cells or the address hold, sorting never throws.
"""

from __future__ import annotations

import base64
import html
import math
import re

import pandas as pd

from harness.leaderboard.build import Leaderboard
from harness.leaderboard.columns import FIT_COLUMNS, MITIGATION, MODEL
from harness.leaderboard.figures import Plot
from harness.leaderboard.lm_eval import SCORE
from harness.leaderboard.render import (
    CLIFF_TITLE,
    FAILURE_COLUMNS,
    FITS_NOTE,
    PROVENANCE_NOTE,
    cell_text,
    definitions,
    failure_cells,
    fit_cells,
    header,
    missing,
    plain_cells,
    provenance_columns,
    shown_columns,
    sort_key,
)
from harness.leaderboard.tables import ACC, LOGP, ROW_STATUS

NAME_COLUMNS = (MODEL, MITIGATION)  # wrapped, the full text in a tooltip
LONGEST_NAME = 40  # characters shown of a longer name: its start, an ellipsis, its end
NAME_HEAD = 12  # characters kept at the start of an abbreviated name (the rest at its end)
BREAK_AFTER = re.compile(r"(?<=[:/@_,+])")  # where a long name may wrap

SCRIPT = """
function cellKey(row, column) {
  const cell = row.cells[column];
  if (!cell) return null;
  const text = (cell.dataset.sort ?? cell.textContent).trim();
  if (text === "") return null;
  const number = Number(text);
  return Number.isNaN(number) ? text : number;
}
function compareKeys(x, y, ascending) {
  if (x === null || y === null) return (x === null) - (y === null);  // blanks last
  if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;  // numbers before text
  const order = x < y ? -1 : x > y ? 1 : 0;
  return ascending ? order : -order;
}
function sortTable(table, column, ascending) {
  const body = table.tBodies[0];
  const head = table.tHead ? table.tHead.rows[0] : null;
  if (!body || !head || !head.cells[column]) return;
  const rows = Array.from(body.rows);
  rows.sort((a, b) => compareKeys(cellKey(a, column), cellKey(b, column), ascending));
  rows.forEach((row) => body.appendChild(row));
  for (const th of head.cells) delete th.dataset.order;
  head.cells[column].dataset.order = ascending ? "asc" : "desc";
}
function wantedSort() {
  try {
    const found = decodeURIComponent(location.hash).match(/^#sort=(.+?)(?::(asc|desc))?$/);
    return found ? { column: found[1], ascending: found[2] !== "desc" } : null;
  } catch (error) {
    return null;  // a malformed address sorts nothing
  }
}
const wanted = wantedSort();
for (const table of document.querySelectorAll("table.sortable")) {
  if (!table.tHead || !table.tHead.rows.length) continue;
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, column) =>
    th.addEventListener("click", () => sortTable(table, column, th.dataset.order !== "asc")));
  const column = wanted ? headers.findIndex((th) => th.dataset.column === wanted.column) : -1;
  if (column >= 0) sortTable(table, column, wanted.ascending);
}
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 1.5em; color: #222; }
h1 { margin: 0.2em 0; }
table { border-collapse: collapse; font-size: 12.5px; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 5px; text-align: right; }
td { white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; vertical-align: bottom; font-weight: 600; }
th.name, td.name { text-align: left; }
td.name div { white-space: normal; min-width: 9em; max-width: 14em; overflow-wrap: break-word; }
td.status { white-space: normal; min-width: 4em; }
#leaderboard tr > :first-child { position: sticky; left: 0; z-index: 1; }  /* many lengths scroll */
#leaderboard td:first-child { background: inherit; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
tbody tr { background: #fff; }
tbody tr:nth-child(even) { background: #fafafa; }
td.failed { color: #a00; font-weight: 600; }
table.plain th, table.plain td { text-align: left; white-space: normal; }
.scroll { overflow-x: auto; }
.warnings { background: #fff6e0; border: 1px solid #e0b040; padding: 0.3em 1em; }
.warnings h2 { font-size: 1.1em; margin: 0.4em 0; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 100%; }
img { max-width: 100%; border: 1px solid #ddd; }
ul { line-height: 1.35; }
"""


def abbreviated(text: str) -> str:
    """A name of at most LONGEST_NAME characters: a longer one loses its middle."""
    if len(text) <= LONGEST_NAME:
        return text
    return text[:NAME_HEAD] + "\u2026" + text[NAME_HEAD - LONGEST_NAME + 1 :]


def wrappable(text: str) -> str:
    """Escaped text that may wrap after the separators of specs and paths."""
    return "<wbr>".join(html.escape(piece) for piece in BREAK_AFTER.split(text))


def shade(row: pd.Series, column: str, chance: float) -> str:
    """The background of a passkey cell: accuracy red (0) to green (1); a key log-probability
    green above the chance level, red below, stronger the farther from it."""
    value = row[column]
    if missing(value):
        return ""
    if column.startswith(ACC) or (column.startswith(SCORE) and 0.0 <= float(value) <= 1.0):
        return f' style="background: hsl({120 * float(value):.0f}, 65%, 85%)"'
    if column.startswith(LOGP) and math.isfinite(chance) and chance < 0:
        distance = max(-1.0, min(1.0, (float(value) - chance) / -chance))
        hue = 120 if distance >= 0 else 0
        return f' style="background: hsla({hue}, 65%, 70%, {abs(distance):.2f})"'
    return ""


def main_cell(row: pd.Series, column: str, chance: float) -> str:
    text = cell_text(row, column)
    sort = html.escape(sort_key(row[column]))
    if column in NAME_COLUMNS:
        full, wrapped = html.escape(text), wrappable(abbreviated(text))
        return f'<td class="name" data-sort="{sort}" title="{full}"><div>{wrapped}</div></td>'
    kind = ' class="failed"' if text == "failed" else ""
    if column == ROW_STATUS:
        kind = ' class="status"'
    return f'<td data-sort="{sort}"{kind}{shade(row, column, chance)}>{html.escape(text)}</td>'


def main_table(board: Leaderboard) -> str:
    columns = shown_columns(board.main)
    head = "".join(
        f'<th data-column="{html.escape(c)}"'
        + (' class="name"' if c in NAME_COLUMNS else "")
        + f">{html.escape(header(c)).replace('log p', 'log&nbsp;p')}</th>"
        for c in columns
    )
    body = "".join(
        "<tr>" + "".join(main_cell(row, c, board.chance) for c in columns) + "</tr>\n"
        for _, row in board.main.iterrows()
    )
    return (
        f'<div class="scroll"><table class="sortable" id="leaderboard"><thead><tr>{head}</tr>'
        f"</thead><tbody>\n{body}</tbody></table></div>"
    )


def figure(title: str, plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    caption = html.escape(title)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def overview(board: Leaderboard) -> str:
    if not board.overview:
        return ""
    return f"<h2>{CLIFF_TITLE}</h2>" + "".join(figure(p.title, p) for p in board.overview)


def model_figures(board: Leaderboard) -> str:
    parts = []
    for model, plots in board.plots.items():
        parts.append(f"<h2>{html.escape(model)}</h2>")
        parts += [figure(f"{model}: {plot.title}", plot) for plot in plots]
    return "\n".join(parts)


def section(
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
        f'<h2>{html.escape(title)}</h2>{paragraph}<div class="scroll">'
        f'<table class="sortable plain" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def to_html(board: Leaderboard) -> str:
    warnings = ""
    if board.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in board.warnings)
        warnings = f'<section class="warnings"><h2>Warnings</h2><ul>{items}</ul></section>'
    notes = "".join(f"<li>{html.escape(d)}</li>" for d in definitions(board))
    source = html.escape(str(board.source))
    provenance = provenance_columns(board.main)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Leaderboard</title>
<style>{STYLE}</style>
</head>
<body>
<h1>Leaderboard</h1>
<p>From <code>{source}</code>, built {board.created:%Y-%m-%d %H:%M} UTC; passkey threshold
{board.options.threshold:g}. Click a column header to sort; hover a name for its full text.</p>
{warnings}
{main_table(board)}
{overview(board)}
<h2>How to read it</h2>
<ul>{notes}</ul>
{model_figures(board)}
{
        section(
            "Provenance",
            PROVENANCE_NOTE,
            "provenance",
            [header(c) for c in provenance],
            plain_cells(board, provenance),
        )
    }
{section("Fits against state size", FITS_NOTE, "fits", list(FIT_COLUMNS), fit_cells(board))}
{section("Failed units", "", "failures", FAILURE_COLUMNS, failure_cells(board))}
<script>{SCRIPT}</script>
</body>
</html>
"""
