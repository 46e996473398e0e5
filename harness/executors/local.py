"""This machine: jobs run in the driver's own process (one worker, today's behaviour, with
progress per token), or in `--workers N` worker processes. Worker processes are started
fresh (spawn) and keep running job after job; each takes an equal share of the CPU threads,
at most as many as the driver uses. With --device auto or cuda and several GPUs visible
(those of CUDA_VISIBLE_DEVICES, else all), worker k gets the k-th of them (round robin) as
its CUDA_VISIBLE_DEVICES, as a cluster engine would assign them; `--device cuda:N` pins
every worker to GPU N instead. A worker that dies (killed, out of host memory) breaks the
pool: the jobs it had not finished are handed to a fresh pool up to --max-retries times (the
units they had already written are not run again), then reported lost.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from multiprocessing.queues import Queue

import torch

from harness.executors.base import Executor, Finished
from harness.runner import Job, Progress, run_job


def _start_worker(threads: int, gpus: Queue | None) -> None:
    """Worker initializer: its share of the CPU cores, and its GPU (before CUDA starts)."""
    torch.set_num_threads(threads)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


class LocalExecutor(Executor):
    name = "local"

    def submit(self, jobs: Sequence[Job], progress: Progress) -> None:
        self.progress = progress
        self.queue = list(jobs)  # in-process: run in order, one per wait()
        self.tries = {job.id: 0 for job in jobs}
        self.pool: ProcessPoolExecutor | None = None
        self.futures: dict[Future, Job] = {}
        if self.settings.workers > 1:
            self._start_pool(self.queue)
            self.queue = []

    def _start_pool(self, jobs: Sequence[Job]) -> None:
        workers = self.settings.workers
        # an equal share of the cores, no more than this process uses (OMP_NUM_THREADS)
        threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // workers))
        context = get_context("spawn")
        gpus = visible_gpus() if jobs[0].config.device in ("auto", "cuda") else []
        queue = context.Queue() if gpus else None
        for k in range(workers if gpus else 0):
            queue.put(gpus[k % len(gpus)])
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(threads, queue),
        )
        for job in jobs:
            self.tries[job.id] += 1
            self.futures[self.pool.submit(run_job, job)] = job

    def wait(self, timeout: float) -> list[Finished]:
        if self.pool is None:
            job = self.queue.pop(0)
            try:
                return [Finished(job, run_job(job, self.progress))]
            except Exception as err:  # the job's own bookkeeping failed (units fail as rows)
                return [Finished(job, None, f"{type(err).__name__}: {err}")]
        done, _ = wait_futures(self.futures, timeout=timeout, return_when=FIRST_COMPLETED)
        finished, broken = [], []
        for future in done:
            job = self.futures.pop(future)
            try:
                finished.append(Finished(job, future.result()))
            except BrokenProcessPool:
                broken.append(job)
            except Exception as err:
                finished.append(Finished(job, None, f"{type(err).__name__}: {err}"))
        if broken:
            finished += self._restart(broken)
        return finished

    def _restart(self, broken: list[Job]) -> list[Finished]:
        """A worker died: every job not finished is lost to the old pool; retry them."""
        broken += list(self.futures.values())
        self.futures = {}
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        retry = [job for job in broken if self.tries[job.id] <= self.settings.max_retries]
        lost = [job for job in broken if self.tries[job.id] > self.settings.max_retries]
        if retry:
            self._start_pool(retry)
        return [Finished(job, None, "a worker process died (retries used up)") for job in lost]

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
