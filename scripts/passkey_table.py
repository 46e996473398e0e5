"""Passkey accuracy by length from a `harness run --out DIR` as a Markdown table.

    python scripts/passkey_table.py DIR [--model NAME]

One row per (model, mitigation), one column per length: correct / samples, and the mean
log-probability of the key in parentheses.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from harness.results import read_table


def table(out: Path, model: str | None) -> str:
    rows = read_table(out, "passkey").to_pylist()
    cells: dict[tuple[str, str], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["status"] == "ok" and (model is None or row["model"] == model):
            cells[(row["model"], row["mitigation"])][row["length"]].append(row)
    lengths = sorted({length for by_length in cells.values() for length in by_length})
    lines = [
        "| model | mitigation | " + " | ".join(str(n) for n in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
    ]
    for (name, mitigation), by_length in sorted(cells.items()):
        parts = []
        for n in lengths:
            samples = by_length.get(n, [])
            correct = sum(r["correct"] for r in samples)
            logprob = sum(r["key_logprob"] for r in samples) / max(len(samples), 1)
            parts.append(f"{correct}/{len(samples)} ({logprob:.1f})" if samples else "-")
        lines.append(f"| {name} | {mitigation} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a harness run --out directory")
    parser.add_argument("--model", help="only this model's rows")
    args = parser.parse_args()
    print(table(args.out, args.model))


if __name__ == "__main__":
    main()
