"""`harness_perplexity`: perplexity of documents cut to given lengths (loglikelihood_rolling).

What lm-eval can express of the harness's loss by position: a `loglikelihood_rolling`
request returns one number per document (the log-likelihood of all its tokens), so this task
reports, for documents of each length (settings and source: `harness.lm_eval.corpus`, the
documents of `harness run --tasks perplexity`):
- `word_perplexity@<n>`, `byte_perplexity@<n>`, `bits_per_byte@<n>`: lm-eval's weighted
  perplexities over the documents of length n, and the same names without `@<n>` over all;
- `<n>` (the length itself, lm-eval's RULER convention: one metric per length): mean loss
  per token (nats) of a document of length n, in the tokens its length is counted in (the
  evaluated model's), and `loss` over all documents.

Unlike `harness run`, lm-eval puts the end-of-text token before each document and scores all
n tokens (`harness run` scores positions 1 to n - 1 with nothing before them): `<n>` is
higher by the first token's loss / n, plus whatever the prefix changes for the rest, little
for the bundled Mamba-2 models, much for the tiny transformer, which never saw end-of-text
before a window in training (README.md, lm-eval; measured by bench/lm_eval_eos.py).

It cannot express per-position curves (the loss at each position, averaged over documents):
lm-eval never sees per-token losses. A longer document's loss mixes positions within and
beyond the training context; `harness_loss_by_position` buckets positions instead, and
`harness run --tasks perplexity` gives the full curve.

With lm-eval's `hf` backend, give `max_length` above the longest length (a smaller one is
refused, a missing one warned about): beyond it `hf` scores in rolling windows (each token
still scored once, with a shorter context), which measures windowed attention, not the
model's long context. The `harness` backend streams the whole document through the model.
lm-eval warns that the metrics were scored on different numbers of documents: each `@<n>`
metric and `<n>` count only the documents of length n, as intended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import datasets
from lm_eval.api.metrics import mean
from lm_eval.api.registry import get_aggregation
from lm_eval.api.task import Task

from harness.lm_eval.corpus import CorpusSettings, corpus_cuts
from harness.lm_eval.task_base import MetadataTask, Metric, by_length, per_length

PERPLEXITIES = {
    "word_perplexity": "weighted_perplexity",
    "byte_perplexity": "weighted_perplexity",
    "bits_per_byte": "bits_per_byte",
}


def overflow_to_inf(aggregation: Callable[[list[Any]], float]) -> Callable[[list[Any]], float]:
    """lm-eval's `aggregation`, infinite where its exp() overflows (a text of almost no words,
    such as the newline prompt, has a word perplexity beyond any float)."""

    def aggregate(items: list[Any]) -> float:
        try:
            return aggregation(items)
        except OverflowError:
            return math.inf

    return aggregate


def documents(**metadata: Any) -> dict[str, datasets.Dataset]:
    """lm-eval's `custom_dataset`: the test split, one document per cut."""
    docs = [
        {"text": cut.text, "length": cut.length, "tokens": len(cut.ids), "parts": cut.parts}
        for cut in corpus_cuts(metadata)
    ]
    return {"test": datasets.Dataset.from_list(docs)}


def process_results(doc: dict[str, Any], results: tuple[float]) -> dict[str, Any]:
    (loglikelihood,) = results
    text = doc["text"]
    words, bytes_ = Task.count_words(text), Task.count_bytes(text)
    overall = {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, bytes_),
        "bits_per_byte": (loglikelihood, bytes_),
    }
    loss = -loglikelihood / doc["tokens"]
    length = doc["length"]
    per = {per_length(name, length): value for name, value in overall.items()}
    return overall | per | {"loss": loss, by_length(length): loss}


class PerplexityTask(MetadataTask):
    def metadata_metrics(self, metadata: Mapping[str, Any]) -> dict[str, Metric]:
        metrics = {
            name: Metric(overflow_to_inf(get_aggregation(aggregation)), higher_is_better=False)
            for name, aggregation in PERPLEXITIES.items()
        }
        for n in CorpusSettings.from_metadata(metadata).lengths:
            metrics[by_length(n)] = Metric(mean, higher_is_better=False)
            for name in PERPLEXITIES:
                metrics[per_length(name, n)] = metrics[name]
        return metrics
