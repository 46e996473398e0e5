"""Text sources for long sequences: the paper's synthetic prompts, local files, datasets.

A source is named by one string (the `source` option of the tasks that read text):

- `newlines`, `capital`, `haystack`: synthetic prompts (paper-notes.md sections 5-6), one
  endless text, so a single document of any length;
- `sonnets`: real text shipped with the package (tasks/texts/README.md: Shakespeare's
  Sonnets, public domain, 95,728 bytes), one document, offline;
- `pg19`: the public PG-19 books on the Hugging Face hub (`emozilla/pg19`, Parquet; the
  original `deepmind/pg19` needs a loading script that `datasets` no longer runs), split
  `test` unless another is asked for;
- a local path: a `.txt` / `.md` file (the whole file is one document), a folder of them
  (one document per file, in name order), a `.jsonl` / `.json` or `.parquet` file (one
  document per record, text in `column`), a folder written by `datasets`' save_to_disk, or a
  folder in the hub's layout (`data/<split>-*.parquet`...);
- any other `owner/name`: a hub dataset, streamed (it fails offline with a clear error).

Hub datasets and hub-layout folders take a `subset` (the hub's configuration name, e.g.
`wikitext-103-raw-v1`). The tasks that read text share these settings (SOURCE_SETTINGS).

`documents` turns a source into token sequences of exactly the asked length. Source
documents shorter than that are either skipped (`skip`) or concatenated with the model's
end-of-text token between them (`concat`); rows record which.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.settings import setting
from tasks.passkey import HAYSTACK, PREFIX

if TYPE_CHECKING:
    import torch

Encode = Callable[[str], list[int]]

NEWLINES = "\n"
CAPITALS = (
    "The capital of China is Beijing. The capital of France is Paris. "
    "The capital of Japan is Tokyo. The capital of Italy is Rome. "
)  # the paper repeats "The capital of China is Beijing. ..."; the other sentences are ours
SYNTHETIC = {
    "newlines": ("", NEWLINES),
    "capital": ("", CAPITALS),
    "haystack": (PREFIX, HAYSTACK),
}  # name -> (prefix, unit repeated after it)
PG19 = "emozilla/pg19"
ALIASES = {"pg19": PG19}
TEXTS = Path(__file__).resolve().parent / "texts"
SHIPPED = {"sonnets": TEXTS / "sonnets.txt"}  # name -> a text file inside the package
BLOCK_UNITS = 64  # units per tiled block of a synthetic prompt
SHORT_DOC_POLICIES = ("skip", "concat")
AUTO_SPLIT = "auto"
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
VALID = (
    "newlines, capital, haystack, sonnets, pg19, a .txt/.jsonl/.json/.parquet file, a dataset "
    "folder (save_to_disk or hub layout), or a hub id owner/name"
)


@dataclass(frozen=True)
class SourceSettings:
    """The settings of every task that reads text (its settings dataclass extends this one)."""

    source: str = setting(
        "newlines",
        "newlines, capital, haystack, sonnets, pg19, a .txt/.jsonl/.parquet file, a folder, "
        "a hub id",
    )
    column: str = setting("text", "the text column of a JSON, Parquet or hub dataset")
    split: str = setting(AUTO_SPLIT, "dataset split; auto: test (or the only one), train")
    subset: str = setting("", "the hub configuration name, e.g. wikitext-103-raw-v1")
    short_docs: Literal["skip", "concat"] = setting(
        "skip", "documents shorter than the length: skip them, or concat with end-of-text"
    )


SOURCE_SETTINGS: dict[str, Any] = asdict(SourceSettings())  # key -> default


class SourceError(ValueError):
    """A text source that cannot be found or read as asked."""


class NotEnoughTextError(SourceError):
    """No document of the asked length can be made from a source."""


@dataclass(frozen=True)
class Source:
    """A resolved source: what to open, checked without reading any text."""

    name: str  # as given
    kind: str  # synthetic | text | json | parquet | saved | folder | hub
    location: str  # the synthetic name, a path, or a hub id
    column: str
    split: str
    subset: str = ""

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"


@dataclass(frozen=True)
class Document:
    """Exactly `length` token ids, made of one or more source documents."""

    ids: torch.Tensor  # (length,) int64: 8 bytes a token, where a list of ints takes 36
    parts: tuple[str, ...]  # ids of the source documents it is made of
    skipped: int  # source documents passed over (too short or empty) since the previous one


def source_from(settings: dict[str, Any]) -> Source:
    """The source a task's settings name (the keys of SOURCE_SETTINGS), checked."""
    check_policy(settings["short_docs"])
    return resolve(settings["source"], settings["column"], settings["split"], settings["subset"])


