"""Per-layer scaling of dt or of A: the simple baselines of length-extension work.

- `dt-scale`: dt_t <- s * dt_t, which scales both the log-decay dt_t * A and the insertion
  dt_t * B_t (the paper's "LongMamba"-style baseline dt' = 0.2 dt; MambaExtend's uniform form,
  whose calibrated choice is s = T_train / L).
- `a-scale`: A <- s * A, which changes the decay alpha_t = exp(dt_t * A) only, not the
  insertion (Mamba Modulation's uniform form; no published value: pass s explicitly).

One scale for every layer by default (`s`); `file=path.json` gives per-layer values, either a
list with one number per layer or a map {"layer": s} whose missing layers take `s`, or either
under "scales" beside other keys (what `harness calibrate` writes, with its provenance). The file is
read when the mitigation is built and checked against the model's layer count when its hooks
are made; the per-layer values actually used are recorded in `artifacts()`. The spec (the
`mitigation` column and folder of results) names the file by its file name alone, so however
its path is written, the results land in one place; a unit's id names it by content
(`content_spec`).
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.mitigations.base import Mitigation, MitigationError, spec_of
from harness.settings import setting

if TYPE_CHECKING:
    from harness.models.base import LanguageModel
    from harness.models.recurrence import Hooks, ScanInputs

LayerScales = list[float] | dict[int, float]


FILE_HELP = "JSON of per-layer scales: a list, one per layer, or a {layer: s} map (others: s)"


@dataclass(frozen=True)
class DtScaleSettings:
    s: float = setting(0.2, "dt <- s*dt in every layer, > 0 (LongMamba-style baseline 0.2)")
    file: str = setting("", FILE_HELP)


@dataclass(frozen=True)
class AScaleSettings:
    s: float = setting(0.5, "A <- s*A in every layer, > 0 (no published value)")
    file: str = setting("", FILE_HELP)


class LayerScale(Mitigation):
    """A scale per layer applied to one scan input; subclasses say which in `apply`."""

    families = frozenset({"mamba1", "mamba2"})

    def validate(self) -> None:
        _positive(self.name, "s", self.settings.s)
        self.from_file = _read_scales(self.name, self.settings.file) if self.settings.file else None
        self.scales: list[float] | None = None

    @property
    def params(self) -> dict[str, Any]:
        """`file` (its file name, without the folder) only when one was given, so the
        canonical spec names it only then."""
        if not self.settings.file:
            return {"s": self.settings.s}
        return {"file": Path(self.settings.file).name, "s": self.settings.s}

    def content_spec(self, identities: Mapping[str, str]) -> str:
        if not self.settings.file:
            return self.spec
        return spec_of(self.name, {**self.params, "file": f"@{identities[self.settings.file]}"})

    def hooks(self, model: LanguageModel) -> Hooks:
        from harness.mitigations.engine import layer_count
        from harness.models.recurrence import Hooks

        scales = self.per_layer(layer_count(model))
        self.scales = scales

        def transform(layer: int, inputs: ScanInputs) -> ScanInputs:
            s = scales[layer]
            return inputs if s == 1 else self.apply(inputs, s)

        return Hooks(transform_inputs=transform)

    def per_layer(self, n_layer: int) -> list[float]:
        """The scale of each of the model's `n_layer` layers."""
        if isinstance(self.from_file, list):
            if len(self.from_file) != n_layer:
                raise MitigationError(
                    f"{self.name}: {self.settings.file} lists {len(self.from_file)} scales, "
                    f"the model has {n_layer} layers; give one per layer or a {{layer: s}} map"
                )
            return list(self.from_file)
        scales = [self.settings.s] * n_layer
        for layer, s in (self.from_file or {}).items():
            if not 0 <= layer < n_layer:
                raise MitigationError(
                    f"{self.name}: {self.settings.file} names layer {layer}, "
                    f"the model has layers 0..{n_layer - 1}"
                )
            scales[layer] = s
        return scales

    @abstractmethod
    def apply(self, inputs: ScanInputs, s: float) -> ScanInputs:
        """The inputs with this mitigation's scale `s` applied."""

    def artifacts(self) -> dict[str, Any]:
        return {"scales": self.scales} if self.scales is not None else {}

    def input_files(self) -> list[str]:
        return [self.settings.file] if self.settings.file else []


class DtScale(LayerScale):
    name = "dt-scale"
    description = "dt <- s*dt per layer (LongMamba-style baseline s=0.2; MambaExtend uniform form)"
    Settings = DtScaleSettings

    def apply(self, inputs: ScanInputs, s: float) -> ScanInputs:
        return inputs.with_(dt=inputs.dt * s)  # (b, l, h)


class AScale(LayerScale):
    name = "a-scale"
    description = "A <- s*A per layer: decay only (Mamba Modulation uniform form)"
    Settings = AScaleSettings

    def apply(self, inputs: ScanInputs, s: float) -> ScanInputs:
        return inputs.with_(A=inputs.A * s)  # (h,) or (b, l, h)


def _positive(name: str, key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MitigationError(f"{name}: {key}={value!r} is not a number") from None
    if not 0 < number < math.inf:
        raise MitigationError(f"{name}: {key} must be a finite number > 0; got {number}")
    return number


def _read_scales(name: str, path: str) -> LayerScales:
    """A JSON list of per-layer scales, or a {layer: scale} map."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MitigationError(f"{name}: scale file {path} does not exist") from None
    except OSError as e:  # a folder, no permission
        raise MitigationError(f"{name}: cannot read scale file {path} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise MitigationError(f"{name}: scale file {path} is not JSON ({e})") from None
    if isinstance(data, dict) and "scales" in data:  # `harness calibrate`'s file: + provenance
        data = data["scales"]
    if isinstance(data, list):
        return [_positive(name, f"{path}[{i}]", s) for i, s in enumerate(data)]
    if isinstance(data, dict):
        return {
            _layer_key(name, path, k): _positive(name, f"{path}[{k}]", s) for k, s in data.items()
        }
    raise MitigationError(
        f"{name}: {path} must hold a list of per-layer scales or a {{layer: scale}} map"
    )


def _layer_key(name: str, path: str, key: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise MitigationError(f"{name}: {path} has key {key!r}; keys are layer numbers") from None
