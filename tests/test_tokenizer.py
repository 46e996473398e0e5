"""Tokenizers read with `tokenizers` alone give transformers' fast tokenizer's ids and text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from harness.models.bundled import bundled_models
from harness.models.tokenizer import EOS, TextTokenizer, byte_tokenizer, load_tokenizer

TEXTS = [
    "",
    "The passkey is 12345. Remember it. 12345 is the passkey.",
    "  leading spaces , before punctuation . and ? marks !\n\n\ttabs",
    "Unicode: café, naïve, 中文, emoji 🙂, combining é",
    f"two documents{EOS}joined by the end-of-text token {EOS}",
    "x" * 3000 + "\n" * 50,
]


def same(ours: TextTokenizer, theirs: PreTrainedTokenizerFast) -> None:
    assert ours.eos_token_id == theirs.eos_token_id and len(ours) == len(theirs)
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == theirs.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
            ids, skip_special_tokens=True
        )


def test_byte_tokenizer_is_transformers_fast_tokenizer() -> None:
    ours = byte_tokenizer()
    same(ours, PreTrainedTokenizerFast(tokenizer_object=ours.backend, eos_token=EOS))
    assert ours.encode("ab\n") == [97, 98, 10] and ours.eos_token_id == 256


@pytest.mark.skipif(not bundled_models(), reason="no bundled models in this checkout")
def test_bundled_tokenizers_load_without_transformers_and_agree() -> None:
    for path in bundled_models().values():
        ours = load_tokenizer(path, "unused")
        assert isinstance(ours, TextTokenizer)
        same(ours, AutoTokenizer.from_pretrained(path))


def bpe_with_merges() -> Tokenizer:
    """A byte-level BPE with real merges, trained here on a little text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([t * 5 for t in TEXTS[1:4]] * 20, trainer)
    return tok


def test_saved_bpe_round_trips_through_both_libraries(tmp_path: Path) -> None:
    TextTokenizer(bpe_with_merges(), EOS).save_pretrained(tmp_path)
    ours = load_tokenizer(tmp_path, "unused")
    assert isinstance(ours, TextTokenizer)
    assert len(ours.encode(TEXTS[1])) < len(TEXTS[1].encode())  # the merges are used
    same(ours, AutoTokenizer.from_pretrained(tmp_path))


def test_what_tokenizers_alone_cannot_match_goes_through_transformers(tmp_path: Path) -> None:
    """WordPiece with transformers' clean-up of spaces, and a model-specific class."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(TEXTS * 5, trainers.WordPieceTrainer(special_tokens=["[UNK]", EOS]))
    TextTokenizer(tok, EOS).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(config | {"clean_up_tokenization_spaces": True})
    )
    assert not isinstance(load_tokenizer(tmp_path, "unused"), TextTokenizer)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(config | {"tokenizer_class": "BertTokenizer"})
    )
    assert not isinstance(load_tokenizer(tmp_path, "unused"), TextTokenizer)


@pytest.mark.skipif(not bundled_models(), reason="no bundled models in this checkout")
def test_loading_a_bundled_tokenizer_does_not_import_transformers() -> None:
    path = next(iter(bundled_models().values()))
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from harness.models.tokenizer import load_tokenizer\n"
        f"tok = load_tokenizer(Path({str(path)!r}), 'unused')\n"
        "assert tok.decode(tok.encode('hello')) == 'hello'\n"
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
