"""bench/gpu_check.py on CPU at tiny sizes (--device cpu --tiny): the code a lent GPU runs, every
family's parity checks and benchmark sweeps, through the script itself in a fresh process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAMILY_ENGINES = {
    "mamba2": {"ours-torch", "transformers"},
    "mamba1": {"ours", "transformers"},
    "rwkv6": {"ours", "rwkv"},
}


def gpu_check(out: Path, *args: str, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny"]
    return subprocess.run(
        [*command, "--out", str(out), *args], env=env, capture_output=True, text=True
    )


def test_every_family_passes_parity_and_is_benchmarked(tmp_path: Path) -> None:
    done = gpu_check(tmp_path, "--lengths", "64,128")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    for family in ("mamba1", "rwkv6"):
        peer = "transformers" if family == "mamba1" else "rwkv"
        assert checks[f"{family}: ours vs {peer}, 2048 tokens"]["passed"] is True
        for part in ("last logits", "final state"):
            assert checks[f"{family}: 600 tokens in one pass vs in pieces ({part})"]["passed"]
    assert checks["torch vs transformers, 2048 tokens"]["passed"] is True
    assert checks["triton backend"]["passed"] is None  # no CUDA here
    assert all(c["passed"] is not False for c in report["checks"])
    got = {(f["family"], f["engine"], f["dtype"], f["tokens"]) for f in report["figures"]}
    want = {
        (family, engine, dtype, n)
        for family, engines in FAMILY_ENGINES.items()
        for engine in engines
        for dtype in ("float32", "bfloat16")
        for n in (64, 128)
    }
    assert got == want
    for f in report["figures"]:
        assert f["status"] == "ok" and f["tokens_per_s"] > 0 and f["peak_mib"] > 0, f
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| rwkv6 | tiny | bfloat16 | rwkv |" in table


def test_a_missing_peer_and_a_spent_budget_are_recorded(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "rwkv"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('rwkv is not installed here')\n")
    out = tmp_path / "out"
    done = gpu_check(
        out, "--families", "rwkv6", "--budget", "0", "--lengths", "64",
        pythonpath=str(blocked.parent),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    peer = [c for c in report["checks"] if "ours vs rwkv" in c["name"]]
    assert peer[0]["passed"] is None and "does not import" in peer[0]["detail"]
    assert all(c["passed"] for c in report["checks"] if c is not peer[0])  # the pieces check
    statuses = {(f["engine"], f["status"]) for f in report["figures"]}
    assert ("ours", "skipped: time budget spent") in statuses
    assert any(e == "rwkv" and "does not import" in s for e, s in statuses)


@pytest.mark.parametrize("families", ["mamba3", ""])
def test_unknown_families_are_refused(tmp_path: Path, families: str) -> None:
    done = gpu_check(tmp_path / "out", "--families", families)
    assert done.returncode == 2
    assert "choose from mamba2, mamba1, rwkv6" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_interrupted_run_writes_what_ran(tmp_path: Path) -> None:
    """SIGINT (gpu_check.sh's time limit) during the benchmarks: the parity checks and the
    figures so far are written, exit 3."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny"]
    command += ["--out", str(tmp_path), "--families", "mamba1", "--lengths", "64,1000000"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if "'tokens': 64," in line:  # the first figure: the 1M-token pass is under way
                break
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    assert process.returncode == 3
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["interrupted"].startswith("interrupted")
    assert len(report["checks"]) == 3 and all(c["passed"] for c in report["checks"])
    assert [f["tokens"] for f in report["figures"]] == [64]
