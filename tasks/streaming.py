"""Long sequences through a model with the run's progress bar advancing as tokens go in.

The model interface chunks long sequences itself (`token_losses`, `prefill`) and reports
nothing until it returns; for a 1M-token document that is minutes without a sign of life.
`reporting` counts the tokens of every `forward` call the model makes while it is active,
so the bar shows throughput as the sequence streams, whatever the chunking.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from harness.models.base import LanguageModel, State
from tasks.base import Progress


@contextmanager
def reporting(model: LanguageModel, progress: Progress) -> Iterator[None]:
    """Advance `progress` by the tokens of each `forward` call of `model` inside the block."""
    forward = model.forward
    shadowed = "forward" in vars(model)  # already wrapped on this instance

    def counted(ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out = forward(ids, state)
        progress(ids.shape[-1])
        return out

    model.forward = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        if shadowed:
            model.forward = forward  # type: ignore[method-assign]
        else:
            del model.forward


def token_losses(
    model: LanguageModel, ids: torch.Tensor, chunk: int, progress: Progress
) -> torch.Tensor:
    """`model.token_losses(ids, chunk)`, reporting tokens to `progress` as they are scored."""
    with reporting(model, progress):
        return model.token_losses(ids, chunk=chunk)


def prefill(model: LanguageModel, ids: torch.Tensor, chunk: int, progress: Progress) -> State:
    """The state after `ids` (`model.prefill`), reporting tokens to `progress` as they go in."""
    with reporting(model, progress):
        return model.prefill(ids.tolist(), chunk=chunk)[1]
