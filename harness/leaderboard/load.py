"""Reading a results folder back: every part of a table as one DataFrame, bad parts skipped.

Parts are read one by one so that a corrupt file (truncated, not Parquet) is named and
skipped while the rest is kept; `model` and `mitigation` come from the hive folder names,
URI-decoded as harness.results.part_path encoded them. Run manifests (runs/*.json) add the
device name of each run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.leaderboard.columns import COMBINED, MITIGATION, MODEL, REQUIRED

PART_GLOB = "*/model=*/mitigation=*/part-*.parquet"


class NoResultsError(Exception):
    """Nothing to build a leaderboard from; the message says where it looked and what to do."""


@dataclass
class Results:
    root: Path
    tables: dict[str, pd.DataFrame]  # table name -> every row of its readable parts
    combined: pd.DataFrame = field(default_factory=pd.DataFrame)  # cross-model rows (fits)
    device_names: dict[str, str] = field(default_factory=dict)  # run id -> device in words
    problems: list[str] = field(default_factory=list)  # what was skipped, and why


def load_results(root: Path) -> Results:
    """Every readable part under `root`, one DataFrame per table; NoResultsError if none."""
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise NoResultsError(
            f"results folder {root} {problem}: run `harness run` first, "
            "or point --results at the folder it wrote"
        )
    parts = sorted(root.glob(PART_GLOB))
    if not parts:
        raise NoResultsError(
            f"no result parts under {root} (expected <table>/model=<m>/mitigation=<x>/"
            "part-<unit>.parquet): run `harness run` first, or point --results elsewhere"
        )
    problems: list[str] = []
    tables = {}
    for name, pieces in read_parts(parts, problems).items():
        frame = combine(name, pieces, problems)
        if frame is not None:
            tables[name] = frame
    if not tables:
        raise NoResultsError(f"no readable result table under {root}: " + "; ".join(problems))
    combined = [t[t[MODEL] == COMBINED] for t in tables.values()]
    tables = {name: t[t[MODEL] != COMBINED] for name, t in tables.items()}
    device_names = read_device_names(root / "runs", problems)
    return Results(root, tables, pd.concat(combined), device_names, problems)


def read_parts(parts: list[Path], problems: list[str]) -> dict[str, list[pa.Table]]:
    """table name -> its readable parts; each unreadable one is named in `problems`."""
    pieces: dict[str, list[pa.Table]] = {}
    for path in parts:
        try:
            part = read_part(path)
        except (pa.ArrowException, OSError) as err:
            problems.append(f"skipped unreadable part {path}: {err}")
            continue
        pieces.setdefault(path.parents[2].name, []).append(part)
    return pieces


def combine(name: str, pieces: list[pa.Table], problems: list[str]) -> pd.DataFrame | None:
    """The parts of one table as one DataFrame; None (and a problem) if they cannot be."""
    try:
        frame = pa.concat_tables(pieces, promote_options="permissive").to_pandas()
    except pa.ArrowException as err:
        problems.append(f"skipped table {name!r}: its parts disagree on column types: {err}")
        return None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        problems.append(f"skipped table {name!r}: no column {', '.join(missing)}")
        return None
    return frame


def read_part(path: Path) -> pa.Table:
    """One part with its `model` and `mitigation` taken from the folder names."""
    table = pq.read_table(path)
    for column, folder in ((MODEL, path.parents[1]), (MITIGATION, path.parent)):
        value = unquote(folder.name.partition("=")[2])
        table = table.append_column(column, pa.array([value] * table.num_rows, pa.string()))
    return table


def read_device_names(runs: Path, problems: list[str]) -> dict[str, str]:
    """run id -> the manifest's `device_name`; unreadable manifests are noted in `problems`."""
    names = {}
    for path in sorted(runs.glob("*.json")):
        try:
            manifest = json.loads(path.read_text())
            names[manifest["run_id"]] = manifest["device_name"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"skipped unreadable manifest {path}: {type(err).__name__}: {err}")
    return names
