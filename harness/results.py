"""Result tables on disk: Arrow schemas, atomic Parquet parts, run manifests, reading back.

Layout (hive, so pyarrow / pandas / polars / DuckDB read a table folder as one table):

    <out>/<table>/model=<model>/mitigation=<mitigation spec>/part-<unit id>.parquet
    <out>/runs/<run id>.json                       one manifest per run that did work

`model` and `mitigation` live only in the folder names (URI-encoded, as pyarrow decodes them),
so reading a single part file alone loses them; read the table folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

COMMON = pa.schema(
    [
        ("unit_id", pa.string()),
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("model_ref", pa.string()),
        ("family", pa.string()),
        ("params", pa.int64()),
        ("state_size", pa.int64()),
        ("train_context", pa.int64()),
        ("mitigation_name", pa.string()),
        ("status", pa.string()),  # ok | oom | nonfinite | error
        ("message", pa.string()),
        ("unit_params", pa.string()),  # JSON of the task parameters of the unit
        ("seed", pa.int64()),
        ("device", pa.string()),
        ("dtype", pa.string()),
        ("backend", pa.string()),
        ("harness_version", pa.string()),
        ("git_commit", pa.string()),
        ("created_at", pa.timestamp("s", tz="UTC")),
    ]
)
PARTITIONS = pa.schema([("model", pa.string()), ("mitigation", pa.string())])


def part_path(out: Path, table: str, model: str, mitigation: str, unit_id: str) -> Path:
    folder = (
        out / table / f"model={quote(model, safe='')}" / f"mitigation={quote(mitigation, safe='')}"
    )
    return folder / f"part-{unit_id}.parquet"


def write_part(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write rows to a temporary name in the same folder, then rename: never a torn part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def part_ok(path: Path) -> bool:
    """Whether a finished part exists with every row ok (failed units are run again)."""
    if not path.is_file():
        return False
    try:
        statuses = pq.read_table(path, columns=["status"]).column("status").to_pylist()
    except (pa.ArrowInvalid, OSError):
        return False
    return bool(statuses) and all(s == "ok" for s in statuses)


def remove_stale_temporaries(out: Path) -> int:
    """Delete temporaries left by a run that was killed while writing; return how many."""
    stale = list(out.glob("*/model=*/mitigation=*/.part-*.parquet.tmp"))
    for tmp in stale:
        tmp.unlink()
    return len(stale)


def read_table(out: Path, table: str) -> pa.Table:
    """Every part of one table as a single Arrow table, with `model` and `mitigation` columns."""
    partitioning = ds.partitioning(PARTITIONS, flavor="hive")
    return ds.dataset(out / table, format="parquet", partitioning=partitioning).to_table()


def write_manifest(out: Path, run_id: str, manifest: dict[str, Any]) -> Path:
    path = out / "runs" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, path)
    return path
