"""State normalization: clip each head's state to the norm it reaches at the training length.

Per (layer, head) a threshold tau = mult * ||h||_F, the Frobenius norm of that head's state
after a calibration input of T_train = model.info.train_context tokens fed from the zero state.
While the model runs, every k tokens (at absolute positions that are multiples of k; k=1 is
exact per token):

    h <- h * min(1, tau / ||h||_F)

which only ever shrinks the state (the released code multiplied by ||h|| / tau instead).

Calibration inputs (`calib`):
- `newline` (default): the newline prompt, the token ids of "\\n" * T_train repeated cyclically
  to exactly T_train tokens; calibrated when the hooks are first made.
- `eval`: the evaluation text itself. The caller (the task) passes its token ids to
  `calibrate(model, ids)` before asking for the hooks; the first T_train of them are used.

The run is deterministic (same model, same ids, same thresholds), and the thresholds are in
`artifacts()` ({"tau": [[per head] per layer], "calib", "calib_tokens"}) so a run can be
reproduced; `set_thresholds` puts recorded ones back without calibrating.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.mitigations.base import Mitigation, MitigationError
from harness.settings import setting

if TYPE_CHECKING:
    import torch

    from harness.models.base import LanguageModel
    from harness.models.recurrence import Hooks


@dataclass(frozen=True)
class StateNormSettings:
    k: int = setting(128, "clip every k tokens (at multiples of k); 1: every token")
    mult: float = setting(1.0, "tau = mult * the state norm at the training length; > 0 or inf")
    calib: Literal["newline", "eval"] = setting(
        "newline", "calibration input: the newline prompt, or the evaluation text itself"
    )


class StateNorm(Mitigation):
    name = "state-norm"
    description = "every k tokens, h <- h * min(1, tau/||h||) per head, tau from a calibration"
    families = frozenset({"mamba1", "mamba2", "rwkv6"})
    Settings = StateNormSettings
    edits_state: ClassVar[bool] = True  # installs hooks.transform_state on the plain h

    def validate(self) -> None:
        k, mult = self.settings.k, self.settings.mult
        if k < 1:
            raise MitigationError(
                f"state-norm: k is the clipping interval, an integer >= 1; got {k!r}"
            )
        if not mult > 0:
            raise MitigationError(
                f"state-norm: mult scales the thresholds, a number > 0 or inf; got {mult}"
            )
        self.tau: torch.Tensor | None = None  # (n_layer, nheads) float32, mult applied
        self.calib_tokens = 0
        self.source: weakref.ref[LanguageModel] | None = None  # model calibrated on; None: given

    def calibrate(self, model: LanguageModel, ids: list[int], under: Hooks | None = None) -> None:
        """Thresholds from the state after the first T_train tokens of `ids`.

        `under`: hooks to run the calibration with (a composite's earlier input transforms).
        """
        ids = list(ids[: model.info.train_context])
        if not ids:
            raise MitigationError("state-norm: the calibration input has no tokens")
        import torch

        from harness.mitigations.engine import final_state_norms

        norms = final_state_norms(model, ids, under)
        self.set_thresholds(
            norms * self.settings.mult
            if math.isfinite(self.settings.mult)
            else torch.full_like(norms, math.inf)
        )
        self.calib_tokens = len(ids)
        self.source = weakref.ref(model)

    def set_thresholds(self, tau: torch.Tensor | list[list[float]]) -> None:
        """Use recorded thresholds (n_layer, nheads), e.g. an earlier run's `artifacts()["tau"]`."""
        import torch

        self.tau = torch.as_tensor(tau, dtype=torch.float32)
        self.source = None

    def calibrated_for(self, model: LanguageModel) -> bool:
        """Whether the thresholds apply to `model`: calibrated on it, or given by the caller."""
        return self.tau is not None and (self.source is None or self.source() is model)

    def hooks(self, model: LanguageModel) -> Hooks:
        return self.hooks_under(model, None)

    def hooks_under(self, model: LanguageModel, under: Hooks | None) -> Hooks:
        """Hooks, calibrating on `model` first (newline prompt, run with `under`) if not done yet.

        One instance serves model after model (the runner's way): each gets its own thresholds.
        """
        if not self.calibrated_for(model):
            if self.settings.calib == "eval":
                raise MitigationError(
                    "state-norm:calib=eval calibrates on the evaluation text: call "
                    "calibrate(model, ids) with its token ids before hooks(model)"
                )
            self.calibrate(model, newline_ids(model), under)
        tau = self.tau
        assert tau is not None  # calibrated just above
        from harness.mitigations.engine import head_count, layer_count
        from harness.models.recurrence import Hooks

        expected = (layer_count(model), head_count(model))
        if tuple(tau.shape) != expected:
            raise MitigationError(
                f"state-norm: thresholds are {tuple(tau.shape)} (layers, heads), "
                f"the model has {expected}"
            )
        return Hooks(transform_state=partial(clip, tau.to(model.device)), interval=self.settings.k)

    def artifacts(self) -> dict[str, Any]:
        if self.tau is None:
            return {}
        return {
            "tau": self.tau.tolist(),
            "calib": self.settings.calib,
            "calib_tokens": self.calib_tokens,
        }


def clip(tau: torch.Tensor, layer: int, h: torch.Tensor, position: int) -> torch.Tensor:
    """h (b, h, p, n) -> h * min(1, tau / ||h||_F) per (batch, head); tau (n_layer, nheads)."""
    import torch

    norm = torch.linalg.vector_norm(h.flatten(2), dim=-1)  # (b, h)
    factor = (tau[layer] / norm).clamp(max=1.0)  # a zero state: tau / 0 = inf -> 1
    return h * factor[..., None, None].to(h.dtype)


def newline_ids(model: LanguageModel) -> list[int]:
    """The newline prompt at the training length: "\\n" * T tokenized, cycled to T tokens."""
    n = model.info.train_context
    ids = model.encode("\n" * n)
    if not ids:
        raise MitigationError(f"state-norm: {model.info.name} encodes newlines to no tokens")
    return [ids[i % len(ids)] for i in range(n)]
