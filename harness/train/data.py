"""Training data: sources of token windows and their mixture by ratio.

A source hands out one sample at a time: `length + 1` token ids (inputs are ids[:-1],
targets ids[1:]) and a loss mask over the `length` targets. Three kinds:

  text:PATH              a text file, or every *.txt below a directory
  hf:NAME[:CONFIG]:SPLIT a Hugging Face dataset (hub id or local dir), its `text` column
  passkey                synthetic samples in the passkey task's template (tasks.passkey)

each optionally followed by `@RATIO`, e.g. `text:books/@0.7 passkey@0.3`. Ratios are
relative weights. A batch is a pure function of (seed, step): resuming at a step replays
exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from tasks.passkey import HAYSTACK, NEEDLE, PREFIX, SUFFIX, build_prompt

Encode = Callable[[str], list[int]]
PasskeyLoss = Literal["answer", "keys", "all"]
HF_MAX_TOKENS = 50_000_000  # a dataset is read until this many tokens, the rest is unused


class DataError(ValueError):
    """A data specification that names nothing usable."""


@dataclass(frozen=True)
class Sample:
    ids: list[int]  # length + 1 tokens
    mask: list[bool]  # length: whether target i counts in the loss


class Source(Protocol):
    name: str

    def sample(self, rng: random.Random, length: int) -> Sample: ...


@dataclass(frozen=True)
class TokenStream:
    """Documents joined into one stream with an end-of-text token between them."""

    name: str
    tokens: torch.Tensor  # (n,) int64

    def sample(self, rng: random.Random, length: int) -> Sample:
        if len(self.tokens) < length + 1:
            raise DataError(
                f"source {self.name!r} has {len(self.tokens)} tokens, fewer than one sample "
                f"({length + 1}); add data or shorten --segment-length x --segments"
            )
        start = rng.randrange(len(self.tokens) - length)
        return Sample(self.tokens[start : start + length + 1].tolist(), [True] * length)


@dataclass(frozen=True)
class PasskeySamples:
    """A passkey prompt followed by its answer: a random key at a random depth, the prompt
    length uniform between the shortest the template allows and the sample length (short
    distances make retrieval learnable early), left-padded with `pad_id` out of the loss.

    Loss: "answer" on the answer tokens; "keys" also on the needle's second mention of the
    key, a copy from a few tokens back that teaches copying before the long-range answer
    (its token span is exact for byte-level tokenizers, approximate for BPE); "all" on
    every token after the padding.
    """

    encode: Encode
    pad_id: int
    loss: PasskeyLoss = "answer"
    name: str = "passkey"

    def sample(self, rng: random.Random, length: int) -> Sample:
        key = f"{rng.randrange(100_000):05d}"
        depth = rng.random()
        answer = self.encode(" " + key)
        shortest = len(self.encode(PREFIX + NEEDLE.format(key=key) + SUFFIX + HAYSTACK))
        longest = length + 1 - len(answer)
        if shortest > longest:
            raise DataError(
                f"passkey samples need at least {shortest + len(answer) - 1} tokens; "
                f"the sample length is {length}"
            )
        text = build_prompt(self.encode, rng.randint(shortest, longest), depth, key)
        prompt = self.encode(text)
        pad = length + 1 - len(prompt) - len(answer)
        ids = [self.pad_id] * pad + prompt + answer
        if self.loss == "all":
            return Sample(ids, [i >= pad for i in range(length)])
        mask = [i >= length - len(answer) for i in range(length)]
        if self.loss == "keys":
            first, end = self._echo(text, key)
            for i in range(pad + first - 1, pad + end - 1):
                mask[i] = True
        return Sample(ids, mask)

    def _echo(self, prompt: str, key: str) -> tuple[int, int]:
        """Token span [first, end) of the key's second mention in the needle."""
        needle = NEEDLE.format(key=key)
        start = prompt.index(needle) + needle.rindex(key)
        return len(self.encode(prompt[:start])), len(self.encode(prompt[: start + len(key)]))


@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor  # (b, length + 1) int64
    mask: torch.Tensor  # (b, length) bool
    source: torch.Tensor  # (b,) int64: index of the source of each row


