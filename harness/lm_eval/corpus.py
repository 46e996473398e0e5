"""Documents of given token lengths cut from a text corpus, for the lm-eval loss tasks.

Settings, from `--metadata` (JSON):
- `max_seq_lengths`: document lengths in tokens of the evaluated model (default
  [1024, 2048, 4096]); "1k,4k" works too;
- `samples`: documents per length (default 8);
- the corpus: `data_files` (a local .txt, .json/.jsonl or .parquet file, or a list of them;
  a .txt file is one document) or a datasets hub id in `dataset_path` (default
  emozilla/pg19-test, the PG-19 test books), with `dataset_name`, `split` (default test) and
  `text_field` (default text).

The texts are taken in corpus order; each one with at least `length` tokens gives the
document of its first `length` tokens (decoded back to text, so re-encoding it may differ by
a token where a cut splits a character). The documents go round the lengths, so `--limit n`
keeps every length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from harness.lm_eval import metadata as meta
from harness.lm_eval.tokenizer import encoder, tokenizer_from_metadata

DEFAULT_LENGTHS = (1024, 2048, 4096)
DEFAULT_SAMPLES = 8
DEFAULT_DATASET = "emozilla/pg19-test"
CHARS_PER_TOKEN = 32  # a text prefix this many characters per token holds `length` tokens
FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class CorpusError(ValueError):
    """The corpus cannot give the documents asked for."""


@dataclass(frozen=True)
class CorpusSettings:
    lengths: tuple[int, ...]
    samples: int
    data_files: tuple[str, ...] | None
    dataset_path: str
    dataset_name: str | None
    split: str
    text_field: str

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> CorpusSettings:
        files = metadata.get("data_files")
        return cls(
            lengths=meta.lengths(metadata, DEFAULT_LENGTHS),
            samples=meta.positive_int(metadata, "samples", DEFAULT_SAMPLES),
            data_files=_file_list(files) if files is not None else None,
            dataset_path=meta.text(metadata, "dataset_path", DEFAULT_DATASET) or DEFAULT_DATASET,
            dataset_name=meta.text(metadata, "dataset_name", None) or None,
            split=meta.text(metadata, "split", "test") or "test",
            text_field=meta.text(metadata, "text_field", "text") or "text",
        )


@dataclass(frozen=True)
class Cut:
    """The first `length` tokens of corpus text number `source`."""

    text: str
    ids: list[int]
    length: int
    source: int


def corpus_cuts(metadata: Mapping[str, Any]) -> list[Cut]:
    """`samples` cuts per length, going round the lengths."""
    settings = CorpusSettings.from_metadata(metadata)
    meta.check_context_fits(metadata, max(settings.lengths) + 1)  # + the end-of-text prefix
    tokenizer = tokenizer_from_metadata(metadata)
    by_length = _cut(texts(settings), tokenizer, settings)
    return [cut for round_ in zip(*by_length.values(), strict=True) for cut in round_]


def texts(settings: CorpusSettings) -> Iterator[str]:
    """The corpus texts in order, streamed."""
    records, field = _records(settings)
    for record in records:
        if field not in record:
            raise CorpusError(
                f"corpus records have no field {field!r} (fields: {', '.join(record)}); "
                'set --metadata \'{"text_field": "<field>"}\''
            )
        yield record[field]


def _records(settings: CorpusSettings) -> tuple[Iterable[dict[str, Any]], str]:
    """The corpus records, streamed, and the field that holds the text."""
    if settings.data_files is None:
        records = datasets.load_dataset(
            settings.dataset_path, settings.dataset_name, split=settings.split, streaming=True
        )
        return records, settings.text_field
    files = list(settings.data_files)
    suffix = Path(files[0]).suffix
    if suffix == ".txt":
        records = datasets.load_dataset(
            "text", data_files=files, sample_by="document", split="train", streaming=True
        )
        return records, "text"
    records = datasets.load_dataset(
        FORMATS[suffix], data_files=files, split="train", streaming=True
    )
    return records, settings.text_field


def _cut(
    corpus: Iterator[str], tokenizer: PreTrainedTokenizerBase, settings: CorpusSettings
) -> dict[int, list[Cut]]:
    encode = encoder(tokenizer)
    wanted: dict[int, list[Cut]] = {n: [] for n in settings.lengths}
    longest = max(settings.lengths)
    for index, text in enumerate(corpus):
        ids = encode(text[: longest * CHARS_PER_TOKEN])
        for length, found in wanted.items():
            if len(ids) >= length and len(found) < settings.samples:
                found.append(Cut(tokenizer.decode(ids[:length]), ids[:length], length, index))
        if all(len(found) == settings.samples for found in wanted.values()):
            return wanted
    short = {n: len(found) for n, found in wanted.items() if len(found) < settings.samples}
    raise CorpusError(
        f"the corpus has too few texts long enough: {settings.samples} wanted per length, found "
        + ", ".join(f"{count} of at least {n} tokens" for n, count in short.items())
        + "; lower `samples` or `max_seq_lengths` in --metadata, or give a corpus of longer texts"
    )


def _file_list(value: Any) -> tuple[str, ...]:
    files = tuple(value) if isinstance(value, list | tuple) else (value,)
    suffixes = {Path(str(f)).suffix for f in files}
    if not files or len(suffixes) != 1 or not suffixes <= set(FORMATS):
        raise CorpusError(
            f"--metadata data_files={value!r}: give files of one format, "
            f"ending in {', '.join(FORMATS)}"
        )
    missing = [str(f) for f in files if not Path(str(f)).is_file()]
    if missing:
        raise CorpusError(f"--metadata data_files: no such file {', '.join(missing)}")
    return tuple(str(f) for f in files)
