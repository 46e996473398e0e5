"""One `harness run` timed from a bench script, and the machine's load to print beside it."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from harness.cli import main


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def timed_run(args: list[str]) -> tuple[float, dict, Path]:
    """Wall seconds of one `harness run` into a fresh folder, its run manifest, the folder
    (removed when the bench exits)."""
    out = Path(tempfile.mkdtemp(prefix="bench-run-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    started = time.perf_counter()
    code = main(["run", *args, "--out", str(out)])
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"harness run {' '.join(args)} exited {code}")
    manifest = json.loads(next((out / "runs").glob("*.json")).read_text())
    return wall, manifest, out
