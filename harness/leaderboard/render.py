"""The leaderboard's texts: cell formatting, leaderboard.md and leaderboard.csv (index.html is
page.py's, write.py writes them all with the figures).

The CSV keeps raw numbers (acc_<L>, n_<L> and logp_<L> side by side, provenance last);
Markdown and HTML show formatted text, the provenance in a table of its own. Every text a
result can carry (a model name, a mitigation spec, a message) is escaped for its format:
Markdown punctuation and HTML in leaderboard.md, HTML in index.html (page.py), and in the CSV
a text cell that a spreadsheet would run as a formula (starting with = + - @, a tab or a
carriage return) gets a leading apostrophe.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator

import pandas as pd

from harness.leaderboard.build import Leaderboard
from harness.leaderboard.columns import (
    FIT_COLUMNS,
    MITIGATION,
    MODEL,
    MODEL_ID,
    PARAMS,
    STATE_CAPACITY,
    STATE_SIZE,
    TRAIN_CONTEXT,
)
from harness.leaderboard.figures import Plot
from harness.leaderboard.lm_eval import DOCS, SCORE
from harness.leaderboard.tables import (
    ACC,
    EFFECTIVE,
    FAILED,
    LOGP,
    PASSKEY_N,
    PROVENANCE,
    ROW_STATUS,
    N,
    RowStatus,
    token_label,
)

TOKEN_COLUMNS = {
    TRAIN_CONTEXT,
    EFFECTIVE,
    STATE_CAPACITY.collapse_length,
    STATE_CAPACITY.searched_to,
    STATE_CAPACITY.recall_length,
}
COUNT_COLUMNS = {PARAMS, STATE_SIZE}
HEADERS = {
    TRAIN_CONTEXT: "trained at",
    FAILED: "failed units",
    MODEL_ID: "model id",
    "ppl_documents": "ppl docs",
}
FAILURE_COLUMNS = ["table", "model", "mitigation", "status", "message", "unit_id", "run_id"]
FITS_NOTE = (
    "From the state-capacity rows of every model, per mitigation: T_forget = a N_S + b and "
    "T_recall = b (a^N_S - 1) + c, T in K tokens, N_S in the paper's M state elements; "
    "paper_* are Stuffed Mamba's coefficients."
)
PROVENANCE_NOTE = "Where the numbers of each row come from (every distinct value)."
CLIFF_TITLE = "The length cliff: every model on one plot"
SLUG_CHARACTERS = 60  # of a model name in a figure's file name (the hash keeps it unique)
HASH_CHARACTERS = 8
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet runs as a formula
# What can start Markdown or HTML inside a line: an underscore only beside a non-alphanumeric
# (CommonMark never opens emphasis inside a word), so names and paths stay readable.
MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>|~&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def definitions(board: Leaderboard) -> list[str]:
    threshold = board.options.threshold
    return [
        "status (shown when some unit failed): ok, partial (some units failed) or failed "
        "(every unit of the row failed: it has no numbers); the number of failed units in "
        "brackets, each listed under Failed units.",
        f"effective length: the largest tested length L such that every length up to L that "
        f"was attempted has passkey accuracy >= {threshold:g}; a failed unit (oom, "
        "nonfinite, error) counts as not passing; 0 when the shortest length fails; 'failed' "
        "when no passkey unit of the row ran.",
        "passkey L: samples whose greedy output held the key / samples, at L tokens; "
        "log p L: the mean log-probability of the key under teacher forcing (a graded signal "
        "while few keys are exact: a uniform guess among 5-digit keys is -11.5, far below it "
        "is confidently wrong). In the page, green is better than chance, red worse.",
        "ppl mx: perplexity (token-weighted over documents) of the position bucket holding "
        "token m x the training length, from the longest unit of each source (named in the "
        "column when there are several); ppl docs: the documents behind those numbers.",
        "lm-eval T L: the mean over the documents of lm-eval task T at L tokens of the metric "
        "named by the length (lm-eval's RULER convention), or of acc, else the first numeric "
        "metric, for tasks without lengths (lm-eval's own aggregate wherever it is a mean); "
        "the documents in brackets. One figure per task draws it against length.",
        "Rows with status other than ok are left out of every number and figure; they are "
        "counted in failed units and listed under Failed units.",
        "Settings (dtype, seed, unit parameters) are never mixed within one cell (model, "
        "mitigation and unit: a passkey length, a perplexity source and length): the newest "
        "setting is kept, the others are dropped and named under Warnings.",
        "A model is one checkpoint: when one name has results of several checkpoints "
        "(model_id), each is shown apart as name@id and named under Warnings.",
    ]


def header(column: str) -> str:
    if column.startswith(ACC):
        return f"passkey {column[len(ACC) :]}"
    if column.startswith(LOGP):
        return f"log p {column[len(LOGP) :]}"
    if column.startswith(SCORE):
        return f"lm-eval {column[len(SCORE) :].replace('@', ' ')}"
    return HEADERS.get(column, column.replace("_", " "))


def shown_columns(main: pd.DataFrame) -> list[str]:
    """The main table's columns as shown: not the provenance (a table of its own), nor what
    other cells show: the n_<L> sample counts (in acc_<L>), the passkey samples (their sum),
    the failed units (in the status) and how far a collapse was searched (in
    collapse_length); the status only when some row is not ok."""
    hidden = {STATE_CAPACITY.searched_to, PASSKEY_N, *PROVENANCE, *documents(main)}
    if ROW_STATUS in main.columns:
        hidden.add(FAILED)  # shown in the status
        if (main[ROW_STATUS] == RowStatus.OK).all():
            hidden.add(ROW_STATUS)  # nothing failed: the column would only say ok
    return [
        c
        for c in main.columns
        if c not in hidden
        and not (c.startswith(N) and ACC + c[len(N) :] in main)
        and not (c.startswith(DOCS) and SCORE + c[len(DOCS) :] in main)
    ]


def documents(main: pd.DataFrame) -> list[str]:
    """The perplexity documents columns (ppl_documents, ppl_<source>_documents)."""
    return [c for c in main.columns if c.startswith("ppl_") and c.endswith("_documents")]


def provenance_columns(main: pd.DataFrame) -> list[str]:
    """The provenance table's columns: the row, where its numbers come from, and how many
    perplexity documents are behind them."""
    found = [c for c in PROVENANCE if c in main.columns]
    return [MODEL, MITIGATION, *documents(main), *found]


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
    if column == EFFECTIVE and missing(value) and row.get(ROW_STATUS) == RowStatus.FAILED:
        return "failed"
    if missing(value):
        return ""
    if column == ROW_STATUS and value != RowStatus.OK:
        failed = f"{row.get(FAILED, 0):.0f}"
        return (
            f"failed ({failed} units)"
            if value == RowStatus.FAILED
            else f"partial ({failed} failed)"
        )
    if column.startswith(ACC):
        samples = row.get(N + column[len(ACC) :])
        return f"{value:.2f}" if missing(samples) else f"{value * samples:.0f}/{samples:.0f}"
    if column.startswith(LOGP):
        return f"{value:.1f}"
    if column.startswith(SCORE):
        docs = row.get(DOCS + column[len(SCORE) :])
        return f"{value:.2f}" if missing(docs) else f"{value:.2f} ({docs:.0f})"
    if column in TOKEN_COLUMNS:
        return token_label(float(value))
    if column in COUNT_COLUMNS:
        return count_label(float(value))
    if column.startswith("ppl_"):
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sort_key(value: object) -> str:
    """The raw number behind a cell (as JavaScript's Number reads it), or its text; '' when
    empty (sorted last)."""
    if missing(value):
        return ""
    if isinstance(value, int | float):
        number = float(value)
        return repr(number) if math.isfinite(number) else ("Infinity", "-Infinity")[number < 0]
    return str(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:SLUG_CHARACTERS]


def figure_stem(model: str) -> str:
    """A file-name-safe, readable stem unique to the exact model name: `x y` and `x_y` get
    the same slug but not the same hash."""
    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{slug(model)}-{digest[:HASH_CHARACTERS]}"


def figure_paths(board: Leaderboard) -> Iterator[tuple[str | None, Plot, str]]:
    """(model, or None for the all-models figures; plot; path relative to the output folder)
    of every figure."""
    for plot in board.overview:
        yield None, plot, f"figures/{plot.name}.png"
    for model, plots in board.plots.items():
        for plot in plots:
            yield model, plot, f"figures/{figure_stem(model)}-{plot.name}.png"


def csv_safe(value: object) -> object:
    """A text cell a spreadsheet would run as a formula, with a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def to_csv(board: Leaderboard) -> str:
    """The main table, every column; counts and token lengths as integers (blank when
    unknown, not 32768.0), text cells safe from spreadsheet formulas."""
    main = board.main.copy()
    for column in main.columns:
        if column in TOKEN_COLUMNS | COUNT_COLUMNS | {PASSKEY_N} or column.startswith((N, DOCS)):
            main[column] = main[column].astype("Int64")
        elif not pd.api.types.is_numeric_dtype(main[column]):
            main[column] = main[column].map(csv_safe)
    return main.to_csv(index=False)


def md_text(text: str) -> str:
    """Text as Markdown shows it literally: punctuation backslash-escaped (so no HTML, link,
    emphasis or table cell can start inside), newlines as spaces."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(md_text(c) for c in cells) + " |"

    return [line(columns), line(["---"] * len(columns)), *(line(r) for r in rows)]


def main_cells(board: Leaderboard, columns: list[str]) -> list[list[str]]:
    return [[cell_text(row, c) for c in columns] for _, row in board.main.iterrows()]


def to_markdown(board: Leaderboard) -> str:
    columns = shown_columns(board.main)
    lines = [
        "# Leaderboard",
        "",
        f"From {md_text(str(board.source))}, built {board.created:%Y-%m-%d %H:%M} UTC; "
        f"passkey threshold {board.options.threshold:g}.",
        "",
    ]
    if board.warnings:
        lines += ["## Warnings", "", *(f"- {md_text(w)}" for w in board.warnings), ""]
    lines += [*markdown_table([header(c) for c in columns], main_cells(board, columns)), ""]
    figures = list(figure_paths(board))
    if board.overview:
        lines += [f"## {CLIFF_TITLE}", ""]
        lines += [f"![{md_text(p.title)}]({path})" for model, p, path in figures if model is None]
        lines += [""]
    lines += ["## How to read it", "", *(f"- {d}" for d in definitions(board)), ""]
    current = None
    for model, plot, path in figures:
        if model is None:
            continue
        if model != current:
            lines += [f"## {md_text(model)}", ""]
            current = model
        lines += [f"![{md_text(f'{model}: {plot.title}')}]({path})", ""]
    provenance = provenance_columns(board.main)
    lines += ["## Provenance", "", PROVENANCE_NOTE, ""]
    lines += [*markdown_table([header(c) for c in provenance], plain_cells(board, provenance))]
    lines += [""]
    if len(board.fits):
        lines += ["## Fits against state size", "", FITS_NOTE, ""]
        lines += [*markdown_table(list(FIT_COLUMNS), fit_cells(board)), ""]
    if len(board.failures):
        lines += ["## Failed units", "", *markdown_table(FAILURE_COLUMNS, failure_cells(board)), ""]
    return "\n".join(lines) + "\n"


def plain_cells(board: Leaderboard, columns: list[str]) -> list[list[str]]:
    """The main table's `columns` as text, integral numbers (widened by nulls) as integers."""
    rows = board.main.reindex(columns=columns)
    return [
        ["" if missing(v) else f"{v:.0f}" if isinstance(v, float) and v.is_integer() else str(v)
         for v in row]
        for row in rows.itertuples(index=False)
    ]  # fmt: skip


def failure_cells(board: Leaderboard) -> list[list[str]]:
    failed = board.failures.reindex(columns=FAILURE_COLUMNS)
    return [["" if missing(v) else str(v) for v in row] for row in failed.itertuples(index=False)]


def fit_cells(board: Leaderboard) -> list[list[str]]:
    return [
        ["" if missing(v) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        for row in board.fits.itertuples(index=False)
    ]
