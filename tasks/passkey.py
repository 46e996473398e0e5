"""Passkey retrieval: find a 5-digit key hidden at some depth of a long, repetitive haystack.

The template is InfiniteBench's, as used by Stuffed Mamba (paper-notes.md section 5). A
prompt's length is counted in the model's own tokens; keys come from a generator seeded by
(seed, length, sample), so every model sees the same keys at the same depths and results
pair up across models. Scoring: greedy decoding, correct iff the key appears in the output;
plus the log-probability of the key under teacher forcing, a graded signal.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.base import NonFiniteError, Progress, Task

if TYPE_CHECKING:
    from harness.models.base import LanguageModel

PREFIX = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it.\n\n"
)
HAYSTACK = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
)
NEEDLE = "The passkey is {key}. Remember it. {key} is the passkey.\n"
SUFFIX = "\nWhat is the pass key? The passkey is"

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_SAMPLES = 10
EXTRA_NEW_TOKENS = 3  # decoded beyond the key's own token count
CHANCE_LOGPROB = math.log(1e-5)  # a uniform guess among the 100000 five-digit keys


@dataclass(frozen=True)
class Sample:
    length: int  # target prompt length in tokens
    index: int  # sample number within the length
    depth: float  # where the needle sits, 0 = first haystack line, 1 = last
    key: str


def passkey_key(seed: int, length: int, index: int) -> str:
    """The 5-digit key of one sample: a pure function of (seed, length, index)."""
    return f"{random.Random(f'passkey-{seed}-{length}-{index}').randrange(100_000):05d}"


def samples_at(
    length: int, samples: int, depths: tuple[float, ...] | None, seed: int
) -> list[Sample]:
    """`samples` per depth when depths are given, else `samples` spread evenly at (i+0.5)/n."""
    if depths is None:
        spots = [(i + 0.5) / samples for i in range(samples)]
    else:
        spots = [d for d in depths for _ in range(samples)]
    return [Sample(length, i, d, passkey_key(seed, length, i)) for i, d in enumerate(spots)]


def build_prompt(encode: Callable[[str], list[int]], length: int, depth: float, key: str) -> str:
    """The prompt with the most haystack that fits in `length` tokens (usually exactly).

    Whole haystack lines first, then the first characters of one more line: the count lands
    on the target, or a token below it where a character completes a multi-byte token.
    """
    fixed = len(encode(PREFIX + NEEDLE.format(key=key) + SUFFIX))
    per_line = len(encode(HAYSTACK))
    if fixed + per_line > length:
        raise ValueError(
            f"passkey length {length} is shorter than the template ({fixed + per_line} tokens)"
        )
    lines = (length - fixed) // per_line
    while lines > 1 and len(encode(_assemble(lines, depth, key, 0))) > length:
        lines -= 1  # BPE merges across lines made it longer than the estimate
    low, high = 0, len(HAYSTACK) - 1  # most extra characters that still fit
    while low < high:
        mid = (low + high + 1) // 2
        if len(encode(_assemble(lines, depth, key, mid))) <= length:
            low = mid
        else:
            high = mid - 1
    return _assemble(lines, depth, key, low)


def _assemble(lines: int, depth: float, key: str, chars: int) -> str:
    """`lines` haystack lines with the needle after round(depth * lines) of them, then the
    first `chars` characters of one more line."""
    before = round(depth * lines)
    tail = HAYSTACK[:chars]
    haystack = HAYSTACK * before + NEEDLE.format(key=key) + HAYSTACK * (lines - before) + tail
    return PREFIX + haystack + SUFFIX


class Passkey(Task):
    name = "passkey"
    description = (
        "passkey retrieval in a repetitive haystack (InfiniteBench template), by length and depth"
    )
    table = "passkey"
    prompt_parts = True  # serves inference strategies that split the context (oprm)
    schema = pa.schema(
        [
            ("length", pa.int64()),
            ("tokens", pa.int64()),
            ("depth", pa.float64()),
            ("sample", pa.int64()),
            ("key", pa.string()),
            ("prediction", pa.string()),
            ("correct", pa.bool_()),
            ("key_logprob", pa.float64()),
            ("beyond_context", pa.bool_()),
        ]
    )

    def units(self) -> list[dict[str, Any]]:
        o = self.options
        depths = list(o.depths) if o.depths is not None else None
        return [
            {"length": n, "samples": o.samples or DEFAULT_SAMPLES, "depths": depths, "seed": o.seed}
            for n in (o.lengths or DEFAULT_LENGTHS)
        ]

    def cost(self, params: dict[str, Any]) -> int:
        return params["length"] * params["samples"] * len(params["depths"] or [None])

    def run(self, model: LanguageModel, params: dict[str, Any], progress: Progress) -> list[dict]:
        depths = tuple(params["depths"]) if params["depths"] is not None else None
        rows = []
        for sample in samples_at(params["length"], params["samples"], depths, params["seed"]):
            rows.append(self._one(model, sample, progress))
        return rows

    def _one(self, model: LanguageModel, sample: Sample, progress: Progress) -> dict[str, Any]:
        from harness.models.base import PromptParts

        text = build_prompt(model.encode, sample.length, sample.depth, sample.key)
        parts = PromptParts(PREFIX, text[len(PREFIX) : -len(SUFFIX)], SUFFIX)
        ids = model.encode(text)
        answer = model.encode(" " + sample.key)
        logits, state = model.prefill_prompt(parts, progress=progress)
        if not logits.isfinite().all():
            raise NonFiniteError(f"non-finite logits after a {len(ids)}-token prompt")
        key_logprob = model.score(logits, state.clone(), answer)
        output = model.decode(model.generate(logits, state, len(answer) + EXTRA_NEW_TOKENS))
        return {
            "length": sample.length,
            "tokens": len(ids),
            "depth": sample.depth,
            "sample": sample.index,
            "key": sample.key,
            "prediction": output,
            "correct": sample.key in output,
            "key_logprob": key_logprob,
            "beyond_context": len(ids) > model.info.train_context,
        }

    def summary(self, rows: list[dict[str, Any]]) -> str:
        """correct/samples and the mean log-probability of the key (a graded signal)."""
        logprob = sum(r["key_logprob"] for r in rows) / len(rows)
        return f"{sum(r['correct'] for r in rows)}/{len(rows)} ({logprob:.1f})"

    def at_chance(self, rows: list[dict[str, Any]]) -> bool:
        """No sample right, and the key no likelier on average than a uniform guess."""
        logprob = sum(r["key_logprob"] for r in rows) / len(rows)
        return not any(r["correct"] for r in rows) and logprob <= CHANCE_LOGPROB
