"""Documents of given token lengths for the lm-eval loss tasks, from the harness's text sources.

The documents are the ones `harness run --tasks perplexity` reads for the same settings:
`tasks.sources` resolves the source and cuts its texts to exactly `length` tokens of the
evaluated model's tokenizer (see `harness.lm_eval.tokenizer`); they are decoded back to text
for lm-eval, so re-encoding one may differ by a token where a cut splits a character.

Settings, from `--metadata` (JSON):
- `max_seq_lengths`: document lengths in tokens (default [1024, 2048, 4096]); "1k,4k" too;
- `documents`: documents per length (default: as `harness run`, 1); a synthetic source
  makes one;
- the source, as `harness run --option perplexity.<key>=...` takes it: `source` (newlines,
  capital, haystack, sonnets, pg19, a local .txt/.jsonl/.parquet file or folder, or a hub
  dataset id; default sonnets, as `harness run`'s), `column`, `split`, `subset`, `short_docs`
  (skip | concat).

The documents go round the lengths, so `--limit n` keeps every length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import chain, zip_longest
from typing import Any

from transformers import PreTrainedTokenizerBase

from harness.lm_eval import metadata as meta
from harness.lm_eval.tokenizer import tokenizer_from_metadata
from harness.models.tokenizer import encoder
from tasks.perplexity import Perplexity
from tasks.sources import SOURCE_SETTINGS, Source, documents, source_from

DEFAULT_LENGTHS = (1024, 2048, 4096)


@dataclass(frozen=True)
class CorpusSettings:
    lengths: tuple[int, ...]
    documents: int
    source: dict[str, str]  # the keys of tasks.sources.SOURCE_SETTINGS

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> CorpusSettings:
        defaults = asdict(Perplexity.Settings())
        source = {key: meta.text(metadata, key, defaults[key]) for key in SOURCE_SETTINGS}
        return cls(
            lengths=meta.lengths(metadata, DEFAULT_LENGTHS),
            documents=meta.positive_int(metadata, "documents", Perplexity.Settings().documents),
            source=source,
        )


@dataclass(frozen=True)
class Cut:
    """One document: exactly `length` tokens of the source, as ids and as text."""

    text: str
    ids: list[int]
    length: int
    parts: str  # the source documents it is made of


def corpus_cuts(metadata: Mapping[str, Any]) -> list[Cut]:
    """Up to `documents` cuts per length, going round the lengths."""
    settings = CorpusSettings.from_metadata(metadata)
    meta.check_context_fits(metadata, max(settings.lengths) + 1)  # + the end-of-text prefix
    source = source_from(settings.source)
    tokenizer = tokenizer_from_metadata(metadata)
    by_length = [
        _cuts(source, tokenizer, length, settings.documents, settings.source["short_docs"])
        for length in settings.lengths
    ]
    rounds = chain.from_iterable(zip_longest(*by_length))
    return [cut for cut in rounds if cut is not None]


def _cuts(
    source: Source, tokenizer: PreTrainedTokenizerBase, length: int, count: int, policy: str
) -> list[Cut]:
    found = documents(source, encoder(tokenizer), length, count, policy, tokenizer.eos_token_id)
    return [
        Cut(tokenizer.decode(doc.ids.tolist()), doc.ids.tolist(), length, "+".join(doc.parts))
        for doc in found
    ]
