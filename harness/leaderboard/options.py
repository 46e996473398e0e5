"""The leaderboard's settings (a module of its own, so that the CLI imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.95  # the paper's passkey threshold
DEFAULT_POSITIONS = (0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Options:
    threshold: float = DEFAULT_THRESHOLD  # passkey accuracy an effective length needs
    positions: tuple[float, ...] = DEFAULT_POSITIONS  # perplexity columns, x training length
