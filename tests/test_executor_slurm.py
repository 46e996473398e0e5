"""--executor slurm against a real Slurm cluster (scripts/cluster/slurm.sh start): the same
tables as a local run, a killed job retried, two runs into one folder at once, GPUs from GRES.

Skipped when no Slurm answers (`sinfo` fails), unless HARNESS_REQUIRE_CLUSTERS=1 (CI), which
makes that a failure. Every run here uses one CPU thread per process (OMP_NUM_THREADS=1, and
--cpus-per-task 1 on Slurm), so the float32 sums, and with them the tables, are bit for bit
the same; float32 sums over other thread counts may differ in the last bits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness import results

PLAN = [
    "--models",
    "tiny-mamba2,tiny-pythia,mamba2-bytes-320",
    "--tasks",
    "passkey,perplexity",
    "--lengths",
    "512,1k",
    "--samples",
    "1",
]
# A smaller plan (a part of PLAN: the same units) for the fault and concurrency tests.
SMALL_MODELS = ("tiny-mamba2", "tiny-pythia")
SMALL = ["--models", ",".join(SMALL_MODELS), "--tasks", "passkey", "--lengths", "512,1k"]
SMALL += ["--samples", "1"]
SLURM = ["--executor", "slurm"]
TABLES = ("passkey", "perplexity")
VARYING = ("run_id", "created_at", "device")  # where and when a row was made
RUN_TIMEOUT_S = 600


def slurm_answers() -> str | None:
    """None when a Slurm cluster answers and submitit is installed, else why not."""
    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed (pip install -e '.[slurm]')"
    if shutil.which("sinfo") is None:
        return "Slurm is not installed (scripts/cluster/slurm.sh install)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "sinfo got no answer in 20 s"
    if out.returncode != 0:
        return f"no Slurm cluster answers ({out.stderr.strip()}): scripts/cluster/slurm.sh start"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    why = slurm_answers()
    if why is None:
        return
    if os.environ.get("HARNESS_REQUIRE_CLUSTERS") == "1":
        pytest.fail(f"HARNESS_REQUIRE_CLUSTERS=1 but {why}")
    pytest.skip(why)


def harness(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "harness", "run", *args]


def environment() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        harness(args),
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        harness(args),
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def rows(out: Path, table: str, models: Sequence[str] | None = None) -> list[tuple]:
    """A table's rows (of `models`, default all), without the columns that say where and
    when, in a fixed order."""
    frame = results.read_table(out, table).to_pandas()
    if models is not None:
        frame = frame[frame["model"].isin(models)]
    frame = frame.drop(columns=[c for c in VARYING if c in frame.columns])
    frame = frame.reindex(sorted(frame.columns), axis=1)
    return sorted(tuple(map(repr, row)) for row in frame.itertuples(index=False))


def assert_same_tables(
    out: Path, reference: Path, tables: Sequence[str] = TABLES, models: Sequence[str] | None = None
) -> None:
    for table in tables:
        got, expected = rows(out, table), rows(reference, table, models)
        assert len(got) == len(expected), f"{table}: {len(got)} rows, expected {len(expected)}"
        assert got == expected, f"{table} differs from the local run"


def assert_parts_sound(out: Path, tables: Sequence[str] = TABLES) -> None:
    """Every part reads whole, and no temporary file is left behind."""
    for table in tables:
        for part in (out / table).rglob("*.parquet"):
            pq.read_table(part)
        assert not list((out / table).rglob(".*.tmp")), f"temporaries left in {table}"


def run_manifest(out: Path) -> dict | None:
    found = sorted((out / "runs").glob("*.json"))
    return json.loads(found[-1].read_text()) if found else None


def worker_manifests(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/j*.json"))]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same plan run by the local executor, in one process."""
    out = tmp_path_factory.mktemp("local") / "out"
    done = run([*PLAN, "--out", str(out)], out.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_slurm_tables_equal_local_and_gpus_from_gres(local_reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run([*PLAN, *SLURM, "--workers", "2", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_tables(out, local_reference)
    assert_parts_sound(out)
    manifest = run_manifest(out)
    assert manifest is not None and manifest["state"] == "finished"
    assert manifest["config"]["executor"]["name"] == "slurm"
    assert list((out / "slurm" / manifest["run_id"]).glob("*_log.out")), "submitit logs"
    # Each job had one of the two GRES GPUs, and jobs that ran at once had different ones.
    workers = worker_manifests(out)
    assert len(workers) == len(manifest["jobs"])
    assert {w["cuda_visible_devices"] for w in workers} <= {"0", "1"}
    spans = [
        (datetime.fromisoformat(w["started_at"]).timestamp(), w["wall_time_s"], w) for w in workers
    ]
    for i, (start_a, wall_a, a) in enumerate(spans):
        for start_b, wall_b, b in spans[i + 1 :]:
            if start_a < start_b + wall_b and start_b < start_a + wall_a:
                assert a["cuda_visible_devices"] != b["cuda_visible_devices"], (a, b)


def unfinished_job(out: Path) -> str | None:
    """A running Slurm job of the run writing into `out` that has not written all its units'
    parts yet (the first submission is one array: task i runs the run's job i)."""
    manifest = run_manifest(out)
    if manifest is None:
        return None
    folder = out / "slurm" / manifest["run_id"]
    plan = {u["unit_id"]: u for u in manifest["plan"]}
    listed = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True, timeout=20
    ).stdout.split()
    for slurm_job in listed:
        if "_" not in slurm_job or not list(folder.glob(f"{slurm_job}_*_log.out")):
            continue
        units = [plan[uid] for uid in manifest["jobs"][int(slurm_job.split("_")[1])]["units"]]
        written = [
            u
            for u in units
            if results.part_path(out, u["table"], u["model"], u["mitigation"], u["slot"]).exists()
        ]
        if len(written) < len(units):
            return slurm_job
    return None


def slurm_state(job: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout.strip().split()[0] if out.stdout.strip() else "UNKNOWN"


def test_killed_job_is_retried_without_loss_or_duplicate(
    local_reference: Path, tmp_path: Path, dead_writers_swept
) -> None:
    out = tmp_path / "out"
    # One worker: one job per model, one after the other; the kill lands in the first.
    driver = start(
        [*SMALL, *SLURM, "--workers", "1", "--max-retries", "1", "--out", str(out)], tmp_path
    )
    killed = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while killed is None and driver.poll() is None and time.monotonic() < deadline:
        killed = unfinished_job(out)
        if killed is not None:  # SIGKILL every process of the job
            subprocess.run(["scancel", "--signal=KILL", killed], timeout=20)
        time.sleep(0.1)
    output, _ = driver.communicate(timeout=RUN_TIMEOUT_S)
    assert killed is not None, "no job was running mid-run to kill:\n" + output
    assert driver.returncode == 0, output
    for _ in range(50):  # sacct records the end a moment later
        if slurm_state(killed) not in ("RUNNING", "COMPLETING", "UNKNOWN"):
            break
        time.sleep(0.2)
    assert slurm_state(killed) in ("FAILED", "CANCELLED", "CANCELLED+"), slurm_state(killed)
    assert_same_tables(out, local_reference, ["passkey"], SMALL_MODELS)
    dead_writers_swept(out)
    assert_parts_sound(out, ["passkey"])
    manifest = run_manifest(out)
    assert manifest is not None and not manifest["units"]["lost"]
    # The killed job ran again as a Slurm job of its own: one more log than jobs.
    logs = list((out / "slurm" / manifest["run_id"]).glob("*_log.out"))
    assert len(logs) == len(manifest["jobs"]) + 1, sorted(p.name for p in logs)


def test_two_runs_into_one_folder_at_once(local_reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [*SMALL, *SLURM, "--workers", "1", "--out", str(out)]
    drivers = [start(command, tmp_path) for _ in range(2)]
    outputs = [d.communicate(timeout=RUN_TIMEOUT_S)[0] for d in drivers]
    for driver, output in zip(drivers, outputs, strict=True):
        assert driver.returncode == 0, output
    assert_same_tables(out, local_reference, ["passkey"], SMALL_MODELS)
    assert_parts_sound(out, ["passkey"])


def test_relative_task_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text("a line of text\n" * 50)
    out = tmp_path / "out"
    args = ["--models", "tiny-mamba2", "--tasks", "perplexity", "--lengths", "512"]
    done = run(
        [*args, "--option", "perplexity.source=text.txt", *SLURM, "--out", str(out)], tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "relative path" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
