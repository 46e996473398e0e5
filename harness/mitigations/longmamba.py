"""LongMamba (Ye et al., ICLR 2025): token filtering in the global heads.

The paper's observation: heads fall into local ones (their memory decays within the training
length T) and global ones (whose cumulative decay over T stays high: they were meant to see
the whole window). Past T a global head keeps decaying and inserting, so its receptive field
no longer spans the input. LongMamba lets such a head take in only the tokens whose dt is
large enough that the dt it sums over the input stays what it summed over T:

    keep_t = dt_t > theta_h(L);   dropped tokens get dt_t = 0: alpha_t = 1 and no insertion.

Calibration (per model, on T tokens of a calibration input, as the official code does it on
2000-token text): per (layer, head), the dt of every token, clipped at the value that only the
top fraction q exceeds; the head's retention over T, R_h = exp(A_h sum_t dt_t); global heads
are those with R_h > c. For an input of L > T tokens, theta_h(L) is the dt value at which the
largest calibration dt's reach a share T / L of their total: the tokens kept over L then sum
to about what all T tokens summed (the official code interpolates the sorted calibration dt to
L points and takes the value where their cumulative sum passes the total; this is the same
quantity without the interpolation). Heads that are not global, and inputs of at most T
tokens, are left as they are.

Streaming. The paper chooses theta_h(L) from the whole input's length L, which a model that
reads its input in pieces does not know. `length=0` (default) is the causal version: the token
at position t is filtered with theta_h(t + 1), the threshold of an input that ends there, so
the state after any prefix is what the filter of that prefix gives, chunk by chunk, with the
state carried exactly (loss by position stays defined). `length=N` is the paper's version for
inputs of N tokens: every token is filtered with theta_h(N).

Mamba-1 (a decay per channel and state entry, dt per channel): the heads are the channels, and
a channel's retention over T is that of its slowest-decaying state entry (the longest memory
it has; our choice, the official code's Mamba-1 selection was not checked).

Defaults from the official code: c = 5e-2 (`--c`), q = 0.05 (its calibration `clampTop0.05`).
Calibration inputs: the newline prompt at the training length, like state-norm. The retention
of every head, the global mask and theta at 2T, 4T, 8T, 16T are in `artifacts()`.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.mitigations.base import Mitigation, MitigationError
from harness.settings import setting

if TYPE_CHECKING:
    import torch

    from harness.models.base import LanguageModel
    from harness.models.recurrence import Hooks, ScanInputs


@dataclass(frozen=True)
class LongMambaSettings:
    c: float = setting(5e-2, "global heads: retention over the training length above c")
    q: float = setting(0.05, "calibration dt clipped at the value the top q fraction exceeds")
    length: int = setting(0, "0: causal (theta of the length so far); N: the paper's theta(N)")


@dataclass(frozen=True)
class Thresholds:
    """What the calibration gives one layer, for theta_h(L) at any L."""

    ranked: torch.Tensor  # (h, T) calibration dt per head, clipped, largest first
    share: torch.Tensor  # (h, T) float64, cumulative share of the total: ranked.cumsum / sum
    retention: torch.Tensor  # (h,) exp(sum_t dt_t A) over the T calibration tokens
    is_global: torch.Tensor  # (h,) bool, retention > c

    @classmethod
    def calibrate(cls, dt: torch.Tensor, dtA: torch.Tensor, c: float, q: float) -> Thresholds:
        """dt (T, h), dt * A (T, h) or (T, h, n) of one layer on the calibration input; with a
        decay per state entry (Mamba-1) a channel's retention is its slowest entry's."""
        import torch

        if dtA.dim() == 3:
            dtA = dtA.amax(-1)  # (T, h): the least negative log-decay of each channel

        top = max(1, int(dt.shape[0] * q))
        cap = dt.topk(top, dim=0).values.min(dim=0).values  # (h,) the top-q fraction's floor
        clipped = torch.minimum(dt, cap)  # (T, h)
        ranked = clipped.T.sort(dim=1, descending=True).values  # (h, T)
        cumulative = ranked.double().cumsum(1)
        share = cumulative / cumulative[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
        # retention with the clipped dt, as the official calibration computes it
        retention = torch.exp((dtA * (clipped / dt.clamp_min(1e-30))).sum(0))  # (h,)
        return cls(ranked, share, retention, retention > c)

    def theta(self, lengths: torch.Tensor) -> torch.Tensor:
        """theta_h(L) for each L of `lengths` (n,) -> (n, h); -inf (keep all) for L <= T and
        for heads that are not global."""
        import torch

        T = self.ranked.shape[1]
        wanted = (T / lengths.double()).expand(self.share.shape[0], -1)  # (h, n) share kept
        index = torch.searchsorted(self.share, wanted.contiguous()).clamp(max=T - 1)
        theta = self.ranked.gather(1, index).T  # (n, h)
        keep_all = (lengths <= T)[:, None] | ~self.is_global[None, :]
        return theta.masked_fill(keep_all, -torch.inf)


class LongMamba(Mitigation):
    name = "longmamba"
    description = "global heads take in only tokens with dt above a calibrated threshold"
    families = frozenset({"mamba1", "mamba2"})
    Settings = LongMambaSettings

    def validate(self) -> None:
        s = self.settings
        if not 0 < s.c <= 1:
            raise MitigationError(f"longmamba: c is a retention, in (0, 1]; got {s.c}")
        if not 0 < s.q <= 1:
            raise MitigationError(f"longmamba: q is a fraction of tokens, in (0, 1]; got {s.q}")
        if s.length < 0:
            raise MitigationError(f"longmamba: length is 0 (causal) or tokens > 0; got {s.length}")
        self.layers: list[Thresholds] | None = None
        self.source: weakref.ref[LanguageModel] | None = None

    def hooks(self, model: LanguageModel) -> Hooks:
        return self.hooks_under(model, None)

    def hooks_under(self, model: LanguageModel, under: Hooks | None) -> Hooks:
        """Hooks, calibrating on `model` (run with `under`, a composite's earlier parts) first."""
        from harness.mitigations.engine import calibration_decays
        from harness.mitigations.state_norm import newline_ids
        from harness.models.recurrence import Hooks

        if self.layers is None or self.source is None or self.source() is not model:
            ids = newline_ids(model)
            self.layers = [
                Thresholds.calibrate(dt, dtA, self.settings.c, self.settings.q)
                for dt, dtA in calibration_decays(model, ids, under)
            ]
            self.source = weakref.ref(model)
        return Hooks(transform_inputs=self.transform)

    def transform(self, layer: int, inputs: ScanInputs) -> ScanInputs:
        """dt <- 0 for the tokens a global head filters out (b, l, h)."""
        import torch

        assert self.layers is not None  # calibrated in hooks()
        length = inputs.dt.shape[1]
        if self.settings.length:
            ends = torch.full((length,), self.settings.length, dtype=torch.long)
        else:
            ends = torch.arange(inputs.start + 1, inputs.start + length + 1)  # t + 1
        theta = self.layers[layer].theta(ends).to(inputs.dt.device)  # (l, h)
        return inputs.with_(dt=inputs.dt * (inputs.dt > theta))

    def artifacts(self) -> dict[str, Any]:
        if self.layers is None:
            return {}
        import torch

        T = self.layers[0].ranked.shape[1]
        multiples = torch.tensor([2 * T, 4 * T, 8 * T, 16 * T])
        return {
            "calib": "newline",
            "calib_tokens": T,
            "retention": [t.retention.tolist() for t in self.layers],
            "global": [t.is_global.tolist() for t in self.layers],
            "theta": {  # per length, per layer, per head; null: the head keeps every token
                f"{int(L)}": [_finite(t.theta(multiples)[i].tolist()) for t in self.layers]
                for i, L in enumerate(multiples)
            },
        }


def _finite(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]
