"""What the mitigations read from a Mamba-2 model: its shape, its scan, its states.

The one place that knows the engine's attributes (`Mamba2LM.module.config`, `.backend`,
`.hooks`), so the mitigations themselves only speak in hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import torch

from harness.mitigations.base import MitigationError
from harness.models.recurrence import Hooks, ScanInputs, StateSnapshot

if TYPE_CHECKING:
    from harness.models.base import LanguageModel
    from harness.models.mamba2.lm import Mamba2LM

ScanFn = Callable[[ScanInputs, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def mamba2(model: LanguageModel) -> Mamba2LM:
    """`model` as a Mamba2LM, or a MitigationError naming the family it is."""
    from harness.models.mamba2.lm import Mamba2LM

    if not isinstance(model, Mamba2LM):
        raise MitigationError(
            f"this mitigation acts on Mamba-2 models; {model.info.name} is a {model.info.family}"
        )
    return model


def layer_count(model: LanguageModel) -> int:
    return mamba2(model).module.config.n_layer


def head_count(model: LanguageModel) -> int:
    return mamba2(model).module.config.nheads


def scan_function(model: LanguageModel) -> ScanFn:
    """The engine's scan dispatch with the model's backend and chunk size bound."""
    from harness.models.mamba2.ssd import scan

    lm = mamba2(model)
    return partial(scan, backend=lm.backend, chunk_size=lm.module.config.chunk_size)


@contextmanager
def installed(model: LanguageModel, hooks: Hooks | None) -> Iterator[None]:
    """Run with `hooks` on the model, then put back whatever was there."""
    lm = mamba2(model)
    before = lm.hooks
    lm.hooks = hooks
    try:
        yield
    finally:
        lm.hooks = before


@torch.inference_mode()
def final_state_norms(model: LanguageModel, ids: list[int], under: Hooks | None) -> torch.Tensor:
    """||h||_F per (layer, head) after feeding `ids` from the zero state, (n_layer, nheads).

    `under` (or no hook) is installed for the run, with an observer added at the last token.
    """
    norms = torch.zeros(layer_count(model), head_count(model))

    def observe(snapshot: StateSnapshot) -> None:
        if snapshot.position == len(ids):
            norms[snapshot.layer] = snapshot.stats()["norm"][0].float().cpu()

    base = under or Hooks()
    hooks = Hooks(transform_inputs=base.transform_inputs, observer=observe, interval=len(ids))
    with installed(model, hooks):
        model.prefill(ids)
    return norms


@torch.inference_mode()
def calibration_decays(
    model: LanguageModel, ids: list[int], under: Hooks | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (dt (T, h), dt * A (T, h)) of the scan while feeding `ids` (T tokens) from the
    zero state, as the scan saw them (after `under`'s input transforms)."""
    found: list[tuple[torch.Tensor, torch.Tensor]] = [None] * layer_count(model)  # type: ignore[list-item]

    def observe(snapshot: StateSnapshot) -> None:
        if snapshot.position == len(ids):
            dt = snapshot.dt[0].float()  # (T, h)
            A = snapshot.A if snapshot.A.dim() == 1 else snapshot.A[0]  # (h,) or (T, h)
            found[snapshot.layer] = (dt.cpu(), (dt * A.float()).cpu())

    base = under or Hooks()
    hooks = Hooks(transform_inputs=base.transform_inputs, observer=observe, interval=len(ids))
    with installed(model, hooks):
        model.prefill(ids)
    return found
