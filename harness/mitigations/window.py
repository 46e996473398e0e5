"""Sliding window by state difference: each layer sees the state of the last r tokens only.

The paper's method 3, exact at every token whatever the chunking, O(length): the scan itself
(and why it is exact) is in window_scan.py, imported when the hooks are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.mitigations.base import Mitigation, MitigationError
from harness.settings import setting

if TYPE_CHECKING:
    from harness.models.base import LanguageModel
    from harness.models.recurrence import Hooks


@dataclass(frozen=True)
class WindowSettings:
    r: int = setting(2048, "the window in tokens: each layer sees the state of the last r only")


class Window(Mitigation):
    name = "window"
    description = "sliding window by state difference: the state of the last r tokens only"
    families = frozenset({"mamba1", "mamba2", "rwkv6"})
    Settings = WindowSettings
    replaces_scan = True

    def validate(self) -> None:
        r = self.settings.r
        if r < 1:
            raise MitigationError(f"window: r is the window in tokens, an integer >= 1; got {r!r}")

    def hooks(self, model: LanguageModel) -> Hooks:
        from harness.mitigations.engine import layer_count, scan_function
        from harness.mitigations.window_scan import WindowScan
        from harness.models.recurrence import Hooks

        scan = WindowScan(self.settings.r, scan_function(model))
        return Hooks(scans=dict.fromkeys(range(layer_count(model)), scan))
