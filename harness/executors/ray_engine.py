"""Ray: one Ray task per job, on an existing cluster (--ray-address, or RAY_ADDRESS) or on a
private one-machine cluster started for the run (--workers CPUs) and shut down after it.

Each task asks for one CPU and --gpus-per-worker GPUs (default: 1 when the cluster has GPUs
and --device is not cpu); Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigns, which the
worker takes as `cuda` and records in its manifest. A task whose worker dies is run again by
Ray up to --max-retries times (`max_retries`; the units it had written are skipped); after
that its job is reported lost and the next `harness run` of the same command runs what is
missing. Exceptions inside a job are not retried: units fail as rows there already.
The workers import `harness` themselves: on a multi-machine cluster install the same version
on every node, and give --out (and local model folders) on a filesystem they all see.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from harness.executors.base import Executor, ExecutorSettings, Finished
from harness.plan import UsageError
from harness.runner import Job, Progress, run_job


class RayExecutor(Executor):
    name = "ray"

    @classmethod
    def check(cls, settings: ExecutorSettings) -> None:
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--executor ray needs Ray: pip install 'harness[ray]'")

    def submit(self, jobs: Sequence[Job], progress: Progress) -> None:
        import ray

        address = self.settings.ray_address or os.environ.get("RAY_ADDRESS")
        self.scratch = None if address else tempfile.mkdtemp(prefix="harness-ray-")
        if self.scratch is not None:  # "local": never join a stale cluster by accident
            ray.init(
                address="local",
                num_cpus=self.settings.workers,
                include_dashboard=False,
                _temp_dir=self.scratch,
                log_to_driver=False,
                logging_level="warning",
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level="warning")
        gpus = self.settings.gpus_per_worker
        if gpus is None:
            has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            gpus = 1 if has_gpus and jobs and jobs[0].config.device != "cpu" else 0
        task = ray.remote(run_job).options(
            num_cpus=1, num_gpus=gpus, max_retries=self.settings.max_retries
        )
        self.refs: dict[Any, Job] = {task.remote(job): job for job in jobs}

    def wait(self, timeout: float) -> list[Finished]:
        import ray

        ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        finished = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                finished.append(Finished(job, ray.get(ref)))
            except ray.exceptions.RayError as err:
                why = (str(err).strip().splitlines() or [""])[0]
                finished.append(Finished(job, None, f"{type(err).__name__}: {why}"))
        return finished

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        for ref in getattr(self, "refs", {}):
            ray.cancel(ref, force=True)
        ray.shutdown()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
