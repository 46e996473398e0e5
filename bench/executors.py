"""Executors: units per second with 2 local worker processes vs 1 process, Ray's overhead
per job, and what the paper's grid would cost on 64 GPUs.

    python bench/executors.py                          # local workers + the grid estimate
    RAY_AUTH_MODE=disabled python bench/executors.py --ray-address "$(cat /tmp/ray/address)"

1. One plan of tiny-model units that keeps two workers busy (tiny-mamba2 and tiny-pythia,
   passkey and perplexity, 4 lengths), run by `harness run` in one process (the default) and
   with `--workers 2`, each into a fresh folder: units per second and the ratio (goal >=1.7x
   on 2 cores). Both runs go through the CLI in this process; the worker processes start
   fresh (imports included in their time).
2. Ray: a plan of --ray-jobs one-unit jobs (tiny-mamba2, passkey, one length each) on an
   already running cluster (scripts/cluster/ray.sh), beside the same plan in one local
   process. Per-job overhead: on each Ray worker process, the gap between the end of one
   job and the start of the next (dispatch, transfer, set-up), from the worker manifests;
   apart, the time until each worker's first job (its start-up: once per run). Goal < 0.5 s.
   And Ray's floor: an empty task's round trip.
3. The paper's grid (5 Mamba-2 + 5 Pythia sizes; none and 5 mitigations on the Mamba-2s;
   passkey, perplexity, state-stats; 11 lengths 1K..1M) packed for 64 GPUs by the
   executors' own packer: total estimated cost, the largest job, the 64-slot makespan of
   the packing (largest-first), and hours at a stated per-GPU throughput.
The machine's load average is printed beside every figure: on a shared machine it matters.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import time
from datetime import datetime
from itertools import pairwise

from harness_runs import load, timed_run

from harness.executors.packing import pack, unit_cost
from harness.plan import Unit, build_plan, parse_mitigation, parse_models, parse_tasks
from tasks.base import TaskOptions

TINY = ["--models", "tiny-mamba2,tiny-pythia", "--tasks", "passkey,perplexity"]
LOCAL_PLAN = [*TINY, "--lengths", "512,1k,1536,2k", "--samples", "3"]
GRID_MAMBA2 = "mamba2-130m,mamba2-370m,mamba2-780m,mamba2-1.3b,mamba2-2.7b"
GRID_PYTHIA = "pythia-160m,pythia-410m,pythia-1b,pythia-1.4b,pythia-2.8b"
GRID_MITIGATIONS = "none,rri,dt-scale,a-scale,state-norm,window"
GRID_LENGTHS = tuple(1024 * 2**k for k in range(11))  # 1K .. 1M
GRID_TASKS = "passkey,perplexity,state-stats"  # state-stats: Mamba-2 only
GRID_SAMPLES = 10  # passkey samples per length


def local_workers() -> None:
    one, manifest, _ = timed_run(LOCAL_PLAN)
    units = manifest["units"]["run"]
    before = load()
    two, _, _ = timed_run([*LOCAL_PLAN, "--workers", "2"])
    print(
        f"local: {units} units; 1 process {one:.1f} s ({units / one:.2f} units/s); "
        f"--workers 2 {two:.1f} s ({units / two:.2f} units/s); speed-up {one / two:.2f}x "
        f"(goal >= 1.7x); {before} / {load()}"
    )


def ray_overhead(address: str, jobs: int) -> None:
    """The plan on the cluster: whole-run figures, then from the worker manifests the gap
    between one job's end and the next job's start on the same worker process (Ray's
    dispatch, the job's transfer and set-up: the per-job overhead of a long run) and the
    time until each worker's first job starts (worker start-up, imports: once per run)."""
    lengths = ",".join(str(300 + 10 * i) for i in range(jobs))
    plan = ["--models", "tiny-mamba2", "--tasks", "passkey", "--lengths", lengths]
    plan += ["--samples", "1"]
    local, _, _ = timed_run(plan)
    started = time.time()
    wall, manifest, out = timed_run(
        [*plan, "--executor", "ray", "--ray-address", address, "--workers", str(jobs)]
    )
    found = [json.loads(p.read_text()) for p in (out / "runs" / manifest["run_id"]).glob("*")]
    gaps, first = [], []
    for pid in {w["pid"] for w in found}:
        runs = sorted(
            (datetime.fromisoformat(w["started_at"]).timestamp(), w["wall_time_s"])
            for w in found
            if w["pid"] == pid
        )
        first.append(runs[0][0] - started)
        gaps += [b[0] - (a[0] + a[1]) for a, b in pairwise(runs)]
    work = sum(w["wall_time_s"] for w in found)
    print(
        f"ray: {len(found)} one-unit jobs on 2 slots in {wall:.1f} s (the same units in one "
        f"local process: {local:.1f} s; the jobs' own time {work:.1f} s); per-job overhead "
        f"between jobs on a worker: mean {sum(gaps) / len(gaps):.3f} s, max {max(gaps):.3f} s "
        f"(goal < 0.5 s); until each worker's first job: {', '.join(f'{t:.1f}' for t in first)} "
        f"s (start-up, once per run); {load()}"
    )
    print(f"ray: a no-op task's round trip on this cluster {noop_round_trip(address):.4f} s")


def _noop() -> None:
    return None


def noop_round_trip(address: str, calls: int = 20) -> float:
    """Ray's own floor: the mean round trip of an empty task, one after the other."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="warning")
    try:
        task = ray.remote(num_cpus=1)(_noop)
        ray.get(task.remote())  # a worker started
        started = time.perf_counter()
        for _ in range(calls):
            ray.get(task.remote())
        return (time.perf_counter() - started) / calls
    finally:
        ray.shutdown()


def grid_units(pythia_up_to: int) -> list[Unit]:
    """The grid; Pythia's lengths up to `pythia_up_to` tokens (0: no Pythia)."""
    options = TaskOptions(lengths=GRID_LENGTHS, samples=GRID_SAMPLES)
    mitigations = [parse_mitigation(s) for s in GRID_MITIGATIONS.split(",")]
    mamba2 = build_plan(
        parse_models(GRID_MAMBA2), mitigations, parse_tasks(GRID_TASKS, options), "float32"
    )
    if not pythia_up_to:
        return mamba2.units
    lengths = tuple(n for n in GRID_LENGTHS if n <= pythia_up_to)
    short = TaskOptions(lengths=lengths, samples=GRID_SAMPLES)
    pythia = build_plan(
        parse_models(GRID_PYTHIA),
        mitigations,
        parse_tasks("passkey,perplexity", short),
        "float32",
        strict=False,
    )
    return [*mamba2.units, *pythia.units]


def grid_estimate(name: str, units: list[Unit], gpus: int, param_tokens_per_s: float) -> None:
    jobs = pack(units, slots=gpus, keep_series=False)
    costs = sorted((sum(map(unit_cost, job)) for job in jobs), reverse=True)
    slots = [0.0] * gpus
    for cost in costs:  # largest first onto the least loaded GPU, as the engines hand them out
        heapq.heapreplace(slots, slots[0] + cost)
    total, makespan = sum(costs), max(slots)
    hours = makespan / param_tokens_per_s / 3600
    print(
        f"{name}: {len(units)} units in {len(jobs)} jobs, total {total:.3g} param-tokens, "
        f"largest job {costs[0]:.3g}, {gpus}-GPU makespan {makespan:.3g} "
        f"({total / gpus / makespan:.0%} of perfect balance); at {param_tokens_per_s:.3g} "
        f"param-tokens/s per GPU: {hours:.1f} h wall, {hours * gpus:.0f} GPU-hours"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ray-address", help="a running Ray cluster (else Ray is not measured)")
    parser.add_argument("--ray-jobs", type=int, default=16)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument(
        "--param-tokens-per-s",
        type=float,
        default=1e13,
        help="per-GPU throughput for the estimate (forward ~2 FLOPs per parameter and token: "
        "1e13 is ~30%% of an H100's 67 float32 TFLOP/s)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.skip_local:
        local_workers()
    if args.ray_address:
        ray_overhead(args.ray_address, args.ray_jobs)
    grids = (
        ("paper grid, Pythia to 1M", GRID_LENGTHS[-1]),
        ("paper grid, Pythia to 32K", 32768),
        ("Mamba-2 part alone", 0),
    )
    for name, pythia_up_to in grids:
        grid_estimate(name, grid_units(pythia_up_to), args.gpus, args.param_tokens_per_s)


if __name__ == "__main__":
    cli()
