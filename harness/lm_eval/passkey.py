"""`harness_passkey`: passkey retrieval in lm-eval, with the prompts of `harness run`.

The documents are built by `tasks.passkey` itself (`samples_at` for the seeded keys and
depths, `build_prompt` for a prompt of the target length), with the lengths counted in the
evaluated model's tokenizer (see `harness.lm_eval.tokenizer`), so for one seed and tokenizer
lm-eval and `harness run` ask the same questions. Scoring is the same too: greedy decoding
with a budget of the key's token count + 3 tokens (set per request, over any `--gen_kwargs
max_gen_toks`), correct iff the key appears in the output.

Settings, from `--metadata` (JSON):
- `max_seq_lengths`: prompt lengths in tokens (default [1024, 2048, 4096]); "1k,4k" works too;
- `depths`: needle depths in [0, 1], `samples` prompts at each (default: `samples` prompts
  spread evenly over the depths, as `harness run` does);
- `samples`: prompts per length, per depth when depths are given (default 10);
- `seed`: the key generator's seed (default 0).

Metrics: `acc` over all prompts, and the accuracy over the prompts of each length named by
the length (`4096`, lm-eval's RULER convention: one metric per length) (lm-eval
warns that they were scored on different numbers of documents: that is the point). The
documents go round the lengths (one prompt of each length, then the next), so `--limit n`
keeps every length.

With lm-eval's `hf` backend, give `max_length` of at least the longest prompt plus its
generation budget (a smaller one is refused, a missing one warned about): `hf` otherwise cuts
prompts from the left to 2048 tokens or its model config's maximum without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import mean

from harness.lm_eval import metadata as meta
from harness.lm_eval.task_base import MetadataTask, Metric, by_length
from harness.lm_eval.tokenizer import tokenizer_from_metadata
from harness.models.tokenizer import Encode, encoder
from tasks.passkey import DEFAULT_SAMPLES, EXTRA_NEW_TOKENS, Sample, build_prompt, samples_at

DEFAULT_LENGTHS = (1024, 2048, 4096)


@dataclass(frozen=True)
class PasskeySettings:
    lengths: tuple[int, ...]
    samples: int
    depths: tuple[float, ...] | None
    seed: int

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> PasskeySettings:
        return cls(
            lengths=meta.lengths(metadata, DEFAULT_LENGTHS),
            samples=meta.positive_int(metadata, "samples", DEFAULT_SAMPLES),
            depths=meta.depths(metadata),
            seed=meta.integer(metadata, "seed", 0),
        )

    def samples_in_order(self) -> list[Sample]:
        """Every sample of every length, going round the lengths."""
        by_length = [samples_at(n, self.samples, self.depths, self.seed) for n in self.lengths]
        return [sample for round_ in zip(*by_length, strict=True) for sample in round_]


def documents(**metadata: Any) -> dict[str, datasets.Dataset]:
    """lm-eval's `custom_dataset`: the test split, one document per prompt."""
    settings = PasskeySettings.from_metadata(metadata)
    encode = encoder(tokenizer_from_metadata(metadata))
    docs = [document(encode, sample) for sample in settings.samples_in_order()]
    meta.check_context_fits(metadata, max(d["tokens"] + d["max_gen_toks"] for d in docs))
    return {"test": datasets.Dataset.from_list(docs)}


def document(encode: Encode, sample: Sample) -> dict[str, Any]:
    prompt = build_prompt(encode, sample.length, sample.depth, sample.key)
    return {
        "input": prompt,
        "key": sample.key,
        "length": sample.length,
        "tokens": len(encode(prompt)),
        "depth": sample.depth,
        "sample": sample.index,
        "max_gen_toks": len(encode(" " + sample.key)) + EXTRA_NEW_TOKENS,
    }


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    correct = float(doc["key"] in results[0])
    return {"acc": correct, by_length(doc["length"]): correct}


class PasskeyTask(MetadataTask):
    def metadata_metrics(self, metadata: Mapping[str, Any]) -> dict[str, Metric]:
        lengths = PasskeySettings.from_metadata(metadata).lengths
        return {by_length(n): Metric(mean, higher_is_better=True) for n in lengths}

    def construct_requests(self, doc: dict[str, Any], ctx: str, **kwargs: Any) -> Instance:
        """The YAML's generation settings, with the budget of `harness run` for this key."""
        request = super().construct_requests(doc, ctx, **kwargs)
        request.arguments[1]["max_gen_toks"] = doc["max_gen_toks"]
        return request
