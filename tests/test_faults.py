"""Faults after work has started end as rows or one line, never a traceback: memory running
out on the CPU, a prompt too long for the memory left, corrupt parts, markup in names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.results import read_table
from harness.runner import classify

# Runs `harness run` with the address space limited to what the process holds after its
# imports (the big libraries loaded) plus 1.5 GiB: enough for short prompts, not for 4m tokens.
LIMITED = """
import resource, sys
import harness.cli, harness.executors.driver, tokenizers, torch  # all the big libraries mapped
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1])
limit = size * 1024 + 3 * 2**29
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(harness.cli.main(sys.argv[1:]))
"""


def test_cpu_out_of_memory_is_oom() -> None:
    with pytest.raises(RuntimeError) as torch_error:
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: refused by the CPU allocator
    assert classify(torch_error.value) == "oom"
    with pytest.raises(MemoryError) as python_error:
        bytearray(2**60)
    assert classify(python_error.value) == "oom"
    assert classify(RuntimeError("shape mismatch")) == "error"


def test_prompt_too_long_for_memory_is_an_oom_row(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["run", "--models", "tiny-pythia", "--lengths", "512,4m", "--samples", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED, *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # a failed unit, not a dead process
    assert "Traceback" not in proc.stderr
    rows = {
        json.loads(r["unit_params"])["length"]: r for r in read_table(out, "passkey").to_pylist()
    }
    assert rows[512]["status"] == "ok"
    assert rows[4 * 2**20]["status"] == "oom"
    assert "a prompt of 4194304 tokens needs about 2.00 GiB" in rows[4 * 2**20]["message"]


def test_a_corrupt_part_never_crashes_a_later_run(
    neox_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    options = ["loss_length=1024", "bucket=64", "window=128", "smoothing=64"]
    argv = ["run", "--models", str(neox_dir), "--tasks", "state-capacity", "--lengths", "300"]
    argv += ["--samples", "1", "--out", str(out)]
    argv += [a for o in options for a in ("--option", f"state-capacity.{o}")]
    assert main(argv) == 0
    [part] = (out / "state_capacity").glob("model=neox-tiny*/*/part-*.parquet")
    broken = part.parent.parent.parent / "model=other" / part.parent.name / part.name
    broken.parent.mkdir(parents=True)
    broken.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # torn in the middle
    capsys.readouterr()
    assert main([*argv, "--no-resume"]) == 0  # the cross-model step reads the whole table
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(broken) in warnings[0], warnings
    rows = read_table(out, "state_capacity").to_pylist()
    models = {r["model"] for r in rows}
    assert part.parent.parent.name.removeprefix("model=") in models and "other" not in models


def test_markup_in_names_is_printed_as_written(
    neox_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "[bold]x[red]"
    model.mkdir()
    for item in neox_dir.iterdir():
        (model / item.name).symlink_to(item)
    argv = ["run", "--models", str(model), "--lengths", "512", "--samples", "1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "[bold]x[red]" in captured.out  # the summary table
