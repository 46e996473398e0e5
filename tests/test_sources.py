"""Text sources, offline: local files in every format, saved datasets, policies, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from harness.models.tokenizer import byte_tokenizer
from tasks.base import TaskOptions
from tasks.passkey import HAYSTACK, PREFIX
from tasks.perplexity import Perplexity
from tasks.sources import (
    BLOCK_UNITS,
    CAPITALS,
    SYNTHETIC,
    NotEnoughTextError,
    SourceError,
    documents,
    resolve,
    synthetic_ids,
)
from tasks.state_capacity import StateCapacity
from tasks.state_stats import StateStats

TOKENIZER = byte_tokenizer()
EOS = TOKENIZER.eos_token_id
TEXTS = ["a" * 50, "", "b" * 300, "c" * 20, "d" * 400]  # bytes = tokens


def encode(text: str) -> list[int]:
    return TOKENIZER.encode(text, add_special_tokens=False)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    return path


def write_parquet(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"body": texts}), path)
    return path


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """The same five documents in every local format the tasks read."""
    text_dir = tmp_path / "books"
    text_dir.mkdir()
    for i, t in enumerate(TEXTS):
        (text_dir / f"{i:02d}.txt").write_text(t)
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict({"body": TEXTS}),
            "train": datasets.Dataset.from_dict({"body": ["x"]}),
        }
    ).save_to_disk(saved)
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    write_parquet(hub / "data" / "test-00000-of-00001.parquet", TEXTS)
    write_parquet(hub / "data" / "validation-00000-of-00001.parquet", ["v" * 500])
    return {
        "jsonl": write_jsonl(tmp_path / "docs.jsonl", TEXTS),
        "parquet": write_parquet(tmp_path / "docs.parquet", TEXTS),
        "saved": saved,
        "hub": hub,
        "text_dir": text_dir,
    }


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "saved", "hub", "text_dir"])
def test_every_local_format_skips_short_and_empty_documents(
    sources: dict[str, Path], kind: str
) -> None:
    column = "text" if kind == "text_dir" else "body"
    source = resolve(str(sources[kind]), column=column)
    docs = documents(source, encode, 100, count=5, policy="skip", eos=EOS)
    assert [d.parts for d in docs] == [("2",), ("4",)]
    assert [d.skipped for d in docs] == [2, 1]  # "a"*50 and "" before the first; "c"*20 next
    assert docs[0].ids.tolist() == encode("b" * 100) and docs[1].ids.tolist() == encode("d" * 100)


def test_single_text_file_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("line one\nline two\n" * 20)
    [doc] = documents(resolve(str(path)), encode, 300, count=3, policy="skip", eos=EOS)
    assert doc.parts == ("0",) and doc.ids.tolist() == encode(path.read_text())[:300]


def test_the_shipped_text_is_the_default_of_perplexity_only() -> None:
    source = resolve("sonnets")
    assert (source.name, source.kind, source.split) == ("sonnets", "text", "train")
    text = Path(source.location).read_text()
    assert text.startswith("THE SONNETS") and len(text.encode()) == 95_728
    [doc] = documents(source, encode, 70_000, count=2, policy="skip", eos=EOS)
    assert doc.ids.tolist() == encode(text)[:70_000]
    assert Perplexity.Settings().source == "sonnets"
    assert StateStats.Settings().source == "newlines"  # the paper's collapse prompt
    assert StateCapacity.Settings().source == "newlines"


def test_concat_joins_documents_with_end_of_text(sources: dict[str, Path]) -> None:
    source = resolve(str(sources["jsonl"]), column="body")
    first, second = documents(source, encode, 360, count=3, policy="concat", eos=EOS)
    assert first.parts == ("0", "2", "3") and first.skipped == 1  # the empty one
    assert (
        first.ids.tolist()
        == [*encode("a" * 50), EOS, *encode("b" * 300), EOS, *encode("c" * 20)][:360]
    )
    assert second.parts == ("4",) and len(second.ids) == 360


def test_concat_needs_an_end_of_text_token(sources: dict[str, Path]) -> None:
    source = resolve(str(sources["jsonl"]), column="body")
    with pytest.raises(SourceError, match="short_docs=skip"):
        documents(source, encode, 100, count=1, policy="concat", eos=None)


def test_length_beyond_every_document_is_a_clear_error(sources: dict[str, Path]) -> None:
    source = resolve(str(sources["parquet"]), column="body")
    with pytest.raises(NotEnoughTextError, match="short_docs=concat"):
        documents(source, encode, 5000, count=1, policy="skip", eos=EOS)
    with pytest.raises(NotEnoughTextError, match="fewer than 5000 tokens"):
        documents(source, encode, 5000, count=1, policy="concat", eos=EOS)


def test_unknown_column_names_the_columns(sources: dict[str, Path]) -> None:
    source = resolve(str(sources["jsonl"]), column="text")
    with pytest.raises(SourceError, match="no column 'text'; columns: body, n"):
        documents(source, encode, 10, count=1, policy="skip", eos=EOS)


def test_plain_text_has_only_a_text_column(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(SourceError, match="only column is 'text'"):
        resolve(str(tmp_path / "a.txt"), column="body")


def test_splits_of_folders(sources: dict[str, Path]) -> None:
    saved = resolve(str(sources["saved"]), column="body", split="train")
    [doc] = documents(saved, encode, 1, count=5, policy="skip", eos=EOS)
    assert doc.ids.tolist() == encode("x")
    hub = resolve(str(sources["hub"]), column="body", split="validation")
    assert documents(hub, encode, 500, count=5, policy="skip", eos=EOS)[0].ids.tolist() == encode(
        "v" * 500
    )
    with pytest.raises(SourceError, match="no split 'dev'; splits: "):
        documents(
            resolve(str(sources["saved"]), "body", "dev"), encode, 1, 1, policy="skip", eos=EOS
        )
    with pytest.raises(SourceError, match="one split, 'train'"):
        resolve(str(sources["jsonl"]), "body", "test")


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no such file or folder.*Valid: newlines, capital"):
        resolve(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(SourceError, match=r"unknown file type '\.csv'; valid: \.txt"):
        resolve(str(tmp_path / "data.csv"))


def test_hub_dataset_offline_is_a_clear_error() -> None:
    source = resolve("pg19")
    assert (source.kind, source.location, source.split) == ("hub", "emozilla/pg19", "test")
    with pytest.raises(SourceError, match="cannot be opened \\(offline"):
        documents(source, encode, 10, count=1, policy="skip", eos=EOS)


@pytest.mark.parametrize("name", ["newlines", "capital", "haystack"])
@pytest.mark.parametrize("length", [1, 777, 5000])
def test_synthetic_prompts_have_the_exact_length(name: str, length: int) -> None:
    ids = synthetic_ids(name, encode, length)
    assert len(ids) == length
    [doc] = documents(resolve(name), encode, length, count=4, policy="skip", eos=None)
    assert torch.equal(doc.ids, ids) and doc.parts == (name,)


@cache
def merging_bpe(pre_tokenize: bool) -> Callable[[str], list[int]]:
    """A BPE trained on runs of newlines and the capital sentences; without a pre-tokenizer
    its tokens span sentence and block boundaries."""
    tok = Tokenizer(models.BPE())
    if pre_tokenize:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["\n" * 7, CAPITALS * 3, PREFIX + HAYSTACK * 3]
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return lambda text: tok.encode(text).ids


@pytest.mark.parametrize("pre_tokenize", [True, False])
@pytest.mark.parametrize("name", ["newlines", "capital", "haystack"])
def test_synthetic_prompts_are_the_whole_text_encoded(name: str, pre_tokenize: bool) -> None:
    encoder = merging_bpe(pre_tokenize)
    prefix, unit = SYNTHETIC[name]
    whole = encoder(prefix + unit * 4 * BLOCK_UNITS)  # four blocks: tiled three times
    length = 3 * len(whole) // 4  # clear of how the text's end tokenizes
    assert synthetic_ids(name, encoder, length).tolist() == whole[:length]


def test_synthetic_prompts_text() -> None:
    assert TOKENIZER.decode(synthetic_ids("newlines", encode, 10)) == "\n" * 10
    assert TOKENIZER.decode(synthetic_ids("capital", encode, 33)).startswith(
        "The capital of China is Beijing. "
    )
    haystack = TOKENIZER.decode(synthetic_ids("haystack", encode, 400))
    assert haystack.startswith(PREFIX + HAYSTACK)


def test_task_settings_are_checked_before_any_work(tmp_path: Path) -> None:
    def tasks(**settings: str) -> None:
        Perplexity(TaskOptions(extra={"perplexity": settings}))

    with pytest.raises(ValueError, match="short_docs='pad' is not valid; valid: skip, concat"):
        tasks(short_docs="pad")
    with pytest.raises(ValueError, match="bucket=0 must be > 0"):
        tasks(bucket="0")
    with pytest.raises(ValueError, match="no such file or folder"):
        tasks(source=str(tmp_path / "nothing.parquet"))
    with pytest.raises(ValueError, match="has no option 'buckets'; valid: bucket, chunk"):
        tasks(buckets="128")


def test_subset_applies_to_hub_datasets_only(sources: dict[str, Path]) -> None:
    assert resolve("owner/corpus", subset="en").subset == "en"
    with pytest.raises(SourceError, match="subset='en' applies to hub datasets"):
        resolve(str(sources["jsonl"]), column="body", subset="en")
    with pytest.raises(SourceError, match="applies to hub datasets"):
        resolve("newlines", subset="en")
