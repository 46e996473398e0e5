"""`harness_loss_by_position`: mean loss per token in position buckets (loglikelihood requests).

The closest lm-eval gets to the harness's loss-by-position curve. Each document (settings
and source: `harness.lm_eval.corpus`, the documents of `harness run --tasks perplexity`) is
split at multiples of `bucket` tokens (`--metadata` `bucket`; default: the longest length / 8,
where `harness run` uses 128, for the cost below); bucket [s, e) becomes one `loglikelihood`
request, context = the document's first s tokens, continuation = tokens s to e, except that
the first request's context is the document's first token (no end-of-text token before it),
so that, as in `harness run`, position 0 is not scored and every bucket sees the same
context as there: the buckets are `harness run --tasks perplexity`'s (tests check it).
Metrics:
- `loss@[s-e)`: mean loss per token (nats) at positions s to e - 1, over the documents
  that have them: documents of every length share the buckets that end at a multiple of
  `bucket`; a document's last bucket ends at its length (e.g. `loss@[400-600)` for 600
  tokens with buckets of 200, `loss@[400-512)` for 512);
- `loss`: mean loss per token over whole documents (positions 1 to n - 1).

What it cannot express: a per-position curve finer than the buckets, and anything that
needs the documents' per-token losses (lm-eval sees one sum per request). Each request
processes its whole context again, so a document of n tokens costs about n^2 / (2 * bucket)
tokens instead of n; `harness run --tasks perplexity` streams each document once. Text is
split at the documents' token boundaries, moved before any whitespace there (lm-eval would
move it into the continuation and score it twice); the backend encodes context and
continuation itself, and each loss is divided by the bucket's token count in the tokenizer
the lengths are counted in.

With lm-eval's `hf` backend, give `max_length` above the longest length (a smaller one is
refused, a missing one warned about): `hf` cuts a longer input from the left without a word.
lm-eval warns that the metrics were scored on different numbers of documents: each bucket
counts only the documents that reach it, as intended.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import datasets
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import mean
from transformers import PreTrainedTokenizerBase

from harness.lm_eval import metadata as meta
from harness.lm_eval.corpus import CorpusSettings, Cut, corpus_cuts
from harness.lm_eval.task_base import MetadataTask, Metric
from harness.lm_eval.tokenizer import tokenizer_from_metadata
from harness.models.tokenizer import encoder

BUCKETS_PER_LONGEST = 8


def bucket_size(metadata: Mapping[str, Any]) -> int:
    default = max(max(CorpusSettings.from_metadata(metadata).lengths) // BUCKETS_PER_LONGEST, 1)
    return meta.positive_int(metadata, "bucket", default)


def edges(length: int, bucket: int) -> list[int]:
    """Token positions where the buckets of a `length`-token document start, then `length`."""
    return [*range(0, length, bucket), length]


def bucket_name(start: int, end: int) -> str:
    return f"loss@[{start}-{end})"  # no comma: lm-eval splits "<metric>,<filter>" keys at it


def documents(**metadata: Any) -> dict[str, datasets.Dataset]:
    """lm-eval's `custom_dataset`: one document per cut, with its bucket edges."""
    tokenizer = tokenizer_from_metadata(metadata)
    bucket = bucket_size(metadata)
    docs = [_document(cut, bucket, tokenizer) for cut in corpus_cuts(metadata)]
    return {"test": datasets.Dataset.from_list(docs)}


def _document(cut: Cut, bucket: int, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The bucket edges as token positions (`token_edges`, which name the metrics), as
    characters of the text (`char_edges`, where requests split it; the first is the end of
    the opening context) and as the token counts of the text up to each split
    (`scored_edges`, what the losses are divided by)."""
    encode = encoder(tokenizer)
    tokens = edges(cut.length, bucket)
    chars = [_opening(cut, tokenizer, tokens[1])]
    for t in tokens[1:-1]:
        chars.append(_before_spaces(cut.text, len(tokenizer.decode(cut.ids[:t])), chars[-1]))
    chars.append(len(cut.text))
    return {
        "text": cut.text,
        "length": cut.length,
        "parts": cut.parts,
        "token_edges": tokens,
        "char_edges": chars,
        "scored_edges": [len(encode(cut.text[:c])) for c in chars],
    }


def _opening(cut: Cut, tokenizer: PreTrainedTokenizerBase, first_edge: int) -> int:
    """Characters of the opening context: the first token (as `harness run` leaves position 0
    unscored and puts nothing before it), or the first few where they end in whitespace,
    which lm-eval would move into the continuation."""
    for k in range(1, first_edge):
        end = len(tokenizer.decode(cut.ids[:k]))
        if cut.text[:end].strip() and not cut.text[end - 1].isspace():
            return end
    raise meta.MetadataError(
        f"harness_loss_by_position: the first {first_edge} tokens of {cut.parts!r} are only "
        "whitespace, which lm-eval moves out of a request's context; use a source with text "
        "(the default, sonnets), or `harness run --tasks perplexity` for whitespace prompts "
        "such as newlines"
    )


def _before_spaces(text: str, split: int, previous: int) -> int:
    """`split` moved before the whitespace that ends `text[:split]` (lm-eval moves a context's
    trailing whitespace into the continuation, which would score it twice), but after
    `previous`."""
    while split > previous + 1 and text[split - 1].isspace():
        split -= 1
    return split


def process_results(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    named, scored = pairwise(doc["token_edges"]), pairwise(doc["scored_edges"])
    metrics: dict[str, float] = {}
    for (loglikelihood, _), (start, end), (first, last) in zip(results, named, scored, strict=True):
        metrics[bucket_name(start, end)] = -loglikelihood / (last - first)
    scored_tokens = doc["scored_edges"][-1] - doc["scored_edges"][0]
    metrics["loss"] = -sum(ll for ll, _ in results) / scored_tokens
    return metrics


class LossByPositionTask(MetadataTask):
    def metadata_metrics(self, metadata: Mapping[str, Any]) -> dict[str, Metric]:
        bucket = bucket_size(metadata)
        names = {
            bucket_name(start, end)
            for n in CorpusSettings.from_metadata(metadata).lengths
            for start, end in pairwise(edges(n, bucket))
        }
        return {name: Metric(mean, higher_is_better=False) for name in sorted(names)}

    def construct_requests(
        self, doc: dict[str, Any], ctx: str, metadata: tuple[str, int, int], **chat: Any
    ) -> list[Instance]:
        """One request per bucket: the text before it as context, the bucket as continuation
        (no chat template: the text is a plain document)."""
        text, chars = doc["text"], doc["char_edges"]
        return [
            Instance("loglikelihood", doc, (text[:start], text[start:end]), i, metadata)
            for i, (start, end) in enumerate(pairwise(chars))
        ]
