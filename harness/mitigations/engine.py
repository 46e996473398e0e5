"""What the mitigations read from a recurrent model (Mamba-2, Mamba-1, RWKV-6): its shape,
its scan, its states.

The one place that knows the families' attributes (`RecurrentLM.module.config`, `.scan`,
`.hooks`), so the mitigations themselves only speak in hooks (harness/models/recurrence.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from harness.mitigations.base import MitigationError
from harness.models.recurrence import Hooks, ScanInputs, StateSnapshot

if TYPE_CHECKING:
    from harness.models.base import LanguageModel, RecurrentLM

ScanFn = Callable[[ScanInputs, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def recurrent(model: LanguageModel) -> RecurrentLM:
    """`model` as a RecurrentLM, or a MitigationError naming the family it is."""
    from harness.models.base import RecurrentLM

    if not isinstance(model, RecurrentLM):
        raise MitigationError(
            f"this mitigation acts on recurrent models; {model.info.name} is a {model.info.family}"
        )
    return model


def layer_count(model: LanguageModel) -> int:
    return recurrent(model).module.config.n_layer


def head_count(model: LanguageModel) -> int:
    """Heads of the recurrence core per layer (Mamba-1: one per channel)."""
    return recurrent(model).heads


def scan_function(model: LanguageModel) -> ScanFn:
    """The family's own scan, with the model's backend bound (Mamba-2)."""
    return recurrent(model).scan


@contextmanager
def installed(model: LanguageModel, hooks: Hooks | None) -> Iterator[None]:
    """Run with `hooks` on the model, then put back whatever was there."""
    lm = recurrent(model)
    before = lm.hooks
    lm.hooks = hooks
    try:
        yield
    finally:
        lm.hooks = before


@torch.inference_mode()
def final_state_norms(model: LanguageModel, ids: list[int], under: Hooks | None) -> torch.Tensor:
    """||h||_F per (layer, head) after feeding `ids` from the zero state, (n_layer, heads).

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
    """Per layer, (dt (T, h), dt * A (T, h) or (T, h, n)) of the scan while feeding `ids`
    (T tokens) from the zero state, as the scan saw them (after `under`'s input transforms)."""
    found: list[tuple[torch.Tensor, torch.Tensor]] = [None] * layer_count(model)  # type: ignore[list-item]

    def observe(snapshot: StateSnapshot) -> None:
        if snapshot.position == len(ids):
            dt, dtA = snapshot.dt[0].float(), snapshot.log_alpha()[0].float()
            found[snapshot.layer] = (dt.cpu(), dtA.cpu())

    base = under or Hooks()
    hooks = Hooks(transform_inputs=base.transform_inputs, observer=observe, interval=len(ids))
    with installed(model, hooks):
        model.prefill(ids)
    return found
