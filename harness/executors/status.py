"""`harness status --out DIR`: which units of the last run's plan are done, skipped, failed or
missing, from its run manifest (runs/<run id>.json) and the parts on disk."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness import results
from harness.plan import UsageError

SHOWN = 20  # failed / missing units listed by name


def last_run(out: Path) -> dict[str, Any]:
    """The newest run manifest that carries a plan."""
    found = []
    for path in (out / "runs").glob("*.json"):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and "plan" in manifest:
            found.append(manifest)
    if not found:
        raise UsageError(f"no run manifest with a plan under {out / 'runs'}: nothing ran there")
    return max(found, key=lambda m: m["started_at"])


def unit_status(out: Path, unit: dict[str, Any]) -> tuple[str, str]:
    """(done | skipped | failed | missing, the failure's status and message)."""
    slot = unit.get("slot", unit["unit_id"])  # manifests before slots named parts by unit id
    path = results.part_path(out, unit["table"], unit["model"], unit["mitigation"], slot)
    try:
        table = pq.read_table(path, columns=["status", "message", "unit_id"])
    except FileNotFoundError:
        return "missing", ""
    except (pa.ArrowInvalid, OSError, KeyError) as err:
        return "failed", f"unreadable part: {err}"
    if set(table.column("unit_id").to_pylist()) != {unit["unit_id"]}:
        return "missing", ""  # the part of an earlier model or mitigation input
    statuses = set(table.column("status").to_pylist())
    if statuses == {"ok"}:
        return "done", ""
    if statuses == {"skipped"}:
        return "skipped", table.column("message")[0].as_py()
    bad = [s for s in table.column("status").to_pylist() if s != "ok"]
    return "failed", f"{bad[0]}: {table.column('message')[0].as_py()}"


def describe(unit: dict[str, Any]) -> str:
    params = {k: v for k, v in unit["params"].items() if k in ("length", "samples", "depths")}
    return f"{unit['model']} {unit['mitigation']} {unit['task']} {params}"


def run_state(run: dict[str, Any]) -> str:
    """The manifest's state; a `running` run whose driver process is gone from this host
    (killed, crashed) says so."""
    state = run.get("state", "finished")
    driver = run.get("driver", {})
    if state != "running" or driver.get("host") != socket.gethostname():
        return state
    if results.pid_alive(pid := driver["pid"]):
        return state
    return f"stopped: its driver, pid {pid}, is gone; rerun the same command to resume"


def status_command(out: Path) -> int:
    """Print the state of the last run's units; 0 when all are done or skipped, else 1."""
    if not out.is_dir():
        raise UsageError(
            f"no results folder {str(out)!r} (--out, default results): run `harness run` first, "
            "or point --out at the folder it wrote"
        )
    run = last_run(out)
    found = [(unit, *unit_status(out, unit)) for unit in run["plan"]]
    counts = Counter(state for _, state, _ in found)
    executor = run["config"].get("executor", {}).get("name", "local")
    print(
        f"run {run['run_id']} ({run_state(run)}, executor {executor}, "
        f"started {run['started_at']}): {len(found)} units: {counts['done']} done, "
        f"{counts['skipped']} skipped, {counts['failed']} failed, {counts['missing']} missing"
    )
    for state in ("failed", "missing"):
        listed = [(u, why) for u, s, why in found if s == state]
        for unit, why in listed[:SHOWN]:
            print(f"  {state}: {describe(unit)}" + (f": {why}" if why else ""))
        if len(listed) > SHOWN:
            print(f"  ... and {len(listed) - SHOWN} more {state}")
    if counts["failed"] or counts["missing"]:
        print("rerun the same command to run the failed and missing units")
        return 1
    return 0
