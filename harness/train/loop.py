"""The training loop: truncated backpropagation through time over chained segments.

Each sample is `segments` x `segment_length` tokens. The segments go through the model in
order, the state of one handed to the next and detached from the graph in between (paper-
notes section 3.4): the model learns from states it built over the whole sample, gradients
stay within a segment. A segment without loss targets (e.g. a passkey haystack when the loss
is on the answer only) runs without a graph. The loss is the mean over samples of each
sample's mean target loss, so a passkey sample scored on its 6 answer tokens weighs as much as
a text sample scored on all of them. AdamW with weight decay on matrices, gradient clipping,
a WSD schedule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.train import checkpoint
from harness.train.data import Batch, Mixture
from harness.train.models import RECURRENT, Trainable, detach_state
from harness.train.schedule import WSD

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "training.json"
FINAL_FRACTION = 0.1  # the final loss is the mean over this last fraction of the steps


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    steps: int
    batch_size: int
    segment_length: int  # T
    segments: int  # P
    lr: float
    min_lr: float
    warmup: int
    decay: float  # fraction of the steps spent decaying
    weight_decay: float
    clip: float
    seed: int
    save_every: int  # steps between checkpoints (the last step is always saved)
    device: str = "cpu"

    @property
    def sample_length(self) -> int:
        return self.segment_length * self.segments

    def settings(self) -> dict[str, Any]:
        """What a resumed run must repeat (save_every and device may change)."""
        skip = {"out", "save_every", "device"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class StepLog:
    step: int
    lr: float
    loss: float  # mean over the batch's samples of their mean target loss
    by_source: dict[str, float]  # the same, per data source present in the batch
    grad_norm: float


class Trainer:
    def __init__(
        self, model: Trainable, data: Mixture, config: TrainConfig, meta: dict[str, Any]
    ) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.meta = meta  # recorded in training.json (command line, data specs...)
        self.device = torch.device(config.device)
        self.model.module.to(self.device).train()
        self.schedule = WSD(config.lr, config.steps, config.warmup, config.decay, config.min_lr)
        self.optimizer = make_optimizer(model.module, config.lr, config.weight_decay)

    def run(self, resume: bool) -> dict[str, Any]:
        """Train to `config.steps`, from the saved state when `resume`; return the summary."""
        out = self.config.out
        out.mkdir(parents=True, exist_ok=True)
        start = 0
        if resume and checkpoint.has_state(out):
            settings = self.config.settings()
            start = checkpoint.restore(out, self.model, self.optimizer, settings).step
            self.model.module.to(self.device)
        self._truncate_log(start)
        began = time.monotonic()
        bar = tqdm(range(start, self.config.steps), initial=start, total=self.config.steps)
        for step in bar:
            log = self.train_step(step)
            bar.set_postfix(loss=f"{log.loss:.4f}", lr=f"{log.lr:.2e}")
            self._append_log(log)
            done = step + 1
            if done % self.config.save_every == 0 or done == self.config.steps:
                self._save(done)
        summary = self.summary(time.monotonic() - began)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def train_step(self, step: int) -> StepLog:
        config = self.config
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.data.batch(config.seed, step, config.batch_size, config.sample_length)
        row_losses = self.tbptt(batch)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.module.parameters(), config.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepLog(
            step=step,
            lr=lr,
            loss=float(row_losses.mean()),
            by_source=self._by_source(batch, row_losses),
            grad_norm=float(grad_norm),
        )

    def tbptt(self, batch: Batch) -> torch.Tensor:
        """Forward and backward over the segments of `batch`; each row's mean target loss."""
        ids, mask = batch.ids.to(self.device), batch.mask.to(self.device)
        row_weights = 1 / (mask.sum(1, keepdim=True).clamp(min=1) * len(ids))
        row_losses = torch.zeros(len(ids))
        state = self.model.initial_state(len(ids))
        for inputs, targets, weights in segments(ids, mask, self.config.segment_length):
            with torch.set_grad_enabled(bool(weights.any())):
                logits, state = self.model.forward(inputs, state)
                losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
                losses = losses * weights * row_weights
                if losses.requires_grad:
                    losses.sum().backward()
            row_losses += losses.detach().sum(1).cpu() * len(ids)
            state = detach_state(state)
        return row_losses

    def _by_source(self, batch: Batch, row_losses: torch.Tensor) -> dict[str, float]:
        return {
            source.name: float(row_losses[batch.source == index].mean())
            for index, source in enumerate(self.data.sources)
            if (batch.source == index).any()
        }

    def _truncate_log(self, start: int) -> None:
        """Drop log lines of steps at or after `start` (logged after the last checkpoint)."""
        path = self.config.out / LOG_FILE
        kept = [log for log in read_log(path) if log["step"] < start] if path.exists() else []
        path.write_text("".join(json.dumps(log) + "\n" for log in kept))

    def _append_log(self, log: StepLog) -> None:
        with (self.config.out / LOG_FILE).open("a") as f:
            f.write(json.dumps(asdict(log)) + "\n")

    def _save(self, step: int) -> None:
        extra = train_context(self.model, self.config) | {"train_steps": step}
        checkpoint.save(
            self.config.out, self.model, self.optimizer, step, self.config.settings(), extra
        )

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        """Settings, size, tokens and the final losses (mean over the last steps)."""
        logs = read_log(self.config.out / LOG_FILE)
        last = logs[-max(1, round(FINAL_FRACTION * len(logs))) :]
        sources = sorted({name for log in last for name in log["by_source"]})
        final = {
            name: _mean([log["by_source"][name] for log in last if name in log["by_source"]])
            for name in sources
        }
        config = self.config
        return {
            **self.meta,
            "family": self.model.family,
            "params": sum(p.numel() for p in self.model.module.parameters()),
            "state_size": self.model.state_size,
            **train_context(self.model, config),
            "settings": config.settings(),
            "tokens": config.steps * config.batch_size * config.sample_length,
            "wall_seconds_last_session": round(wall_seconds, 1),
            "final_loss": _mean([log["loss"] for log in last]),
            "final_loss_by_source": final,
            "final_loss_steps": [last[0]["step"], last[-1]["step"]],
        }


def segments(
    ids: torch.Tensor, mask: torch.Tensor, length: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(inputs, targets, loss weights) of each consecutive `length`-token segment."""
    for start in range(0, mask.shape[1], length):
        end = start + length
        yield ids[:, start:end], ids[:, start + 1 : end + 1], mask[:, start:end].float()


def make_optimizer(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on every parameter of two or more dimensions: the matrices and
    embeddings, and also Mamba-1's A_log (d_inner, d_state) and RWKV-6's bonus time_faaaa
    (heads, head size), as the bundled toys were trained; none on norms, biases, Mamba-2's
    A_log, D and dt_bias, Mamba-1's D, RWKV-6's time_decay."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train_context(model: Trainable, config: TrainConfig) -> dict[str, int]:
    """config.json keys: the length the model learned over (all segments when a state is
    carried, one segment for GPT-NeoX, whose segments are independent)."""
    carried = model.family in RECURRENT
    return {
        "train_context": config.sample_length if carried else config.segment_length,
        "train_segment_length": config.segment_length,
        "train_segments": config.segments,
    }


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