def check_policy(policy: str) -> None:
    if policy not in SHORT_DOC_POLICIES:
        valid = ", ".join(SHORT_DOC_POLICIES)
        raise SourceError(f"short_docs={policy!r} is not valid; valid: {valid}")


def resolve(name: str, column: str = "text", split: str = AUTO_SPLIT, subset: str = "") -> Source:
    """A source from its name, or a SourceError naming the valid kinds."""
    source = _kind_of(name, column, split)
    if subset and source.kind not in ("hub", "folder"):
        raise SourceError(
            f"subset={subset!r} applies to hub datasets and hub-layout folders, not to {name!r}"
        )
    return replace(source, subset=subset)


def _kind_of(name: str, column: str, split: str) -> Source:
    if not name.strip():  # Path("") would be the current folder
        raise SourceError(f"the text source is empty. Valid: {VALID}")
    if name in SYNTHETIC:
        return Source(name, "synthetic", name, column, split)
    if name in SHIPPED:
        return _local(name, SHIPPED[name], column, split)
    location = ALIASES.get(name, name)
    path = Path(location).expanduser()
    if path.exists():
        return _local(name, path, column, split)
    if HUB_ID.match(location) and not location.startswith((".", "/", "~")):
        return Source(name, "hub", location, column, "test" if split == AUTO_SPLIT else split)
    raise SourceError(
        f"text source {name!r}: no such file or folder, and not a hub id. Valid: {VALID}"
    )


def _local(name: str, path: Path, column: str, split: str) -> Source:
    if path.is_dir():
        return _folder(name, path, column, split)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        kind = "text"
    elif suffix in JSON_SUFFIXES:
        kind = "json"
    elif suffix in PARQUET_SUFFIXES:
        kind = "parquet"
    else:
        valid = ", ".join(TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES)
        raise SourceError(f"text source {name!r}: unknown file type {suffix!r}; valid: {valid}")
    return _single_file(Source(name, kind, str(path), column, split))


def _folder(name: str, path: Path, column: str, split: str) -> Source:
    if any((path / marker).exists() for marker in SAVED_MARKERS):
        return Source(name, "saved", str(path), column, split)
    files = [f for f in path.rglob("*") if f.is_file()]
    if files and all(f.suffix.lower() in TEXT_SUFFIXES for f in files):
        return _single_file(Source(name, "text", str(path), column, split))
    return Source(name, "folder", str(path), column, split)


def _single_file(source: Source) -> Source:
    """A source read with `datasets`' file loaders: one split, `train`; text has one column."""
    if source.kind == "text" and source.column != "text":
        raise SourceError(
            f"text source {source.name!r} is plain text: its only column is 'text', "
            f"not {source.column!r}"
        )
    if source.split not in (AUTO_SPLIT, "train"):
        raise SourceError(
            f"text source {source.name!r} has one split, 'train'; got split={source.split!r}"
        )
    return replace(source, split="train")


def texts(source: Source) -> Iterator[tuple[str, str]]:
    """(document id, text) of every record of a dataset source, in order; ids are row numbers."""
    if source.synthetic:
        raise SourceError(f"{source.name!r} is a synthetic prompt, not a dataset")
    records = _records(source)
    for index, record in enumerate(records):
        if source.column not in record:
            raise SourceError(
                f"text source {source.name!r} has no column {source.column!r}; "
                f"columns: {', '.join(sorted(record))}"
            )
        yield str(index), record[source.column] or ""


def _records(source: Source) -> Iterable[dict[str, Any]]:
    import datasets  # slow to import: only when a dataset is read

    try:
        if source.kind == "saved":
            return _split_of(datasets.load_from_disk(source.location), source)
        if source.kind in ("text", "json", "parquet"):
            extra = {"sample_by": "document"} if source.kind == "text" else {}
            return datasets.load_dataset(
                source.kind, data_files=_data_files(source), split="train", streaming=True, **extra
            )
        loaded = datasets.load_dataset(source.location, name=source.subset or None, streaming=True)
        return _split_of(loaded, source)
    except OSError as err:  # missing files, hub unreachable, dataset not found
        offline = " (offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if _offline() else ""
        raise SourceError(f"text source {source.name!r} cannot be opened{offline}: {err}") from err


def _data_files(source: Source) -> list[str]:
    path = Path(source.location)
    if path.is_dir():
        return sorted(str(f) for f in path.rglob("*") if f.is_file())
    return [str(path)]


