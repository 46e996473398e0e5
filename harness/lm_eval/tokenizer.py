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

import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from harness.identity import cache_file
from harness.models.catalog import NEOX_TOKENIZER
from harness.models.loading import resolve
from harness.models.tiny import TINY_MODELS
from harness.models.tokenizer import TextCodec, byte_tokenizer, load_tokenizer


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


def saved_folder(tokenizer: TextCodec) -> Path:
    """A folder `AutoTokenizer.from_pretrained` reads `tokenizer` from: lm-eval's RULER tasks
    take their tokenizer by name only. Saved once in the harness cache, named by a hash of its
    files, so one tokenizer always has one name (lm-eval caches tokenizers by name)."""
    base = cache_file().parent / "tokenizers"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    tokenizer.save_pretrained(tmp)
    digest = hashlib.sha256()
    for path in sorted(tmp.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    folder = base / digest.hexdigest()[:16]
    try:
        tmp.rename(folder)
    except OSError:  # saved before (by this or another process): the same files
        shutil.rmtree(tmp)
    return folder
