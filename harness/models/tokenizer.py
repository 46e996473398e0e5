"""Tokenizers: the byte-level one of the built-in tiny models, and lookup for checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
Encode = Callable[[str], list[int]]


def _gpt2_byte_alphabet() -> list[str]:
    """The 256 printable characters GPT-2's byte-level BPE uses, in byte order 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens (id = byte value) and `<|endoftext|>` as id 256."""
    vocab = {char: byte for byte, char in enumerate(_gpt2_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


def load_tokenizer(path: Path | None, fallback: str) -> PreTrainedTokenizerBase:
    """The tokenizer stored beside a checkpoint, else `fallback` (a hub id or local dir)."""
    if path is not None and any((path / f).exists() for f in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(fallback)


def encoder(tokenizer: PreTrainedTokenizerBase) -> Encode:
    """Text -> token ids, without special tokens."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return encode