@dataclass(frozen=True)
class Mixture:
    sources: Sequence[Source]
    weights: Sequence[float]

    def batch(self, seed: int, step: int, size: int, length: int) -> Batch:
        """The batch of optimizer step `step`: a pure function of (seed, step)."""
        rng = random.Random(f"harness-train-{seed}-{step}")
        picks = rng.choices(range(len(self.sources)), weights=self.weights, k=size)
        samples = [self.sources[i].sample(rng, length) for i in picks]
        return Batch(
            ids=torch.tensor([s.ids for s in samples], dtype=torch.long),
            mask=torch.tensor([s.mask for s in samples], dtype=torch.bool),
            source=torch.tensor(picks, dtype=torch.long),
        )


def parse_mixture(
    specs: Sequence[str], encode: Encode, eos_id: int, passkey_loss: PasskeyLoss = "answer"
) -> Mixture:
    """`KIND:ARG@RATIO` strings -> a mixture (see the module docstring)."""
    if not specs:
        raise DataError("no training data: give --data text:PATH, hf:NAME:SPLIT or passkey")
    sources, weights = [], []
    for spec in specs:
        body, ratio = _split_ratio(spec)
        sources.append(_source(body, encode, eos_id, passkey_loss))
        weights.append(ratio)
    if sum(weights) <= 0:
        raise DataError(f"the data ratios {weights} sum to zero; give at least one ratio > 0")
    return Mixture(sources, weights)


def _split_ratio(spec: str) -> tuple[str, float]:
    body, sep, ratio = spec.rpartition("@")
    if not sep:
        return spec, 1.0
    try:
        value = float(ratio)
    except ValueError:
        raise DataError(f"bad ratio {ratio!r} in data spec {spec!r}: expected a number") from None
    if not value >= 0 or value == float("inf"):
        raise DataError(f"bad ratio {ratio!r} in data spec {spec!r}: expected a finite number >= 0")
    return body, value


def _source(body: str, encode: Encode, eos_id: int, passkey_loss: PasskeyLoss) -> Source:
    kind, _, arg = body.partition(":")
    if kind == "passkey" and not arg:
        return PasskeySamples(encode, eos_id, passkey_loss)
    if kind == "text" and arg:
        return text_source(Path(arg), encode, eos_id)
    if kind == "hf" and arg:
        return hf_source(arg, encode, eos_id)
    raise DataError(
        f"bad data spec {body!r}: expected text:PATH, hf:NAME[:CONFIG]:SPLIT or passkey, "
        "each optionally followed by @RATIO"
    )


def _stream(name: str, documents: Sequence[str], encode: Encode, eos_id: int) -> TokenStream:
    ids: list[int] = []
    for doc in documents:
        ids += encode(doc)
        ids.append(eos_id)
    return TokenStream(name, torch.tensor(ids, dtype=torch.long))


def text_source(path: Path, encode: Encode, eos_id: int) -> TokenStream:
    """A text file, or the *.txt files below a directory in sorted order."""
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"data directory {str(path)!r} has no *.txt files")
    documents = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    return _stream(f"text:{path}", documents, encode, eos_id)


def hf_source(arg: str, encode: Encode, eos_id: int) -> TokenStream:
    """`NAME:SPLIT` or `NAME:CONFIG:SPLIT`: the `text` column, up to HF_MAX_TOKENS tokens."""
    import datasets

    parts = arg.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError(f"bad dataset spec hf:{arg}: expected hf:NAME:SPLIT or NAME:CONFIG:SPLIT")
    name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1]
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise DataError(
            f"cannot load dataset hf:{arg} ({type(err).__name__}: {err}); offline, only "
            "local directories and cached datasets load"
        ) from None
    if "text" not in rows.column_names:
        raise DataError(f"dataset hf:{arg} has no `text` column (columns: {rows.column_names})")
    documents, tokens = [], 0
    for text in rows["text"]:
        documents.append(text)
        tokens += len(text)  # characters: about the byte-level token count
        if tokens >= HF_MAX_TOKENS:
            break
    return _stream(f"hf:{arg}", documents, encode, eos_id)
