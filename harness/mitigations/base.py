"""What every mitigation is: a named, parameterised object that turns a model into hooks.

On the command line a mitigation is written `name` or `name:key=value:key=value`; its
canonical form (every parameter, defaults filled in, keys sorted) is what result rows record,
so two spellings of the same setting land in the same results partition.
"""

from __future__ import annotations

import dataclasses
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from harness.models.catalog import FAMILIES
from harness.settings import NoSettings, SettingError, build

if TYPE_CHECKING:
    from harness.models.base import LanguageModel, PromptStrategy
    from harness.models.recurrence import Hooks


class MitigationError(ValueError):
    """A mitigation spec that cannot be parsed or does not apply."""


class Mitigation(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    families: ClassVar[frozenset[str]]  # model families it applies to
    Settings: ClassVar[type] = NoSettings  # a frozen dataclass of its parameters (harness.settings)
    replaces_scan: ClassVar[bool] = False  # installs hooks.scans: the state is not the plain h

    def __init__(self, **params: Any) -> None:
        try:
            self.settings = build(self.Settings, params, f"mitigation {self.name!r}", "parameter")
        except SettingError as err:
            raise MitigationError(str(err)) from None
        self.validate()

    def __getstate__(self) -> dict[str, Any]:
        """What pickling keeps: everything but weak references to the model it calibrated on,
        which do not pickle. A unit's outcome comes back from a worker process with its
        mitigation, a copy that says what ran (spec, artifacts); jobs go out to workers before
        any calibration."""
        return {k: None if isinstance(v, weakref.ref) else v for k, v in self.__dict__.items()}

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter, defaults filled in."""
        return dataclasses.asdict(self.settings)

    def validate(self) -> None:  # noqa: B027 - optional, most mitigations accept any value
        """Raise MitigationError for parameter values out of range."""

    @classmethod
    def parse(cls, fields: list[str]) -> Mitigation:
        """Build from the `key=value` fields of a spec (harness.settings converts the values)."""
        params: dict[str, str] = {}
        for field in fields:
            key, sep, raw = field.partition("=")
            if not sep or not key or not raw:
                raise MitigationError(f"{cls.name}: expected key=value, got {field!r}")
            if key in params:
                raise MitigationError(f"{cls.name}: {key} is given twice; give it once")
            params[key] = raw
        return cls(**params)

    @property
    def spec(self) -> str:
        """The canonical spelling, e.g. `rri:a=0.9999:b=0.75`; an input file is named by its
        file name alone (`dt-scale:file=s.json:s=0.2`), however its path was written."""
        return spec_of(self.name, self.params)

    def content_spec(self, identities: Mapping[str, str]) -> str:
        """The spec with each input file named by its content identity instead (`identities`:
        each path of `input_files()` -> its identity): what a unit's id digests, so the same
        bytes make the same id through any path, in any folder, under any name."""
        return self.spec

    @abstractmethod
    def hooks(self, model: LanguageModel) -> Hooks | None:
        """Hooks to install on `model` (may calibrate on it first); None for no change."""

    def artifacts(self) -> dict[str, Any]:
        """JSON-serialisable data needed to reproduce the run (e.g. calibrated thresholds)."""
        return {}

    def input_files(self) -> list[str]:
        """Files this mitigation reads, as given on the command line: their content is part
        of the identity of its results (harness.identity)."""
        return []

    def strategy(self) -> PromptStrategy | None:
        """How the model reads a prompt's parts (an inference strategy such as oprm); None:
        as one sequence. Tasks that do not build prompt parts refuse a mitigation with one."""
        return None


class NoMitigation(Mitigation):
    name = "none"
    description = "the model as trained, no change"
    families = FAMILIES

    def hooks(self, model: LanguageModel) -> None:
        return None


def spec_of(name: str, params: Mapping[str, Any]) -> str:
    """`name:key=value:...`, keys sorted."""
    return ":".join([name, *(f"{k}={spec_value(params[k])}" for k in sorted(params))])


def spec_value(value: Any) -> str:
    """A parameter as the canonical spec writes it (and the spec parser reads it back)."""
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)
