"""The `harness` lm-eval model under data parallel: two real processes joined by
torch.distributed (Gloo, as `accelerate launch --cpu` sets them up) split the requests and
rank 0 gathers the same results as one process."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from harness.lm_eval import distributed
from harness.lm_eval.model import HarnessLM

PASSKEY = {"max_seq_lengths": [512, 600], "samples": 2, "seed": 7}


class Counting(HarnessLM):
    """The harness model, counting the generation requests this rank receives."""

    seen = 0

    def generate_until(self, requests, disable_tqdm: bool = False):  # type: ignore[override]
        self.seen += len(requests)
        return super().generate_until(requests, disable_tqdm)


def evaluate(model: HarnessLM) -> dict[str, Any] | None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from harness.lm_eval import include_path

    manager = TaskManager(
        include_path=str(include_path()),
        include_defaults=False,
        metadata={"model": "tiny-pythia", **PASSKEY},
    )
    return simple_evaluate(
        model=model,
        tasks=["harness_passkey"],
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=True,
    )


def rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        HF_HUB_OFFLINE="1",
    )
    model = Counting(model="tiny-pythia", device="cpu")
    results = evaluate(model)
    found = {"rank": model.rank, "world_size": model.world_size, "seen": model.seen}
    if results is not None:
        metrics = results["results"]["harness_passkey"]
        found["acc"] = [metrics[f"{name},none"] for name in ("acc", "512", "600")]
        found["docs"] = sorted(
            (s["doc"]["length"], s["doc"]["sample"]) for s in results["samples"]["harness_passkey"]
        )
    Path(out, f"rank{rank}.json").write_text(json.dumps(found))


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 up), which the OS hands to any
    process binding port 0 (Ray's servers in CI among them) while the ranks are starting."""
    for port in random.sample(range(20000, 30000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


def test_ranks_come_from_the_launchers_environment() -> None:
    ranks = distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.parallel) == (3, 4, 1, True)
    assert distributed.device_for("cuda:0", ranks) == "cuda:1"
    assert distributed.device_for("cpu", ranks) == "cpu"
    assert not distributed.from_env({}).parallel


def test_two_ranks_split_the_requests_and_gather_on_rank_0(tmp_path: Path) -> None:
    single = Counting(model="tiny-pythia", device="cpu")
    alone = evaluate(single)
    assert alone is not None and single.seen == 4  # 2 lengths x 2 samples
    mp.spawn(rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["seen"]) for r in ranks] == [(0, 2, 2), (1, 2, 2)]
    assert "acc" not in ranks[1]  # only rank 0 reports
    metrics = alone["results"]["harness_passkey"]
    assert ranks[0]["acc"] == [metrics[f"{name},none"] for name in ("acc", "512", "600")]
    assert ranks[0]["docs"] == [[n, s] for n in (512, 600) for s in range(2)]