def _split_of(loaded: Any, source: Source) -> Iterable[dict[str, Any]]:
    """One split of a dataset dict (`test` when asked for `auto` and present, else the only one)."""
    if not hasattr(loaded, "keys"):
        return loaded  # a single split saved on its own
    splits = list(loaded.keys())
    split = source.split
    if split == AUTO_SPLIT:
        split = "test" if "test" in splits or len(splits) != 1 else splits[0]
    if split not in splits:
        raise SourceError(
            f"text source {source.name!r} has no split {split!r}; splits: {', '.join(splits)}"
        )
    return loaded[split]


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in OFFLINE_VARIABLES)


def synthetic_ids(name: str, encode: Encode, length: int) -> torch.Tensor:
    """The first `length` tokens of a synthetic prompt: its prefix, then its unit repeated.

    A million-token prompt is not encoded as one text (the tokenizer's bookkeeping would take
    hundreds of MB): the ids of a block of units are tiled, once encoding the prefix and two
    blocks has shown that they tokenize as the prefix's ids then the block's twice. Otherwise
    (a tokenizer that merges across the block boundary) the whole text is encoded.
    """
    import torch

    prefix, unit = SYNTHETIC[name]
    head, block = encode(prefix), encode(unit * BLOCK_UNITS)
    if encode(prefix + unit * 2 * BLOCK_UNITS) != head + block + block:
        return torch.tensor(_encoded_in_full(prefix, unit, encode, length))
    reps = math.ceil(max(length - len(head), 0) / len(block))
    tiled = torch.tensor(block).repeat(reps)
    return torch.cat([torch.tensor(head, dtype=torch.long), tiled])[:length]


def _encoded_in_full(prefix: str, unit: str, encode: Encode, length: int) -> list[int]:
    per_unit = len(encode(unit * BLOCK_UNITS)) / BLOCK_UNITS
    reps = math.ceil(length / per_unit) + BLOCK_UNITS
    while True:
        ids = encode(prefix + unit * reps)
        if len(ids) >= length:
            return ids[:length]
        reps *= 2


def documents(
    source: Source,
    encode: Encode,
    length: int,
    count: int,
    policy: str,
    eos: int | None,
) -> list[Document]:
    """Up to `count` documents of exactly `length` tokens (one for a synthetic source).

    NotEnoughTextError when not even one can be made.
    """
    if source.synthetic:
        return [Document(synthetic_ids(source.location, encode, length), (source.name,), 0)]
    check_policy(policy)
    if policy == "concat" and eos is None:
        raise SourceError(
            "short_docs=concat joins documents with the end-of-text token, which this model's "
            "tokenizer lacks; use short_docs=skip"
        )
    make = _whole if policy == "skip" else _joined
    found = make(texts(source), encode, length, count, eos)
    if not found:
        raise NotEnoughTextError(_not_enough(source, length, policy))
    return found


def _whole(
    records: Iterator[tuple[str, str]], encode: Encode, length: int, count: int, eos: int | None
) -> list[Document]:
    """Source documents of at least `length` tokens, cut to `length`; shorter ones skipped."""
    import torch

    found: list[Document] = []
    skipped = 0
    for doc_id, text in records:
        ids = encode(text) if text else []
        if len(ids) < length:
            skipped += 1
            continue
        found.append(Document(torch.tensor(ids[:length]), (doc_id,), skipped))
        skipped = 0
        if len(found) == count:
            break
    return found


def _joined(
    records: Iterator[tuple[str, str]], encode: Encode, length: int, count: int, eos: int | None
) -> list[Document]:
    """Source documents joined by `eos` until `length` tokens; the rest of the last one dropped."""
    import torch

    found: list[Document] = []
    ids: list[int] = []
    parts: list[str] = []
    skipped = 0
    for doc_id, text in records:
        if not text:
            skipped += 1
            continue
        ids += ([eos] if ids else []) + encode(text)
        parts.append(doc_id)
        if len(ids) >= length:
            found.append(Document(torch.tensor(ids[:length]), tuple(parts), skipped))
            ids, parts, skipped = [], [], 0
            if len(found) == count:
                break
    return found


def _not_enough(source: Source, length: int, policy: str) -> str:
    if policy == "skip":
        return (
            f"no document of {source.name!r} (split {source.split}) has {length} tokens; use "
            "short_docs=concat to join documents, or a shorter length"
        )
    return (
        f"all the text of {source.name!r} (split {source.split}) makes fewer than {length} tokens"
    )
