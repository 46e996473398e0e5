"""Result tables on disk: Arrow schemas, atomic Parquet parts, run manifests, reading back.

Layout (hive, so pyarrow / pandas / polars / DuckDB read a table folder as one table):

    <out>/<table>/model=<model>/mitigation=<mitigation spec>/part-<unit slot>.parquet
    <out>/runs/<run id>.json                       one manifest per run that did work

`model` and `mitigation` live only in the folder names (URI-encoded, as pyarrow decodes them),
so reading a single part file alone loses them; read the table folder.

Many writers (processes on one machine or on several sharing a filesystem) may write into one
folder at once: each writes a temporary name of its own (host, pid, random) and renames it
into place, so a part is always whole; two writers of the same unit leave one part.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

COMMON = pa.schema(
    [
        ("unit_id", pa.string()),
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("model_ref", pa.string()),
        ("model_id", pa.string()),  # content identity (harness.identity); null on _combined rows
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


STALE_AFTER_S = 15 * 60  # a temporary of a dead writer on this host, older than this, is stale
STALE_OTHER_HOST_S = 6 * 3600  # a temporary of another host (its pid cannot be checked)
TEMPORARY = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[\w-]+)\.(?P<pid>\d+)\.(?P<nonce>[0-9a-f]+)\.tmp$"
)


def part_path(out: Path, table: str, model: str, mitigation: str, slot: str) -> Path:
    folder = out / table / f"model={quote(model, safe='@')}"  # `name@id` stays readable
    folder = folder / f"mitigation={quote(mitigation, safe='')}"
    return folder / f"part-{slot}.parquet"


def host() -> str:
    """This machine's name as it appears in temporary file names."""
    return re.sub(r"[^\w-]", "-", socket.gethostname()) or "host"


def temporary(path: Path) -> Path:
    """A name beside `path` that no other writer uses: host, pid and a random part."""
    return path.with_name(f".{path.name}.{host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_part(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write rows to a temporary name of this writer, then rename: never a torn part. Raises
    OSError when the part cannot be written (the temporary is removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def part_ok(path: Path, unit_id: str) -> bool:
    """Whether a finished part of this unit exists with every row ok (failed units, and
    units whose model or mitigation inputs changed since, are run again)."""
    if not path.is_file():
        return False
    try:
        found = pq.read_table(path, columns=["status", "unit_id"]).to_pylist()
    except (pa.ArrowInvalid, OSError, KeyError):
        return False
    return bool(found) and all(r["status"] == "ok" and r["unit_id"] == unit_id for r in found)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(tmp: Path, now: float) -> bool:
    """A temporary no writer will finish: older than STALE_AFTER_S and its writer's pid dead
    on this host; another host's only after STALE_OTHER_HOST_S."""
    try:
        age = now - tmp.stat().st_mtime
    except FileNotFoundError:
        return False
    m = TEMPORARY.match(tmp.name)
    if m is None or m["host"] != host():
        return age > STALE_OTHER_HOST_S if m else age > STALE_AFTER_S
    return age > STALE_AFTER_S and not pid_alive(int(m["pid"]))


def remove_stale_temporaries(out: Path) -> int:
    """Delete temporaries left by writers that were killed while writing; return how many.
    Another writer's temporary in flight is never touched."""
    now = time.time()
    patterns = ("*/model=*/mitigation=*/.part-*.tmp", "runs/.*.tmp", "runs/*/.*.tmp")
    found = [tmp for pattern in patterns for tmp in out.glob(pattern)]
    removed = 0
    for tmp in found:
        if is_stale(tmp, now):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def model_ids(out: Path, partitions: Callable[[str], bool]) -> set[str]:
    """The model_id values of every part under the `model=` folders (of any table) whose
    decoded name `partitions` accepts; unreadable parts and parts without one are passed over."""
    found: set[str] = set()
    for folder in out.glob("*/model=*"):
        if not partitions(unquote(folder.name.removeprefix("model="))):
            continue
        for part in folder.glob("mitigation=*/part-*.parquet"):
            try:
                column = pq.read_table(part, columns=["model_id"]).column("model_id")
            except (pa.ArrowInvalid, OSError, KeyError):
                continue
            found.update(v for v in column.to_pylist() if v is not None)
    return found


def read_table(out: Path, table: str) -> pa.Table:
    """Every readable part of one table as a single Arrow table, with `model` and `mitigation`
    columns. Parts of older versions with fewer columns read with nulls there; parts that
    cannot be read (torn, truncated, not Parquet) are left out and named in one warning line
    on stderr."""
    root = out / table
    parts, corrupt = [], []
    for path in sorted(root.rglob("*.parquet")):
        if path.name.startswith((".", "_")):
            continue  # a temporary of a write in progress
        try:
            pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            corrupt.append(f"{path} ({_first_line(err)})")
            continue
        parts.append(path)
    if corrupt:
        print(
            f"harness: warning: left out {len(corrupt)} unreadable part(s) of table {table!r}: "
            + "; ".join(corrupt),
            file=sys.stderr,
        )
    schema = pa.unify_schemas([*(pq.read_schema(p) for p in parts), PARTITIONS])
    partitioning = ds.partitioning(PARTITIONS, flavor="hive")
    return ds.dataset(
        [str(p) for p in parts],
        schema=schema,
        format="parquet",
        partitioning=partitioning,
        partition_base_dir=str(root),
    ).to_table()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def write_manifest(out: Path, run_id: str, manifest: dict[str, Any]) -> Path:
    path = out / "runs" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
