"""Hook points of the Mamba-2 engine: where mitigations act and observers read.

Per layer and per chunk of the sequence, the mixer computes the scan inputs in the paper's
notation (x, dt, A, B, C), then:

  1. `transform_inputs(layer, inputs)` may edit dt, A and B (forget more / remember less,
     dt and A scaling). A may come back per token, shape (b, l, h): the decay is always
     alpha_t = exp(dt_t * A_t) and the insertion dt_t * B_t x_t^T.
  2. the scan runs: `scans[layer]` when a replacement is set for that layer (the sliding
     window), the engine's backend otherwise. A scan returns y = C h (without the D x skip,
     which the mixer adds) and the state to carry.
  3. every `interval` tokens (at absolute positions that are multiples of it), the engine
     stops the scan, calls `transform_state(layer, h, position)` (state normalization) and
     hands a `StateSnapshot` to `observer` (state statistics), then goes on.

With no hook set the mixer takes none of these branches: the plain path is not slowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class ScanInputs:
    """One layer's scan inputs for one piece of the sequence (float32)."""

    x: torch.Tensor  # (b, l, h, p)
    dt: torch.Tensor  # (b, l, h) after softplus(dt_raw + dt_bias)
    A: torch.Tensor  # (h,) or per token (b, l, h); negative
    B: torch.Tensor  # (b, l, g, n)
    C: torch.Tensor  # (b, l, g, n)
    start: int  # absolute position of the first token of this piece

    def with_(self, **changes: torch.Tensor) -> ScanInputs:
        return replace(self, **changes)


@dataclass(frozen=True)
class StateSnapshot:
    """A layer's SSM state at an absolute position, with the decays of the last interval."""

    layer: int
    position: int  # tokens consumed so far
    h: torch.Tensor  # (b, h, p, n) float32
    dt: torch.Tensor  # (b, l, h) of the interval that ended here
    A: torch.Tensor  # (h,) or (b, l, h), as scanned

    def stats(self) -> dict[str, torch.Tensor]:
        """Per (batch, head) statistics of the state, each (b, h)."""
        flat = self.h.flatten(2)
        return {
            "norm": torch.linalg.vector_norm(flat, dim=-1),
            "mean": flat.mean(-1),
            "var": flat.var(-1, unbiased=False),
            "max_abs": flat.abs().amax(-1),
        }


class Scan(Protocol):
    """A scan: inputs and the carried layer state -> (y (b, l, h, p), new layer state).

    The engine's own scans carry h (b, h, p, n) float32; a replacement may carry any object
    (the engine passes back what it returned). `None` means the zero state.
    """

    def __call__(self, inputs: ScanInputs, state: Any) -> tuple[torch.Tensor, Any]: ...


@dataclass
class Hooks:
    transform_inputs: Callable[[int, ScanInputs], ScanInputs] | None = None
    transform_state: Callable[[int, torch.Tensor, int], torch.Tensor] | None = None
    observer: Callable[[StateSnapshot], None] | None = None
    interval: int = 128  # tokens between transform_state / observer calls
    scans: dict[int, Scan] = field(default_factory=dict)  # layer -> replacement scan

    @property
    def segmented(self) -> bool:
        """Whether the scan must stop every `interval` tokens."""
        return self.transform_state is not None or self.observer is not None
