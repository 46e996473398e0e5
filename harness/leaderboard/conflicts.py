"""Results of different settings are never averaged together silently.

The rule: a cell is one (model, mitigation) plus the table's cell columns (columns.CELLS: a
passkey length, a perplexity prompt's source and length, ...). All ok rows of a cell must
share one setting, the tuple columns.SETTINGS (dtype, seed, unit_params). When
several settings reach the same cell (say a float32 and a bfloat16 run of the same length,
or two sample counts), only the rows of the newest setting (latest created_at) are kept; the
others are dropped, and a warning names the cell, the setting kept and the settings dropped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.leaderboard.columns import CELLS, CREATED, OK, ROW, SETTINGS, STATUS, UNIT_PARAMS

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
    settings = [c for c in SETTINGS if c in frame.columns]
    ok = frame[frame[STATUS] == OK]
    groups = (
        ok.groupby([*cell, *settings], dropna=False)[CREATED]
        .agg(newest="max", rows="size")
        .reset_index()
        .sort_values("newest", kind="stable")
    )
    winners = pd.MultiIndex.from_frame(groups.drop_duplicates(cell, keep="last")[cell + settings])
    kept = ok[pd.MultiIndex.from_frame(ok[cell + settings]).isin(winners)]
    clashes = groups[groups.duplicated(cell, keep=False)]
    return Resolved(kept, describe(table, clashes, cell[len(ROW) :], settings))


def describe(table: str, clashes: pd.DataFrame, cell: list[str], settings: list[str]) -> list[str]:
    """One warning per (model, mitigation, kept setting, dropped settings)."""
    found: dict[tuple, Clash] = defaultdict(Clash)
    for key, group in clashes.groupby([*ROW, *cell], dropna=False, sort=True):
        ordered = group.sort_values("newest", kind="stable")
        labels = differences(ordered[settings].to_dict("records"))
        clash = found[(*key[: len(ROW)], labels[-1], tuple(labels[:-1]))]
        clash.cells.append(key[len(ROW) :])
        clash.kept_rows += int(ordered["rows"].iloc[-1])
        clash.dropped_rows += int(ordered["rows"].iloc[:-1].sum())
    return [
        f"{table} {model} / {mitigation}: {cells_text(cell, clash.cells)} had results of more "
        f"than one setting; kept the newest ({kept}, {clash.kept_rows} rows), dropped "
        f"{'; '.join(dropped)} ({clash.dropped_rows} rows)"
        for (model, mitigation, kept, dropped), clash in found.items()
    ]


def flatten(setting: dict[str, Any]) -> dict[str, Any]:
    """dtype, seed and the unit parameters (JSON) as one flat dict."""
    flat = {k: v for k, v in setting.items() if k != UNIT_PARAMS}
    try:
        params = json.loads(setting.get(UNIT_PARAMS) or "{}")
    except (TypeError, ValueError):
        params = None
    if not isinstance(params, dict):
        params = {UNIT_PARAMS: setting.get(UNIT_PARAMS)}
    return {**flat, **params}


def differences(settings: list[dict[str, Any]]) -> list[str]:
    """Each setting as 'key=value ...' over only the keys whose values differ between them."""
    flats = [flatten(s) for s in settings]
    keys = sorted({k for flat in flats for k in flat})
    differing = [k for k in keys if len({shown(flat.get(k)) for flat in flats}) > 1]
    return [" ".join(f"{k}={shown(flat.get(k))}" for k in differing) for flat in flats]


def shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, sort_keys=True, default=str)


def cells_text(names: list[str], cells: list[tuple]) -> str:
    if not names:
        return "the row"
    listed = ", ".join("/".join(shown(v) for v in cell) for cell in cells[:SHOWN_CELLS])
    more = f" and {len(cells) - SHOWN_CELLS} more" if len(cells) > SHOWN_CELLS else ""
    return f"{'/'.join(names)} {listed}{more}"
