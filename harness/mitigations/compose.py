"""Several mitigations on one model: `rri+window:r=1024` applies rri, then the window.

- Input transforms (dt, A, B) chain in the written order: `rri+dt-scale` scales the dt that
  rri saw, so order can matter and the canonical spec keeps it.
- State transforms chain too, each at its own interval (the engine stops at the gcd).
- A mitigation that calibrates on the model (state-norm) calibrates under the input
  transforms written before it.
- Refused before any work: `none` with anything, a mitigation twice, two scan replacements,
  and a scan replacement with a state transform (the window's state is h minus the part older
  than r, not the plain h that state-norm clips).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from harness.mitigations.base import Mitigation, MitigationError, NoMitigation
from harness.models.recurrence import Hooks, Scan, ScanInputs, StateSnapshot
from harness.settings import NoSettings

if TYPE_CHECKING:
    from harness.models.base import LanguageModel, PromptStrategy

InputsFn = Callable[[int, ScanInputs], ScanInputs]
StateFn = Callable[[int, torch.Tensor, int], torch.Tensor]
ObserverFn = Callable[[StateSnapshot], None]


@runtime_checkable
class CalibratesUnder(Protocol):
    """A mitigation whose hooks depend on the model as modified by earlier parts."""

    def hooks_under(self, model: LanguageModel, under: Hooks | None) -> Hooks | None: ...


class Composite(Mitigation):
    """Mitigations applied together, in order; its spec is the parts' specs joined by '+'."""

    description: ClassVar[str] = "several mitigations applied in order"

    def __init__(self, parts: Sequence[Mitigation]) -> None:
        check_composable(parts)
        self.parts = tuple(parts)
        self.settings = NoSettings()

    @property
    def name(self) -> str:  # type: ignore[override]
        return "+".join(part.name for part in self.parts)

    @property
    def families(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset.intersection(*(part.families for part in self.parts))

    @property
    def spec(self) -> str:
        return "+".join(part.spec for part in self.parts)

    def content_spec(self, identities: Mapping[str, str]) -> str:
        return "+".join(part.content_spec(identities) for part in self.parts)

    @property
    def replaces_scan(self) -> bool:  # type: ignore[override]
        return any(part.replaces_scan for part in self.parts)

    def hooks(self, model: LanguageModel) -> Hooks | None:
        merged: Hooks | None = None
        for part in self.parts:
            if isinstance(part, CalibratesUnder):
                hooks = part.hooks_under(model, merged)
            else:
                hooks = part.hooks(model)
            merged = merge_hooks([merged, hooks])
        return merged

    def artifacts(self) -> dict[str, Any]:
        return {part.name: found for part in self.parts if (found := part.artifacts())}

    def input_files(self) -> list[str]:
        return [path for part in self.parts for path in part.input_files()]

    def strategy(self) -> PromptStrategy | None:
        found = [s for part in self.parts if (s := part.strategy()) is not None]
        return found[0] if found else None


def compose(parts: Sequence[Mitigation]) -> Mitigation:
    """One mitigation doing all of `parts` in order (the part itself when there is one)."""
    if not parts:
        raise MitigationError("compose needs at least one mitigation")
    return parts[0] if len(parts) == 1 else Composite(parts)


def check_composable(parts: Sequence[Mitigation]) -> None:
    """Raise MitigationError for a combination that does not make sense."""
    names = [part.name for part in parts]
    written = "+".join(names)
    if NoMitigation.name in names:
        raise MitigationError(f"{written}: 'none' cannot be combined with other mitigations")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MitigationError(
            f"{written}: {', '.join(twice)} appears twice; give its parameters once"
        )
    scans = [part.name for part in parts if part.replaces_scan]
    states = [part.name for part in parts if getattr(part, "edits_state", False)]
    if len(scans) > 1:
        raise MitigationError(f"{written}: {' and '.join(scans)} both replace the scan; keep one")
    if scans and states:
        raise MitigationError(
            f"{written}: {states[0]} transforms the plain state h, but under {scans[0]} the "
            f"state is not the plain h; use one of them"
        )


def merge_hooks(all_hooks: Sequence[Hooks | None]) -> Hooks | None:
    """Hooks doing what each of `all_hooks` does, in order; None when none does anything.

    Also how a task adds an observer to a mitigation's hooks. With different intervals the
    engine stops at their gcd and each callback runs at multiples of its own interval; an
    observer then sees the dt of the last gcd-long stretch only (StateSnapshot.dt).
    """
    present = [h for h in all_hooks if h is not None]
    if not present:
        return None
    stopping = [h.interval for h in present if h.segmented]
    interval = reduce(math.gcd, stopping) if stopping else present[0].interval
    return Hooks(
        transform_inputs=_chain_inputs([h.transform_inputs for h in present]),
        transform_state=_chain_states([(h.transform_state, h.interval) for h in present], interval),
        observer=_chain_observers([(h.observer, h.interval) for h in present], interval),
        interval=interval,
        scans=_merge_scans(present),
    )


def _chain_inputs(fns: list[InputsFn | None]) -> InputsFn | None:
    steps = [f for f in fns if f is not None]
    if len(steps) <= 1:
        return steps[0] if steps else None

    def chained(layer: int, inputs: ScanInputs) -> ScanInputs:
        for step in steps:
            inputs = step(layer, inputs)
        return inputs

    return chained


def _chain_states(fns: list[tuple[StateFn | None, int]], interval: int) -> StateFn | None:
    steps = [(f, every) for f, every in fns if f is not None]
    if len(steps) == 1 and steps[0][1] == interval:
        return steps[0][0]
    if not steps:
        return None

    def chained(layer: int, h: torch.Tensor, position: int) -> torch.Tensor:
        for step, every in steps:
            if position % every == 0:
                h = step(layer, h, position)
        return h

    return chained


def _chain_observers(fns: list[tuple[ObserverFn | None, int]], interval: int) -> ObserverFn | None:
    steps = [(f, every) for f, every in fns if f is not None]
    if len(steps) == 1 and steps[0][1] == interval:
        return steps[0][0]
    if not steps:
        return None

    def chained(snapshot: StateSnapshot) -> None:
        for step, every in steps:
            if snapshot.position % every == 0:
                step(snapshot)

    return chained


def _merge_scans(present: list[Hooks]) -> dict[int, Scan]:
    scans: dict[int, Scan] = {}
    for hooks in present:
        clash = sorted(set(scans) & set(hooks.scans))
        if clash:
            raise MitigationError(
                f"two mitigations replace the scan of layer(s) {clash}; keep one of them"
            )
        scans.update(hooks.scans)
    return scans
