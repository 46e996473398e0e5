"""A results folder shared by many writers: per-writer temporaries, stale-temporary cleanup,
write failures as unit failures (full and read-only filesystems, a path under a file), and
two real `harness run` processes writing into one folder at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import results
from harness.cli import main
from harness.executors.driver import Report, run_plan
from harness.plan import build_plan, parse_mitigation, parse_models
from harness.runner import RunConfig
from tasks.base import TaskOptions
from tasks.passkey import Passkey

SCHEMA = pa.schema([("status", pa.string()), ("unit_id", pa.string())])
OLD = results.STALE_AFTER_S + 60


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def temporary(folder: Path, writer: str, age_s: float, name: str = "part-0123.parquet") -> Path:
    path = folder / f".{name}.{writer}.tmp"
    path.write_bytes(b"partial")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_only_stale_temporaries_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "passkey" / "model=m" / "mitigation=none"
    folder.mkdir(parents=True)
    here, dead, alive = results.host(), dead_pid(), os.getpid()
    removed = {
        temporary(folder, f"{here}.{dead}.aa", OLD),  # dead writer of this host, old
        temporary(folder, f"other-host.{alive}.bb", results.STALE_OTHER_HOST_S + 60),
    }
    legacy = folder / ".part-0456.parquet.tmp"  # writer unknown (older harness), old
    legacy.write_bytes(b"partial")
    os.utime(legacy, (time.time() - OLD, time.time() - OLD))
    removed.add(legacy)
    kept = {
        temporary(folder, f"{here}.{alive}.cc", OLD),  # in flight: its writer lives
        temporary(folder, f"{here}.{dead}.dd", 5),  # young
        temporary(folder, f"other-host.{dead}.ee", OLD),  # another host's, not old enough
    }
    worker = tmp_path / "runs" / "run-1"
    worker.mkdir(parents=True)
    removed.add(temporary(worker, f"{here}.{dead}.ff", OLD, "j000.json"))  # a worker manifest's
    assert results.remove_stale_temporaries(tmp_path) == len(removed)
    assert all(not p.exists() for p in removed) and all(p.exists() for p in kept)


def test_temporaries_are_unique_per_writer(tmp_path: Path) -> None:
    path = tmp_path / "t" / "part-x.parquet"
    names = {results.temporary(path).name for _ in range(50)}
    assert len(names) == 50
    match = results.TEMPORARY.match(names.pop())
    assert match and match["host"] == results.host() and int(match["pid"]) == os.getpid()
    results.write_part(path, [{"status": "ok", "unit_id": "u"}], SCHEMA)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert results.part_ok(path, "u") and not results.part_ok(path, "another unit")


def mount(target: Path, *options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(["size=64k", *options]), "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1]
        pytest.skip(f"cannot mount a tmpfs here ({reason})")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (tests and CI run as root), unmounted afterwards."""
    target = tmp_path / "tmpfs"
    mount(target)
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)


def fill(folder: Path) -> None:
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def run_tiny(out: Path) -> Report:
    task = Passkey(TaskOptions(lengths=(512, 600), samples=1))
    plan = build_plan(parse_models("tiny-pythia"), [parse_mitigation("none")], [task], "float32")
    return run_plan(plan, RunConfig(out=out, device="cpu", dtype="float32", backend="auto", seed=0))


def assert_unrecorded(report: Report) -> None:
    assert len(report.outcomes) == 2 and len(report.failed) == 2
    assert all(not o.recorded and o.status == "error" for o in report.outcomes)
    assert any("passkey" in p and "'length': 512" in p for p in report.problems)
    assert any("passkey" in p and "'length': 600" in p for p in report.problems)
    assert any(p.startswith("run manifest (") for p in report.problems)
    assert any(p.startswith("worker manifest j000 (") for p in report.problems)
    assert report.manifest is None


def test_full_disk_fails_the_units_not_the_run(
    tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(tmpfs)
    out = tmpfs / "results"
    out.mkdir()
    code = main(["run", "--models", "tiny-pythia", "--lengths", "512,600", "--samples", "1",
                 "--out", str(out)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [last] = [line for line in err.splitlines() if "units run" in line]
    assert "2 units run (2 failed)" in last and "not recorded:" in last
    assert "No space left on device" in last
    assert list(out.rglob("*.tmp")) == []
    assert_unrecorded(run_tiny(out))


def test_read_only_folder_fails_the_units_not_the_run(tmpfs: Path) -> None:
    (tmpfs / "results").mkdir()
    done = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here ({done.stderr.decode().strip()})")
    report = run_tiny(tmpfs / "results")
    assert_unrecorded(report)
    assert all("Read-only file system" in p for p in report.problems)


def test_output_under_a_regular_file_fails_the_units_not_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    report = run_tiny(blocker / "results")
    assert_unrecorded(report)
    assert blocker.read_text() == "not a folder"


def test_failure_row_is_written_where_the_part_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails for the ok rows (here: a part over the folder's size limit, as
    a quota would) leaves the unit's failure row when that one fits."""
    original = results.write_part

    def limited(path: Path, rows: list[dict], schema: pa.Schema) -> None:
        if len(rows) > 1 or rows[0]["status"] == "ok":
            raise OSError(28, "No space left on device", str(path))
        original(path, rows, schema)

    monkeypatch.setattr(results, "write_part", limited)
    report = run_tiny(tmp_path / "results")
    assert len(report.failed) == 2 and all(o.recorded for o in report.outcomes)
    assert report.problems == []
    rows = results.read_table(tmp_path / "results", "passkey").to_pylist()
    assert {r["status"] for r in rows} == {"error"} and len(rows) == 2
    assert all("No space left on device" in r["message"] for r in rows)


def test_two_runs_of_one_command_at_once_leave_each_unit_once(tmp_path: Path) -> None:
    out = tmp_path / "results"
    models = "tiny-mamba2,tiny-pythia"
    command = [sys.executable, "-m", "harness", "run", "--models", models, "--tasks", "passkey",
               "--lengths", "512,600", "--samples", "2", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert all("Traceback" not in e for e in errors)
    table = results.read_table(out, "passkey").to_pylist()
    keys = [(r["model"], r["length"], r["sample"]) for r in table]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2
    assert {r["status"] for r in table} == {"ok"}
    parts = list(out.rglob("part-*.parquet"))
    assert len(parts) == 4 and sum(pq.read_table(p).num_rows for p in parts) == 8  # all whole
    assert list(out.rglob("*.tmp")) == []
    assert 1 <= len(list((out / "runs").glob("*.json"))) <= 2


def test_read_table_passes_over_corrupt_parts_and_fills_missing_columns(tmp_path: Path) -> None:
    old = pa.schema([("status", pa.string())])  # a part written before model_id existed
    new = pa.schema([("status", pa.string()), ("model_id", pa.string())])
    results.write_part(results.part_path(tmp_path, "t", "a", "none", "1"), [{"status": "ok"}], old)
    row = {"status": "ok", "model_id": "abc"}
    results.write_part(results.part_path(tmp_path, "t", "b", "none", "2"), [row], new)
    results.part_path(tmp_path, "t", "c", "none", "3").parent.mkdir(parents=True)
    results.part_path(tmp_path, "t", "c", "none", "3").write_bytes(b"not parquet")
    rows = sorted(results.read_table(tmp_path, "t").to_pylist(), key=lambda r: r["model"])
    assert [(r["model"], r["model_id"]) for r in rows] == [("a", None), ("b", "abc")]
