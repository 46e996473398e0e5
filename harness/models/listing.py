"""`harness list models`: one row per known model, read without loading any weights.

The facts come from where they are recorded: the built-in tiny models' table, each bundled
model's training.json (written by `harness train`), and the catalog.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from harness.models.bundled import bundled_models
from harness.models.catalog import CATALOG
from harness.models.tiny import TINY_MODELS


@dataclass(frozen=True)
class ModelRow:
    name: str
    kind: str  # built-in (random weights) | bundled (trained) | catalog (downloaded)
    family: str  # mamba2 | transformer
    params: int | None
    state_size: int | None  # recurrent state elements over all layers; None: no state
    train_context: int | None  # tokens; nominal for the random built-ins
    peer: str  # the matching model of the other family, "" if none


def model_rows() -> list[ModelRow]:
    """The built-in, bundled and catalog models, in that order."""
    rows = [
        ModelRow(name, "built-in", t.family, t.params, t.state_size, t.train_context, t.peer)
        for name, t in TINY_MODELS.items()
    ]
    rows += _with_peers([_bundled_row(name, path) for name, path in bundled_models().items()])
    rows += [
        ModelRow(s.name, "catalog", s.family, s.params, s.state_size, s.train_context, s.peer)
        for s in CATALOG.values()
    ]
    return rows


def format_rows(rows: list[ModelRow]) -> list[str]:
    """Aligned text lines, a header first."""
    header = ("name", "kind", "family", "params", "state", "trained at", "peer")
    cells = [
        (
            r.name,
            r.kind,
            r.family,
            _count(r.params),
            _count(r.state_size) if r.state_size else "-",
            str(r.train_context) if r.train_context else "?",
            r.peer or "-",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *cells]
    ]


def _bundled_row(name: str, path: Path) -> ModelRow:
    record = _read_json(path / "training.json")
    config = _read_json(path / "config.json")
    family = record.get("family", "transformer" if "model_type" in config else "mamba2")
    return ModelRow(
        name=name,
        kind="bundled",
        family="transformer" if family in ("gpt-neox", "gpt_neox") else family,
        params=record.get("params"),
        state_size=record.get("state_size"),
        train_context=record.get("train_context", config.get("train_context")),
        peer="",
    )


def _with_peers(rows: list[ModelRow]) -> list[ModelRow]:
    """Each bundled model's peer: the one of the other family trained at the same length, else
    the closest in size."""

    def peer(row: ModelRow) -> str:
        def distance(other: ModelRow) -> tuple[bool, int]:
            size = abs((other.params or 0) - (row.params or 0))
            return other.train_context != row.train_context, size

        others = [o for o in rows if o.family != row.family]
        return min(others, key=distance).name if others else ""

    return [replace(row, peer=peer(row)) for row in rows]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _count(n: int | None) -> str:
    """123456 -> 123K, 1344000000 -> 1.34B."""
    if n is None:
        return "?"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{suffix}"
    return str(n)
