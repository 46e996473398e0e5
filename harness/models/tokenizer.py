"""Tokenizers: the byte-level one of the built-in tiny models, and lookup for checkpoints.

A `tokenizer.json` (a checkpoint's, or the byte-level one built here) is read with the
`tokenizers` library directly, as a `TextTokenizer`: encode and decode give what transformers'
fast tokenizer gives for the same files, without importing transformers (about a second of
start-up). What `tokenizers` alone would not reproduce goes through transformers'
AutoTokenizer: a folder without tokenizer.json, a tokenizer_config.json naming a
model-specific class or asking for `clean_up_tokenization_spaces` on a non-BPE model, an
end-of-text token missing from the vocabulary, and hub tokenizers (the catalog's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_FILE, CONFIG_FILE)
# tokenizer_config.json classes that transformers runs as tokenizer.json says, nothing added
GENERIC = ("PreTrainedTokenizerFast", "TokenizersBackend")
Encode = Callable[[str], list[int]]


class TextCodec(Protocol):
    """What the harness asks of a tokenizer (TextTokenizer, or a transformers tokenizer)."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Any, skip_special_tokens: bool = ...) -> str: ...

    def __len__(self) -> int: ...

    def save_pretrained(self, path: str | Path) -> Any: ...


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the part of transformers' tokenizer interface the harness
    uses: encode, decode, eos_token(_id), len and save_pretrained."""

    def __init__(self, tokenizer: Tokenizer, eos_token: str | None) -> None:
        self.backend = tokenizer
        self.eos_token = eos_token
        self.eos_token_id = None if eos_token is None else tokenizer.token_to_id(eos_token)

    @classmethod
    def from_file(cls, path: Path, eos_token: str | None) -> TextTokenizer:
        """ValueError naming the file when `tokenizers` cannot read it."""
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for a malformed file
            raise ValueError(f"{path} is not a tokenizer.json tokenizers reads: {err}") from None
        return cls(backend, eos_token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int] | Any, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # a tensor, or a sequence
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def save_pretrained(self, path: str | Path) -> None:
        """tokenizer.json and tokenizer_config.json, read back by load_tokenizer and by
        transformers' AutoTokenizer alike."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / TOKENIZER_FILE))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.eos_token,
            "clean_up_tokenization_spaces": False,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _gpt2_byte_alphabet() -> list[str]:
    """The 256 printable characters GPT-2's byte-level BPE uses, in byte order 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_tokenizer() -> TextTokenizer:
    """256 byte tokens (id = byte value) and `<|endoftext|>` as id 256."""
    vocab = {char: byte for byte, char in enumerate(_gpt2_byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return TextTokenizer(tok, EOS)


def load_tokenizer(path: Path | None, fallback: str) -> TextCodec:
    """The tokenizer stored beside a checkpoint, else `fallback` (a hub id or local dir)."""
    if path is not None and (path / TOKENIZER_FILE).is_file():
        config = _read_json(path / CONFIG_FILE)
        if not _needs_transformers(path / TOKENIZER_FILE, config):
            found = TextTokenizer.from_file(path / TOKENIZER_FILE, _eos_token(path, config))
            if found.eos_token is None or found.eos_token_id is not None:
                return found  # a missing end-of-text token: transformers adds it
    from transformers import AutoTokenizer

    if path is not None and any((path / f).exists() for f in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(fallback)


def encoder(tokenizer: TextCodec) -> Encode:
    """Text -> token ids, without special tokens."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return encode


def _needs_transformers(tokenizer_file: Path, config: dict[str, Any]) -> bool:
    """Whether transformers would not just run tokenizer.json: a model-specific tokenizer class
    (which may rebuild the pipeline), or its clean-up of spaces, which it applies to models
    other than BPE when the config asks for it."""
    if config.get("tokenizer_class", GENERIC[0]) not in GENERIC:
        return True
    if not config.get("clean_up_tokenization_spaces", False):
        return False
    kind = _read_json(tokenizer_file).get("model", {}).get("type")
    return kind != "BPE"


def _eos_token(folder: Path, config: dict[str, Any]) -> str | None:
    """The end-of-text token as transformers finds it: tokenizer_config.json, then
    special_tokens_map.json; a string or an {"content": ...} entry."""
    token = config.get("eos_token") or _read_json(folder / SPECIAL_TOKENS_FILE).get("eos_token")
    return token.get("content") if isinstance(token, dict) else token


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
