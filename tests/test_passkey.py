"""The passkey task: prompt lengths in each model's own tokens, seeded keys, scoring."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from harness.models.tokenizer import byte_tokenizer
from tasks.passkey import HAYSTACK, NEEDLE, PREFIX, SUFFIX, build_prompt, passkey_key, samples_at

CORPUS = [PREFIX, HAYSTACK * 3, NEEDLE.format(key="12345"), SUFFIX, "0123456789 " * 5]


def bpe_bytes() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    return tok


def wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"])
    )
    return tok


BYTES, BPE, WORDPIECE = byte_tokenizer(), bpe_bytes(), wordpiece()
ENCODERS = {
    "bytes": lambda text: BYTES.encode(text, add_special_tokens=False),
    "bpe": lambda text: BPE.encode(text).ids,
    "wordpiece": lambda text: WORDPIECE.encode(text).ids,
}


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("length", [300, 777, 2048, 5000])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_prompt_length_within_a_few_tokens(name: str, length: int, depth: float) -> None:
    encode = ENCODERS[name]
    prompt = build_prompt(encode, length, depth, "04217")
    assert length - 3 <= len(encode(prompt)) <= length
    assert prompt.startswith(PREFIX) and prompt.endswith(SUFFIX)
    assert prompt.count("04217") == 2


def test_needle_depth_is_where_asked() -> None:
    encode = ENCODERS["bytes"]
    positions = [build_prompt(encode, 4000, d, "55555").index("55555") for d in (0, 0.5, 1)]
    assert positions[0] == len(PREFIX) + len("The passkey is ")
    assert 1500 < positions[1] < 2500
    assert positions[2] > 3600


def test_too_short_length_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="shorter than the template"):
        build_prompt(ENCODERS["bytes"], 100, 0.5, "00000")


def test_keys_are_a_function_of_seed_length_and_sample() -> None:
    a = samples_at(1024, 8, None, seed=3)
    assert a == samples_at(1024, 8, None, seed=3)
    assert [s.key for s in a] != [s.key for s in samples_at(1024, 8, None, seed=4)]
    assert [s.key for s in a] != [s.key for s in samples_at(2048, 8, None, seed=3)]
    assert all(len(s.key) == 5 and s.key.isdigit() for s in a)
    assert [s.depth for s in samples_at(1024, 4, None, 0)] == [0.125, 0.375, 0.625, 0.875]
    assert passkey_key(3, 1024, 5) == a[5].key


def test_depths_given_take_samples_per_depth() -> None:
    found = samples_at(512, 2, (0.0, 1.0), seed=0)
    assert [(s.index, s.depth) for s in found] == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)]
