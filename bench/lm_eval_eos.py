"""What lm-eval's end-of-text prefix changes: `harness_perplexity` against `harness run`.

    python bench/lm_eval_eos.py MODEL [MODEL ...] [--lengths 256,1024,4096] [--source sonnets]

lm-eval's `loglikelihood_rolling` puts the end-of-text token before a document and scores
all n tokens (`harness_perplexity`'s `<n>`); `harness run --tasks perplexity` puts
nothing before it and scores positions 1 to n - 1. For each model and length this prints
both mean losses per token (nats), the first token's loss after end-of-text, and positions
1 to n - 1 after end-of-text (the effect of the prefix on the rest of the document).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace

import torch

from harness.models.loading import load, resolve
from harness.plan import parse_lengths
from tasks.perplexity import Perplexity
from tasks.sources import documents, source_from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="what `harness run --models` takes")
    parser.add_argument("--lengths", type=parse_lengths, default=(256, 1024, 4096))
    parser.add_argument("--source", default=Perplexity.Settings().source)
    args = parser.parse_args()

    source = source_from(asdict(replace(Perplexity.Settings(), source=args.source)))
    print(
        "| model | n | harness run | lm-eval n (loss) | first token after EOS | 1..n-1 after EOS |"
    )
    print("|---|---|---|---|---|---|")
    for ref in args.models:
        lm = load(resolve(ref), "cpu", torch.float32, "auto")
        for n in args.lengths:
            (doc,) = documents(source, lm.encode, n, 1, "skip", lm.eos_token_id)
            ids = doc.ids.tolist()
            plain = lm.token_losses(ids).double()
            after_eos = lm.token_losses([lm.eos_token_id, *ids]).double()
            print(
                f"| {lm.info.name} | {n} | {plain.mean():.3f} | {after_eos.sum() / n:.3f} | "
                f"{after_eos[0]:.2f} | {after_eos[1:].mean():.3f} |"
            )


if __name__ == "__main__":
    main()
