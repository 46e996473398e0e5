"""The RWKV World tokenizer: greedy longest match over the bytes of the text.

The vocabulary file (rwkv_vocab_v20230424.txt: one `<id> <python literal> <byte length>` per
line, a str or bytes literal) ships with RWKV checkpoints converted for Hugging Face and with
the `rwkv` package. Encoding walks a byte trie and always takes the longest token that matches
at the current position, as the reference tokenizer does; id 0 is the end of text.
"""

from __future__ import annotations

import ast
from importlib import resources
from pathlib import Path

VOCAB_FILE = "rwkv_vocab_v20230424.txt"
END = -1  # trie key marking that the bytes so far are a token (its value is the id)


class WorldTokenizer:
    eos_token_id = 0

    def __init__(self, vocab_file: Path) -> None:
        self.vocab_file = vocab_file
        self.tokens: dict[int, bytes] = {}
        self.trie: dict[int, dict] = {}
        for line in vocab_file.read_text(encoding="utf-8").splitlines():
            index, rest = line.split(" ", 1)
            literal, length = rest.rsplit(" ", 1)
            token = ast.literal_eval(literal)
            token = token.encode("utf-8") if isinstance(token, str) else token
            if len(token) != int(length):
                raise ValueError(f"{vocab_file}: token {index} is not {length} bytes long")
            self.tokens[int(index)] = token
            node = self.trie
            for byte in token:
                node = node.setdefault(byte, {})
            node[END] = int(index)

    def __len__(self) -> int:
        return len(self.tokens) + 1  # and the end-of-text id 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text` (the World vocabulary adds no special tokens either way)."""
        data, ids, i = text.encode("utf-8"), [], 0
        while i < len(data):
            node, j, match = self.trie, i, None
            while j < len(data) and data[j] in node:
                node = node[data[j]]
                j += 1
                if END in node:
                    match = (j, node[END])
            if match is None:
                raise ValueError(f"byte {data[i]:#x} at {i} is not in the vocabulary")
            i, token = match
            ids.append(token)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return b"".join(self.tokens.get(i, b"") for i in ids).decode("utf-8", errors="replace")

    def save_pretrained(self, path: str | Path) -> Path:
        """The vocabulary file copied into the folder `path`, where `world_tokenizer` finds it."""
        target = Path(path) / VOCAB_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.vocab_file.read_bytes())
        return target


def world_tokenizer(folder: Path | None) -> WorldTokenizer:
    """The vocabulary beside a checkpoint (any *vocab*.txt), else the `rwkv` package's."""
    found = sorted(folder.glob("*vocab*.txt")) if folder is not None else []
    if found:
        return WorldTokenizer(found[0])
    try:
        packaged = resources.files("rwkv") / VOCAB_FILE
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "no RWKV World vocabulary: none beside the checkpoint and the `rwkv` package is not "
            "installed (pip install 'harness[rwkv]')"
        ) from None
    with resources.as_file(packaged) as path:
        return WorldTokenizer(path)
