"""Results of different settings are never averaged together silently.

The rule: a cell is one (model, mitigation) plus the table's cell columns (columns.CELLS: a
passkey length, one bucket of one perplexity document of one unit, ...). All ok rows of a
cell must share one setting, the tuple columns.SETTINGS (dtype, seed, unit_params). When
several settings reach the same cell (say a float32 and a bfloat16 run of the same length,
or two sample counts), only the rows of the newest setting (latest created_at) are kept; the
others are dropped, and a warning names the cell, the setting kept and the settings dropped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd

from harness.leaderboard.columns import CELLS, CREATED, OK, ROW, SETTINGS, STATUS

SETTING = "_setting"  # a temporary column: the setting of a row, as text
SHOWN_CELLS = 6  # a warning lists at most this many cells


@dataclass(frozen=True)
class Resolved:
    rows: pd.DataFrame  # the ok rows kept: one setting per cell
    warnings: list[str]


@dataclass
class Clash:
    cells: list[tuple] = field(default_factory=list)
    kept_rows: int = 0
    dropped_rows: int = 0


def resolve(frame: pd.DataFrame, table: str) -> Resolved:
    """The ok rows of `table` with one setting per cell, and a warning per clash."""
    cell = [*ROW, *(c for c in CELLS[table] if c in frame.columns)]
    ok = frame[frame[STATUS] == OK]
    ok = ok.assign(**{SETTING: setting_labels(ok)})
    groups = (
        ok.groupby([*cell, SETTING], dropna=False)[CREATED]
        .agg(newest="max", rows="size")
        .reset_index()
        .sort_values("newest", kind="stable")
    )
    winners = groups.drop_duplicates(cell, keep="last").set_index([*cell, SETTING]).index
    kept = ok[ok.set_index([*cell, SETTING]).index.isin(winners)]
    clashes = groups[groups.duplicated(cell, keep=False)]
    return Resolved(kept.drop(columns=SETTING), describe(table, clashes, cell[len(ROW) :]))


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """'dtype=float32 seed=0 unit_params={...}' for each row."""
    labels = pd.Series("", index=frame.index, dtype="str")
    for column in (c for c in SETTINGS if c in frame.columns):
        labels = labels + f" {column}=" + frame[column].astype(str)
    return labels.str.strip()


def describe(table: str, clashes: pd.DataFrame, cell: list[str]) -> list[str]:
    """One warning per (model, mitigation, kept setting, dropped settings)."""
    found: dict[tuple, Clash] = defaultdict(Clash)
    for key, settings in clashes.groupby([*ROW, *cell], dropna=False, sort=True):
        ordered = settings.sort_values("newest", kind="stable")
        kept, dropped = ordered.iloc[-1], ordered.iloc[:-1]
        clash = found[(*key[: len(ROW)], kept[SETTING], tuple(dropped[SETTING]))]
        clash.cells.append(key[len(ROW) :])
        clash.kept_rows += int(kept["rows"])
        clash.dropped_rows += int(dropped["rows"].sum())
    return [
        f"{table} {model} / {mitigation}: {cells_text(cell, clash.cells)} had rows of more "
        f"than one setting; kept the newest, {kept} ({clash.kept_rows} rows); dropped "
        + "; ".join(dropped)
        + f" ({clash.dropped_rows} rows)"
        for (model, mitigation, kept, dropped), clash in found.items()
    ]


def cells_text(names: list[str], cells: list[tuple]) -> str:
    if not names:
        return "the row"
    shown = ", ".join("/".join(str(v) for v in cell) for cell in cells[:SHOWN_CELLS])
    more = f" and {len(cells) - SHOWN_CELLS} more" if len(cells) > SHOWN_CELLS else ""
    return f"{'/'.join(names)} {shown}{more}"
