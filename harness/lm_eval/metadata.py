"""Task settings read from lm-eval's `metadata`, each checked with an actionable message.

lm-eval gives a task's `custom_dataset` function and its config the metadata: the JSON of
`--metadata` merged (by the CLI) with the parsed `--model_args`, so unrelated keys are
present and ignored here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from harness.plan import UsageError, parse_depths, parse_lengths

log = logging.getLogger(__name__)

LENGTHS_KEY = "max_seq_lengths"

T = TypeVar("T")


class MetadataError(ValueError):
    """A task setting in lm-eval's --metadata that cannot be used."""


def lengths(metadata: Mapping[str, Any], default: tuple[int, ...]) -> tuple[int, ...]:
    """`max_seq_lengths`: a list of token counts, or a string like "512,4k,1m"."""
    value = metadata.get(LENGTHS_KEY)
    if value is None:
        return default
    return _parsed(value, parse_lengths, LENGTHS_KEY, '[1024, 4096] or "1k,4k"')


def depths(metadata: Mapping[str, Any]) -> tuple[float, ...] | None:
    """`depths`: needle depths in [0, 1], a list or a comma-separated string; None if absent."""
    value = metadata.get("depths")
    if value is None:
        return None
    return _parsed(value, parse_depths, "depths", '[0.0, 0.5, 1.0] or "0,0.5,1"')


def positive_int(metadata: Mapping[str, Any], key: str, default: int) -> int:
    value = metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MetadataError(f"--metadata {key}={value!r}: give a positive integer")
    return value


def integer(metadata: Mapping[str, Any], key: str, default: int) -> int:
    value = metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MetadataError(f"--metadata {key}={value!r}: give an integer")
    return value


def text(metadata: Mapping[str, Any], key: str, default: str) -> str:
    value = metadata.get(key, default)
    if not isinstance(value, str):
        raise MetadataError(f"--metadata {key}={value!r}: give a string")
    return value


def _parsed(value: Any, parse: Callable[[str], T], key: str, example: str) -> T:
    items = value if isinstance(value, list | tuple) else [value]
    try:
        return parse(",".join(str(item) for item in items))
    except UsageError as err:
        raise MetadataError(f"--metadata {key}={value!r}: {err}; e.g. {example}") from None


def check_context_fits(metadata: Mapping[str, Any], needed: int) -> None:
    """Refuse a backend `max_length` below `needed` tokens; warn when an `hf`-style backend
    (a `pretrained` model) has none, as it then cuts inputs to 2048 tokens or its config's
    maximum without a word."""
    given = metadata.get("max_length")
    if given is not None and (not isinstance(given, int) or given < needed):
        raise MetadataError(
            f"--model_args max_length={given!r} is below the {needed} tokens these documents "
            f"need; the backend would cut them from the left: pass max_length={needed}"
        )
    if given is None and "pretrained" in metadata and "max_model_len" not in metadata:
        log.warning(
            "no max_length in --model_args: lm-eval's hf backend cuts inputs longer than 2048 "
            "tokens (or its model config's maximum) from the left without a word; pass "
            "max_length=%d",
            needed,
        )
