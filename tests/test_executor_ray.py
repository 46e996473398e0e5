"""--executor ray against a real local Ray cluster (scripts/cluster/ray.sh: 2 CPUs, 2 fake
GPUs): the same tables as a local run, a killed worker recovered or its units left for the
next run, two runs of one command into one folder at once, the GPU each worker got.

The cluster recorded in $HARNESS_RAY_DIR (.ci/run starts one) is used when there is one;
otherwise the tests start their own and stop it. Without Ray installed they skip, unless
HARNESS_REQUIRE_CLUSTERS is set (CI), where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cluster" / "ray.sh"
PLAN = [
    "--models",
    "tiny-mamba2,tiny-pythia,mamba2-bytes-320",
    "--tasks",
    "passkey,perplexity",
    "--lengths",
    "300,400,500",
    "--samples",
    "2",
]
TABLES = ("passkey", "perplexity")


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("HARNESS_REQUIRE_CLUSTERS"):
            pytest.fail("Ray is not installed (pip install -e '.[ray]')")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the script's cluster
    shared = Path(os.environ.get("HARNESS_RAY_DIR", "/nonexistent")) / "address"
    if shared.is_file():
        yield shared.read_text().strip()
        return
    if os.environ.get("HARNESS_REQUIRE_CLUSTERS"):
        pytest.fail(f"no Ray cluster recorded at {shared} (scripts/cluster/ray.sh start)")
    folder = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_PYTHON": sys.executable}
    subprocess.run([str(SCRIPT), "start", str(folder)], check=True, env=env)
    try:
        yield (folder / "address").read_text().strip()
    finally:
        subprocess.run([str(SCRIPT), "stop", str(folder)], check=True, env=env)


@pytest.fixture(scope="module")
def local_tables(tmp_path_factory: pytest.TempPathFactory, table_rows) -> dict[str, pd.DataFrame]:
    """The reference: the same plan run locally, in one process."""
    out = tmp_path_factory.mktemp("local")
    assert main(["run", *PLAN, "--out", str(out)]) == 0
    return {table: table_rows(out, table) for table in TABLES}


def harness_run(address: str, out: Path, *extra: str) -> subprocess.Popen:
    command = ["run", *PLAN, "--executor", "ray", "--ray-address", address, "--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *command, *extra],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def assert_same_tables(out: Path, local: dict[str, pd.DataFrame], table_rows) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(table_rows(out, table), local[table])
    for part in out.rglob("*.parquet"):
        pq.read_table(part)  # every part whole
    assert not list(out.rglob("*.tmp"))


def workers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*.json"))]


def running_job_pids() -> list[int]:
    """Ray worker processes of this machine busy with a harness job (their title)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::run_job"):
            found.append(int(proc.name))
    return found


def kill_a_worker_mid_run(out: Path, driver: subprocess.Popen) -> int:
    """SIGKILL a worker busy with a job once the run has written its first part."""
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        busy = running_job_pids()
        if busy and list(out.rglob("part-*.parquet")):
            os.kill(busy[0], signal.SIGKILL)
            return busy[0]
        time.sleep(0.05)
    raise AssertionError("no busy worker seen while the run lasted")


def test_ray_run_gives_the_local_tables_and_records_each_workers_gpu(
    ray_address: str, local_tables: dict[str, pd.DataFrame], tmp_path: Path, table_rows
) -> None:
    out = tmp_path / "ray"
    driver = harness_run(ray_address, out, "--workers", "2")
    log, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, log
    assert_same_tables(out, local_tables, table_rows)
    found = workers(out)
    assert len(found) >= 3  # one job per model at least
    assert {w["cuda_visible_devices"] for w in found} == {"0", "1"}  # two fake GPUs, both used
    assert {w["device"] for w in found} == {"cpu"}  # no real GPU behind them here


def test_killed_worker_is_run_again_by_ray(
    ray_address: str,
    local_tables: dict[str, pd.DataFrame],
    tmp_path: Path,
    table_rows,
    dead_writers_swept,
) -> None:
    out = tmp_path / "ray"
    driver = harness_run(ray_address, out, "--workers", "2", "--max-retries", "1")
    killed = kill_a_worker_mid_run(out, driver)
    log, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, log
    dead_writers_swept(out, killed)
    assert_same_tables(out, local_tables, table_rows)


def test_killed_worker_without_retries_leaves_units_for_the_next_run(
    ray_address: str,
    local_tables: dict[str, pd.DataFrame],
    tmp_path: Path,
    table_rows,
    dead_writers_swept,
) -> None:
    out = tmp_path / "ray"
    driver = harness_run(ray_address, out, "--workers", "2", "--max-retries", "0")
    killed = kill_a_worker_mid_run(out, driver)
    log, _ = driver.communicate(timeout=600)
    assert driver.returncode == 1 and "units missing (their worker was lost)" in log, log
    assert main(["status", "--out", str(out)]) == 1
    rerun = harness_run(ray_address, out, "--workers", "2")
    log, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, log
    dead_writers_swept(out, killed)
    assert_same_tables(out, local_tables, table_rows)


def test_two_runs_of_one_command_into_one_folder_at_once(
    ray_address: str, local_tables: dict[str, pd.DataFrame], tmp_path: Path, table_rows
) -> None:
    out = tmp_path / "ray"
    drivers = [harness_run(ray_address, out, "--workers", "2") for _ in range(2)]
    for driver in drivers:
        log, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, log
    assert_same_tables(out, local_tables, table_rows)


def test_detach_returns_at_once_and_status_follows_the_run(
    ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ray"
    plan = ["--models", "tiny-mamba2", "--lengths", "300", "--samples", "1"]
    engine = ["--executor", "ray", "--ray-address", ray_address, "--out", str(out)]
    assert main(["run", *plan, *engine, "--detach"]) == 0
    assert "detached: the driver runs as pid" in capsys.readouterr().err
    deadline = time.time() + 300
    while time.time() < deadline:
        runs = list((out / "runs").glob("*.json"))
        if runs and json.loads(runs[0].read_text())["state"] == "finished":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the detached run did not finish: {list(out.rglob('*.log'))}")
    assert main(["status", "--out", str(out)]) == 0
    assert "1 units: 1 done, 0 skipped, 0 failed, 0 missing" in capsys.readouterr().out


def test_a_relative_task_file_is_refused_for_remote_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    (tmp_path / "book.txt").write_text("once upon a time " * 100)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    args = ["run", "--models", "tiny-mamba2", "--tasks", "perplexity", "--lengths", "300"]
    args += ["--option", "perplexity.source=book.txt", "--executor", "ray", "--out", str(out)]
    assert main(args) == 2
    assert "perplexity.source=book.txt is a relative path" in capsys.readouterr().err
    assert not out.exists()
