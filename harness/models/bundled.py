"""The trained tiny models shipped inside the package (harness/bundled/<name>/).

Each folder is an ordinary checkpoint (config.json with `train_context`, safetensors weights,
the byte tokenizer) with a MODEL_CARD.md saying how it was trained and what it shows.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"


def bundled_models() -> dict[str, Path]:
    """name -> checkpoint folder, for every bundled model."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / "config.json").is_file()}
