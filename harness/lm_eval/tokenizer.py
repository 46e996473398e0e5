"""The tokenizer that the lm-eval tasks count lengths in: the evaluated model's own.

lm-eval hands a task's dataset builder its `metadata`: what `--metadata` gives, merged (by
the CLI) with the parsed `--model_args`. The tokenizer is taken from the first of these keys
that is set, as lm-eval's RULER tasks do:

- `tokenizer`: a hub id or local directory, loaded with `AutoTokenizer` (works with every
  backend; `hf` also reads it as its own tokenizer);
- `pretrained`: the `hf` backend's model, loaded with `AutoTokenizer`;
- `model`: the `harness` backend's model reference (a built-in tiny model, a catalog name,
  a local checkpoint or a hub id), resolved the way `harness run` resolves it.

Texts are encoded without special tokens, as the harness models encode them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from harness.models.catalog import NEOX_TOKENIZER
from harness.models.loading import resolve
from harness.models.tiny import TINY_MODELS
from harness.models.tokenizer import byte_tokenizer, load_tokenizer


class TokenizerNotGiven(ValueError):
    """No metadata key names the tokenizer that task lengths are counted in."""


def tokenizer_from_metadata(metadata: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer named by `tokenizer`, `pretrained` or `model` (in that order)."""
    for key in ("tokenizer", "pretrained"):
        name = metadata.get(key)
        if isinstance(name, str) and name:
            return hub_tokenizer(name)
    ref = metadata.get("model")
    if isinstance(ref, str) and ref:
        return harness_tokenizer(ref)
    raise TokenizerNotGiven(
        "the harness tasks build prompts of a given length in the evaluated model's tokens and "
        "need its tokenizer: pass --model_args pretrained=<hf model> (hf backend), "
        'model=<ref> (harness backend), or --metadata \'{"tokenizer": "<hub id or dir>"}\''
    )


@cache
def hub_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A tokenizer by hub id or local directory."""
    return AutoTokenizer.from_pretrained(name)


@cache
def harness_tokenizer(ref: str) -> PreTrainedTokenizerBase:
    """The tokenizer `harness.models.loading.load` gives the model `ref`, without its weights."""
    source = resolve(ref)
    if source.ref in TINY_MODELS:
        return byte_tokenizer()
    if source.spec is not None:
        return hub_tokenizer(source.spec.tokenizer)
    if source.family != "transformer":  # state-spaces checkpoints ship no tokenizer
        return load_tokenizer(source.path, NEOX_TOKENIZER)
    return hub_tokenizer(str(source.path or source.repo))
