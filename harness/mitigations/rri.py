"""Forget more, remember less (v2+ of the paper: RRI, reduced retention and insertion).

Every layer and head: the decay alpha_t <- a * alpha_t (an extra a^n over n tokens, a soft
horizon of about 1/(1 - a) tokens) and the insertion B_t <- b * B_t. The scan keeps its form
alpha_t = exp(dt_t * A_t), so the extra decay goes into a per-token A:

    A'_t = A + log(a) / dt_t   =>   exp(dt_t * A'_t) = a * exp(dt_t * A) = a * alpha_t.

The same on every family of the recurrence core (harness/models/recurrence.py): Mamba-2's
decay per head, Mamba-1's per (channel, state entry), RWKV-6's w_t per key channel (dt = 1,
so A' = log w_t + log a, i.e. w_t <- a w_t, and B = k: k_t <- b k_t, the insertion k^T v).

A dt_t that underflowed to 0 (softplus of a very negative input) would make that 0 * inf = NaN,
so dt is raised to the smallest normal float there: the token still decays by a, and inserts
dt B x^T ~ 1e-38 B x^T instead of exactly nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.mitigations.base import Mitigation, MitigationError
from harness.settings import setting

if TYPE_CHECKING:
    from harness.models.base import LanguageModel
    from harness.models.recurrence import Hooks, ScanInputs


@dataclass(frozen=True)
class RRISettings:
    a: float = setting(0.9999, "extra decay per token, alpha <- a*alpha, in (0, 1] (paper 0.9999)")
    b: float = setting(0.75, "insertion scale, B <- b*B, a finite number > 0 (paper 0.75)")


class RRI(Mitigation):
    name = "rri"
    description = "forget more, remember less: alpha <- a*alpha, B <- b*B (paper: a=0.9999, b=0.75)"
    families = frozenset({"mamba1", "mamba2", "rwkv6"})
    Settings = RRISettings

    def validate(self) -> None:
        a, b = self.settings.a, self.settings.b
        if not 0 < a <= 1:
            raise MitigationError(f"rri: a is the extra decay per token, in (0, 1]; got {a}")
        if not 0 < b < math.inf:
            raise MitigationError(f"rri: b scales the insertion B, a finite number > 0; got {b}")

    def hooks(self, model: LanguageModel) -> Hooks:
        from harness.models.recurrence import Hooks

        return Hooks(transform_inputs=self.transform)

    def transform(self, layer: int, inputs: ScanInputs) -> ScanInputs:
        """Scale alpha by a (through a per-token A, (b, l, h)) and B by b; 1 leaves it as is."""
        a, b = self.settings.a, self.settings.b
        if a != 1:
            import torch

            dt = inputs.dt.clamp_min(torch.finfo(inputs.dt.dtype).tiny)  # (b, l, h), > 0
            inputs = inputs.with_(dt=dt).plus_log_decay(torch.full_like(dt, math.log(a)))
        if b != 1:
            inputs = inputs.with_(B=inputs.B * b)  # (b, l, g, n)
        return inputs
