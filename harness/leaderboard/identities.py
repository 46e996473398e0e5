"""One leaderboard model per content identity, even when two identities share a display name.

Rows carry `model_id` (harness.identity: a hash of the checkpoint's files) beside the display
name of their `model=` folder. When every row of a name has one identity, the name is kept as
it is. When a name has rows of several identities (a checkpoint retrained or replaced under
the same name, or results written before identities were recorded beside newer ones), each
identity becomes its own model, `name@<first SHORT hex of its id>` (`name@no-id` for rows
without one), and a warning says so: such results are never pooled.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.leaderboard.columns import MODEL, MODEL_ID

SHORT = 8  # hex characters of an identity shown beside a name (as harness.identity's suffix)
NO_ID = "no-id"  # the label of rows written without a model_id


@dataclass(frozen=True)
class Labelled:
    tables: dict[str, pd.DataFrame]  # the tables with `model` made unique per identity
    warnings: list[str]


def short_id(model_id: object) -> str:
    return model_id[:SHORT] if isinstance(model_id, str) and model_id else NO_ID


def identities(tables: dict[str, pd.DataFrame]) -> pd.Series:
    """name -> sorted short ids of every identity seen under it (NO_ID for rows without)."""
    pairs = pd.concat(
        [
            pd.DataFrame(
                {
                    MODEL: t[MODEL],
                    "short": t[MODEL_ID].map(short_id) if MODEL_ID in t.columns else NO_ID,
                }
            )
            for t in tables.values()
        ]
    )
    return pairs.drop_duplicates().groupby(MODEL)["short"].agg(sorted)


def label_models(tables: dict[str, pd.DataFrame]) -> Labelled:
    """The tables with names of several identities split into `name@id`, and a warning each."""
    if not tables:
        return Labelled(tables, [])
    found = identities(tables)
    shared = found[found.map(len) > 1]
    if shared.empty:
        return Labelled(tables, [])
    warnings = [
        f"model {name!r} names {len(ids)} different checkpoints (model_id "
        f"{', '.join(ids)}): their results are shown apart, as "
        + ", ".join(f"{name}@{i}" for i in ids)
        for name, ids in shared.items()
    ]
    return Labelled({n: relabel(t, set(shared.index)) for n, t in tables.items()}, warnings)


def relabel(frame: pd.DataFrame, shared: set[str]) -> pd.DataFrame:
    if not frame[MODEL].isin(shared).any():
        return frame
    ids = frame[MODEL_ID] if MODEL_ID in frame.columns else pd.Series(None, index=frame.index)
    names = [
        f"{name}@{short_id(model_id)}" if name in shared else name
        for name, model_id in zip(frame[MODEL], ids, strict=True)
    ]
    return frame.assign(**{MODEL: names})
