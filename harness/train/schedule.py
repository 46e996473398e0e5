"""Warmup-stable-decay learning rate: a linear warmup, a constant plateau, a linear decay.

The rate is a pure function of the step, so resuming needs nothing but the step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WSD:
    lr: float  # plateau rate
    steps: int  # total optimizer steps
    warmup: int  # steps of linear warmup from lr / warmup
    decay: float  # fraction of `steps` at the end spent decaying linearly to `min_lr`
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not 0 <= self.decay <= 1:
            raise ValueError(f"decay fraction must be in [0, 1], got {self.decay}")
        if self.warmup < 0 or self.warmup > self.steps:
            raise ValueError(f"warmup must be in [0, steps={self.steps}], got {self.warmup}")

    def __call__(self, step: int) -> float:
        """The rate of optimizer step `step` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        decay_steps = round(self.decay * self.steps)
        decay_start = self.steps - decay_steps
        if step < decay_start or decay_steps == 0:
            return self.lr
        done = (step - decay_start + 1) / decay_steps
        return self.lr + (self.min_lr - self.lr) * min(done, 1.0)
