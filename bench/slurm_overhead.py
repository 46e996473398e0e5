"""Slurm executor: overhead per job on a running Slurm cluster, against the same units in one
local process.

    scripts/cluster/slurm.sh start            # as root; a one-node cluster (2 CPUs here)
    python bench/slurm_overhead.py --jobs 16

A plan of --jobs one-unit jobs (tiny-mamba2, passkey, one sample, one length each) runs
1. in one local process (the default executor), then
2. with `--executor slurm --workers JOBS` (packed one unit per job; the node's CPUs are the
   slots: Slurm runs that many jobs at once).
Overhead per job = (Slurm's wall time x slots - the jobs' own time) / jobs: what a slot spends
per job on anything but the job itself (sbatch, scheduling, srun, the worker's Python start
and imports, pickles on disk, the driver noticing the result). Goal < 2 s. Two parts of it are
timed apart, to say where it goes: a fresh Python importing the worker's modules (torch
and harness.runner; paid by every job of any engine that starts a process per job), and an
`srun -n1 true` round trip (Slurm's own start and end of a job step). The jobs' own time
is each worker manifest's wall_time_s (model load and units). Both runs use one thread per
process (OMP_NUM_THREADS=1), as the Slurm jobs do (--cpus-per-task 1). The machine's load
average is printed beside every figure: on a shared machine it matters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from harness_runs import load, timed_run


def seconds(command: list[str], repeat: int = 3) -> float:
    """Median wall seconds of a command."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def slots() -> int:
    """Jobs the cluster runs at once: the CPUs of its nodes (each job takes one)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0].split("/")[-1])  # allocated/idle/other/total


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=16, help="one-unit jobs")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    lengths = ",".join(str(300 + 10 * i) for i in range(args.jobs))
    plan = ["--models", "tiny-mamba2", "--tasks", "passkey", "--lengths", lengths]
    plan += ["--samples", "1"]
    local, _, _ = timed_run(plan)
    print(f"local: {args.jobs} units in one process {local:.1f} s; {load()}")
    wall, manifest, out = timed_run([*plan, "--executor", "slurm", "--workers", str(args.jobs)])
    workers = list((out / "runs" / manifest["run_id"]).glob("*.json"))
    work = sum(json.loads(p.read_text())["wall_time_s"] for p in workers)
    ran, width = len(manifest["jobs"]), slots()
    overhead = (wall * width - work) / ran
    print(
        f"slurm: {ran} one-unit jobs on {width} slots in {wall:.1f} s (the same units in one "
        f"local process: {local:.1f} s, {wall / local:.1f}x); the jobs' own time {work:.1f} s; "
        f"overhead per job {overhead:.2f} s (goal < 2 s); {load()}"
    )
    imports = seconds([sys.executable, "-c", "import harness.runner"])
    step = seconds(["srun", "-n1", "true"])
    print(
        f"of which: a fresh Python importing torch and harness.runner {imports:.2f} s; "
        f"srun -n1 true {step:.2f} s; the rest {overhead - imports:.2f} s; {load()}"
    )


if __name__ == "__main__":
    cli()
