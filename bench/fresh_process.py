"""Peak CPU memory of one step, measured in a fresh process (the bench scripts' --memory modes).

What is read: VmHWM in /proc/self/status, the process's resident-set high-water mark, the most
physical memory it has held at once (VmRSS is what it holds now). ru_maxrss is not used: a
child inherits its parent's, so after one large configuration every later one would read the
parent's peak; hence every configuration runs in a fresh interpreter (`fresh`), which prints
its figures as one JSON line. Writing "5" to /proc/self/clear_refs (Linux >= 4.0) sets VmHWM
back to the current VmRSS, so the rise over the memory of the loaded model is the step's own
("forward_peak_mb"); where that write is refused, that figure is NaN and only the whole peak
is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak() -> bool:
    """Set VmHWM to the current VmRSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_of(step: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """Run `step` with the mark reset first: -> its result and {"peak_mb": the process's peak,
    "forward_peak_mb": the rise over the memory held before the step (NaN if not reset)}."""
    loaded = status_mb("VmRSS")
    reset = reset_peak()
    result = step()
    peak = status_mb("VmHWM")
    return result, {"peak_mb": peak, "forward_peak_mb": peak - loaded if reset else float("nan")}


def fresh(script: str, *args: str) -> dict[str, float]:
    """`script --worker args...` in a fresh interpreter (one torch thread, hub offline): the
    JSON object on the last line it prints."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, script, "--worker", *args], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"worker {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
