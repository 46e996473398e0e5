"""What every mitigation is: a named, parameterised object that turns a model into hooks.

On the command line a mitigation is written `name` or `name:key=value:key=value`; its
canonical form (every parameter, defaults filled in, keys sorted) is what result rows record,
so two spellings of the same setting land in the same results partition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from harness.models.catalog import FAMILIES

if TYPE_CHECKING:
    from harness.models.base import LanguageModel
    from harness.models.mamba2.hooks import Hooks


class MitigationError(ValueError):
    """A mitigation spec that cannot be parsed or does not apply."""


class Mitigation(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    families: ClassVar[frozenset[str]]  # model families it applies to
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise MitigationError(
                f"mitigation {self.name!r} has no parameter {', '.join(unknown)}; valid: {valid}"
            )
        self.params = {**self.defaults, **params}
        self.validate()

    def validate(self) -> None:  # noqa: B027 - optional, most mitigations accept any value
        """Raise MitigationError for parameter values out of range."""

    @classmethod
    def parse(cls, fields: list[str]) -> Mitigation:
        """Build from the `key=value` fields of a spec, converting to the defaults' types."""
        params: dict[str, Any] = {}
        for field in fields:
            key, sep, raw = field.partition("=")
            if not sep or not key or not raw:
                raise MitigationError(f"{cls.name}: expected key=value, got {field!r}")
            default = cls.defaults.get(key)
            try:
                params[key] = type(default)(raw) if default is not None else raw
            except ValueError:
                raise MitigationError(
                    f"{cls.name}: {key}={raw!r} is not a {type(default).__name__}"
                ) from None
        return cls(**params)

    @property
    def spec(self) -> str:
        """The canonical spelling, e.g. `rri:a=0.9999:b=0.75`."""
        return ":".join([self.name, *(f"{k}={self.params[k]}" for k in sorted(self.params))])

    @abstractmethod
    def hooks(self, model: LanguageModel) -> Hooks | None:
        """Hooks to install on `model` (may calibrate on it first); None for no change."""

    def artifacts(self) -> dict[str, Any]:
        """JSON-serialisable data needed to reproduce the run (e.g. calibrated thresholds)."""
        return {}

    def input_files(self) -> list[str]:
        """Files this mitigation reads, as written in its spec: their content is part of
        the identity of its results (harness.identity)."""
        return []


class NoMitigation(Mitigation):
    name = "none"
    description = "the model as trained, no change"
    families = FAMILIES

    def hooks(self, model: LanguageModel) -> None:
        return None
