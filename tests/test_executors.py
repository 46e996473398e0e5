"""The driver and the local executor: packing, --dry-run, status, worker processes, early
stop, the out-of-memory retry, flag checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import tasks.perplexity
from harness.cli import main
from harness.executors.packing import pack, unit_cost
from harness.plan import build_plan, parse_models
from harness.results import read_table
from tasks.base import TaskOptions
from tasks.passkey import Passkey


def parts(out: Path) -> list[Path]:
    return sorted(out.rglob("part-*.parquet"))


def run(out: Path, *extra: str, models: str = "tiny-mamba2,tiny-pythia") -> int:
    return main(["run", "--models", models, "--samples", "1", "--out", str(out), *extra])


def test_packing_keeps_one_model_per_job_and_balances() -> None:
    options = TaskOptions(lengths=(256, 512, 1024, 2048), samples=1)
    plan = build_plan(
        parse_models("tiny-mamba2,tiny-pythia"), _none(), [Passkey(options)], "float32"
    )
    one = pack(plan.units, slots=1, keep_series=False)
    assert [len(job) for job in one] == [4, 4]  # one job (one load) per model
    two = pack(plan.units, slots=2, keep_series=False)
    assert all(len({u.model.name for u in job}) == 1 for job in two)
    assert len(two) > 2 and sorted(u.id for job in two for u in job) == sorted(
        u.id for u in plan.units
    )
    costs = [sum(map(unit_cost, job)) for job in two]
    assert costs == sorted(costs, reverse=True)  # largest first
    kept = pack(plan.units, slots=2, keep_series=True)
    assert [len(job) for job in kept] == [4, 4]  # a series stays whole for the early stop
    lengths = [u.params["length"] for u in kept[0]]
    assert lengths == sorted(lengths)


def test_attention_cost_grows_faster_than_linear() -> None:
    options = TaskOptions(lengths=(1024, 8192), samples=1)
    plan = build_plan(
        parse_models("tiny-mamba2,tiny-pythia"), _none(), [Passkey(options)], "float32"
    )
    cost = {(u.model.name, u.params["length"]): unit_cost(u) for u in plan.units}
    assert cost["tiny-mamba2", 8192] == pytest.approx(8 * cost["tiny-mamba2", 1024])
    assert cost["tiny-pythia", 8192] > 8 * cost["tiny-pythia", 1024]


def test_dry_run_prints_jobs_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert run(out, "--lengths", "300,512", "--workers", "2", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "jobs for 4 units" in printed and "est." in printed and "tiny-pythia" in printed
    assert not out.exists()


def test_worker_processes_give_the_in_process_tables(
    one_thread: None, tmp_path: Path, table_rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--tasks", "passkey,perplexity", "--lengths", "300,400")
    args += ("--mitigations", "none,state-norm,longmamba")  # these two calibrate on the model
    assert run(tmp_path / "one", *args) == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two GPUs named (none behind them here)
    assert run(tmp_path / "two", *args, "--workers", "2") == 0
    for table in ("passkey", "perplexity"):
        pd.testing.assert_frame_equal(
            table_rows(tmp_path / "one", table), table_rows(tmp_path / "two", table)
        )
    manifests = sorted((tmp_path / "two" / "runs").glob("*/*.json"))
    run_manifest = json.loads(next((tmp_path / "two" / "runs").glob("*.json")).read_text())
    assert len(manifests) == len(run_manifest["jobs"]) > 2
    assert run_manifest["units"]["run"] == 16  # every outcome came back from the workers
    assert {m.parent.name for m in manifests} == {run_manifest["run_id"]}
    workers = [json.loads(m.read_text()) for m in manifests]
    assert {w["device"] for w in workers} == {"cpu"} and len({w["pid"] for w in workers}) == 2
    assert {w["cuda_visible_devices"] for w in workers} == {"0", "1"}  # one GPU per worker


def test_status_names_done_failed_and_missing_units(
    one_thread: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert run(out, "--lengths", "300,400") == 0
    capsys.readouterr()
    assert main(["status", "--out", str(out)]) == 0
    assert "4 units: 4 done, 0 skipped, 0 failed, 0 missing" in capsys.readouterr().out
    lost = parts(out)[0]
    lost.unlink()
    assert main(["status", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "3 done, 0 skipped, 0 failed, 1 missing" in printed and "missing: tiny-" in printed
    assert run(out, "--lengths", "300,400") == 0  # the same command runs what is missing
    assert lost.is_file()


def test_status_says_when_a_running_run_lost_its_driver_and_survives_a_closed_pipe(
    one_thread: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    assert run(out, "--lengths", "300") == 0
    manifest = next((out / "runs").glob("*.json"))
    written = json.loads(manifest.read_text())
    assert written["driver"] == {"host": os.uname().nodename, "pid": os.getpid()}
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    written |= {"state": "running", "driver": {**written["driver"], "pid": int(gone.stdout)}}
    manifest.write_text(json.dumps(written))  # as a driver killed with -9 leaves it
    capsys.readouterr()
    assert main(["status", "--out", str(out)]) == 0
    assert f"stopped: its driver, pid {int(gone.stdout)}, is gone" in capsys.readouterr().out
    closed = subprocess.run(  # a reader gone before the first line: no traceback
        f"{sys.executable} -m harness status --out {out} | true",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert closed.stderr == ""


def test_status_of_a_folder_without_runs_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["status", "--out", str(tmp_path)]) == 2


def test_early_stop_skips_longer_lengths_after_k_at_chance(
    one_thread: None, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    lengths = ("--lengths", "350,300,400,450")  # run in ascending order whatever the order
    # tiny-mamba2 has random weights: the key's log-probability is far below chance
    args = (*lengths, "--stop-after-fails", "2")
    assert run(out, *args, models="tiny-mamba2") == 0
    rows = read_table(out, "passkey").to_pylist()
    status = {r["length"] if r["status"] == "ok" else _length(r): r for r in rows}
    assert [status[n]["status"] for n in (300, 350, 400, 450)] == ["ok", "ok", "skipped", "skipped"]
    assert "2 lengths in a row at or below chance (300, 350)" in status[450]["message"]
    before = {p: p.stat().st_mtime_ns for p in parts(out)}
    assert run(out, *args, models="tiny-mamba2") == 0  # the same command: nothing to do
    assert {p: p.stat().st_mtime_ns for p in parts(out)} == before
    assert run(out, *lengths, "--stop-after-fails", "3", models="tiny-mamba2") == 0
    statuses = {_length(r): r["status"] for r in read_table(out, "passkey").to_pylist()}
    assert statuses == {300: "ok", 350: "ok", 400: "ok", 450: "skipped"}
    assert run(out, *lengths, models="tiny-mamba2") == 0  # without the stop: everything runs
    assert {r["status"] for r in read_table(out, "passkey").to_pylist()} == {"ok"}


def test_out_of_memory_is_retried_once_with_half_the_chunk(
    one_thread: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tasks.perplexity.loss_buckets
    chunks = []

    def needs_small_chunks(model, ids, bucket, chunk, progress, what):
        chunks.append(chunk)
        if chunk > 128:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(model, ids, bucket, chunk, progress, what)

    monkeypatch.setattr(tasks.perplexity, "loss_buckets", needs_small_chunks)
    out = tmp_path / "results"
    for chunk in (256, 512):
        option = ("--option", f"perplexity.chunk={chunk}")
        code = run(out, "--tasks", "perplexity", "--lengths", "300", *option, models="tiny-mamba2")
        assert code == (0 if chunk == 256 else 1)
    assert chunks == [256, 128, 512, 256]
    rows = read_table(out, "perplexity").to_pylist()
    by_chunk = {json.loads(r["unit_params"])["chunk"]: r for r in rows}
    assert by_chunk[256]["status"] == "ok"
    assert by_chunk[256]["message"] == "ran with chunk=128 after running out of memory at 256"
    assert by_chunk[512]["status"] == "oom"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--stop-after-fails", "0"], "--stop-after-fails must be at least 1"),
        (["--device", "cuda:x"], "bad --device 'cuda:x'"),
        (["--ray-address", "127.0.0.1:1"], "--ray-address needs --executor ray"),
        (["--slurm-partition", "gpu"], "--slurm-partition needs --executor slurm"),
        (["--detach"], "--detach needs --executor ray or slurm"),
    ],
)
def test_bad_executor_flags_stop_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "results"
    assert run(out, *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _length(row: dict) -> int:
    return json.loads(row["unit_params"])["length"]


def _none() -> list:
    from harness.plan import parse_mitigation

    return [parse_mitigation("none")]


def test_killed_local_worker_is_replaced_and_nothing_is_lost(tmp_path: Path, table_rows) -> None:
    """SIGKILL one of two worker processes mid-run: a fresh pool runs the unfinished jobs."""
    args = ["--models", "tiny-mamba2,tiny-pythia", "--lengths", "300,400,500"]
    args += ["--samples", "2", "--tasks", "passkey"]
    assert main(["run", *args, "--out", str(tmp_path / "one")]) == 0
    out = tmp_path / "two"
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *args, "--workers", "2", "--out", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    killed = None
    while killed is None and time.time() < deadline and driver.poll() is None:
        workers = [p for p in children(driver.pid) if b"spawn_main" in cmdline(p)]
        if len(workers) == 2 and parts(out):
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.05)
    log, _ = driver.communicate(timeout=600)
    assert killed is not None, log
    assert driver.returncode == 0, log
    expected = table_rows(tmp_path / "one", "passkey")
    pd.testing.assert_frame_equal(table_rows(out, "passkey"), expected)
    assert not list(out.rglob("*.tmp"))


def children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state: ppid
            found.append(int(proc.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
