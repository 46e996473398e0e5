"""Loss by position (paper-notes.md section 6): per-token cross-entropy of long sequences,
averaged over buckets of positions.

One unit per sequence length. Its documents come from a text source (tasks/sources.py): by
default `sonnets`, real text shipped with the package (one document); a synthetic prompt such
as the paper's `newlines` (one document), local files or a dataset (`documents` of them, short
ones skipped or concatenated as `short_docs` says). Each document streams through the model in
`chunk`-token pieces with the state carried exactly (`LanguageModel.token_losses`).

Positions: the token at position p (0-based) has the loss -log p(token_p | tokens_<p), so
positions 1..length-1 are scored. Bucket k covers positions [k*bucket, (k+1)*bucket) cut at
the length; the first bucket has one loss fewer than its width, and the counts of all buckets
add up to length - 1. The paper drops the first and last bucket in its plots; the rows keep
every bucket (a plot can drop them). `beyond_context`: the whole bucket lies at positions
the model never saw in training (start >= train_context).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from harness.settings import setting
from tasks.base import NonFiniteError, Progress, Task
from tasks.settings import require_positive
from tasks.sources import SYNTHETIC, Document, Source, SourceSettings, documents, source_from

if TYPE_CHECKING:
    import torch

    from harness.models.base import LanguageModel

DEFAULT_LENGTHS = (16384,)
DEFAULT_SOURCE = "sonnets"  # real text, offline; state-stats and state-capacity use newlines
LARGEST_EXPONENT = 709.0  # math.exp overflows above this


@dataclass(frozen=True)
class Bucket:
    start: int  # first position of the bucket (inclusive)
    end: int  # last position + 1
    count: int  # scored positions in it
    mean_loss: float


def buckets(losses: torch.Tensor, size: int) -> list[Bucket]:
    """Mean losses per bucket of `size` positions; losses[i] is the loss at position i + 1."""
    length = len(losses) + 1
    found = []
    for start in range(0, length, size):
        end = min(start + size, length)
        scored = losses[max(start, 1) - 1 : end - 1]
        if len(scored):
            found.append(Bucket(start, end, len(scored), float(scored.double().mean())))
    return found


def check_finite(losses: torch.Tensor, what: str) -> None:
    """NonFiniteError naming the first position whose loss is NaN or infinite."""
    bad = (~losses.isfinite()).nonzero()
    if len(bad):
        raise NonFiniteError(
            f"non-finite loss at position {int(bad[0]) + 1} of {what} "
            f"({len(bad)} of {len(losses)} positions)"
        )


def loss_buckets(
    model: LanguageModel, ids: torch.Tensor, bucket: int, chunk: int, progress: Progress, what: str
) -> list[Bucket]:
    """Bucket means of the per-token losses of `ids`, streamed in `chunk`-token pieces."""
    losses = model.token_losses(ids, chunk=chunk, progress=progress)
    check_finite(losses, what)
    return buckets(losses, bucket)


def perplexity(mean_loss: float) -> float:
    return math.exp(mean_loss) if mean_loss < LARGEST_EXPONENT else math.inf


@dataclass(frozen=True)
class PerplexitySettings(SourceSettings):
    source: str = setting(
        DEFAULT_SOURCE,
        "sonnets (real text shipped with the package), or any source state-stats takes: "
        "newlines, capital, haystack, pg19, a .txt/.jsonl/.parquet file, a folder, a hub id",
    )
    documents: int = setting(1, "documents per length (synthetic sources have one)")
    bucket: int = setting(128, "positions per bucket of the loss curve")
    chunk: int = setting(2048, "tokens per forward call (the state is carried between calls)")


class Perplexity(Task):
    name = "perplexity"
    description = "loss by token position (bucket means) on synthetic prompts, files or datasets"
    table = "perplexity"
    schema = pa.schema(
        [
            ("source", pa.string()),
            ("split", pa.string()),
            ("short_docs", pa.string()),
            ("length", pa.int64()),
            ("document", pa.int64()),  # index within the unit
            ("parts", pa.string()),  # source document ids it is made of, comma-separated
            ("skipped", pa.int64()),  # source documents passed over before it
            ("bucket_size", pa.int64()),
            ("start", pa.int64()),
            ("end", pa.int64()),
            ("count", pa.int64()),
            ("mean_loss", pa.float64()),
            ("perplexity", pa.float64()),
            ("beyond_context", pa.bool_()),
        ]
    )
    Settings = PerplexitySettings

    @classmethod
    def parse_settings(cls, raw: dict[str, str]) -> PerplexitySettings:
        settings = super().parse_settings(raw)
        require_positive(cls.name, settings, ("documents", "bucket", "chunk"))
        source_from(asdict(settings))
        return settings

    def units(self) -> list[dict[str, Any]]:
        lengths = self.options.lengths or DEFAULT_LENGTHS
        return [{"length": n, **self.params} for n in lengths]

    def cost(self, params: dict[str, Any]) -> int:
        count = 1 if params["source"] in SYNTHETIC else params["documents"]
        return params["length"] * count

    def run(self, model: LanguageModel, params: dict[str, Any], progress: Progress) -> list[dict]:
        if params["length"] < 2:
            raise ValueError(
                f"perplexity needs a length of at least 2 tokens, got {params['length']}"
            )
        source = source_from(params)
        docs = documents(
            source,
            model.encode,
            params["length"],
            params["documents"],
            params["short_docs"],
            model.eos_token_id,
        )
        rows = []
        for index, doc in enumerate(docs):
            found = loss_buckets(
                model, doc.ids, params["bucket"], params["chunk"], progress, f"document {index}"
            )
            shared = _document_fields(params, source, index, doc)
            rows += [shared | _bucket_fields(b, model.info.train_context) for b in found]
        return rows

    def summary(self, rows: list[dict[str, Any]]) -> str:
        """Perplexity within the training context, then beyond it (when the length reaches):
        '4.73 in / 5.07 beyond'."""
        parts = [
            f"{perplexity(pooled_loss(group)):.3g} {where}"
            for beyond, where in ((False, "in"), (True, "beyond"))
            if (group := [r for r in rows if r["beyond_context"] == beyond])
        ]
        return " / ".join(parts)


def pooled_loss(rows: list[dict[str, Any]]) -> float:
    """The token-weighted mean loss of bucket rows."""
    return sum(r["mean_loss"] * r["count"] for r in rows) / sum(r["count"] for r in rows)


def _document_fields(
    params: dict[str, Any], source: Source, index: int, doc: Document
) -> dict[str, Any]:
    return {
        "source": source.name,
        "split": None if source.synthetic else source.split,
        "short_docs": params["short_docs"],
        "length": params["length"],
        "document": index,
        "parts": ",".join(doc.parts),
        "skipped": doc.skipped,
        "bucket_size": params["bucket"],
    }


def _bucket_fields(bucket: Bucket, train_context: int) -> dict[str, Any]:
    return {
        "start": bucket.start,
        "end": bucket.end,
        "count": bucket.count,
        "mean_loss": bucket.mean_loss,
        "perplexity": perplexity(bucket.mean_loss),
        "beyond_context": bucket.start >= train_context,
    }
