"""`harness export --results DIR --format lm-eval|every-eval-ever --out DIR`.

    lm-eval:          <out>/<model>__<mitigation>/results_<end time>.json
    every-eval-ever:  <out>/<library>/<model>/<uuid of model and mitigation>.json

Re-exporting a folder overwrites the same files. No exportable result (no lm_eval or passkey
rows), a missing results folder or an unusable --out: one line, exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from harness.settings import PATH

FORMATS = ("lm-eval", "every-eval-ever")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=PATH, default=Path("results"), help="results folder (default: results)"
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", type=PATH, required=True, help="output folder (created)")


def command(args: argparse.Namespace) -> int:
    from harness.export import every_eval_ever, lm_eval_format
    from harness.export.scores import LM_EVAL, PASSKEY, evaluations
    from harness.leaderboard.conflicts import resolve
    from harness.leaderboard.load import NoResultsError, load_results
    from harness.plan import UsageError, check_out_dir

    try:
        check_out_dir(args.out)
        loaded = load_results(args.results)
    except (UsageError, NoResultsError) as err:
        print(f"harness export: error: {err}", file=sys.stderr)
        return 2
    resolved = {}
    for table in (LM_EVAL, PASSKEY):
        if table in loaded.tables:
            outcome = resolve(loaded.tables[table], table)
            resolved[table] = outcome.rows
            for warning in outcome.warnings:
                print(f"warning: {warning}", file=sys.stderr)
    found = evaluations(resolved)
    if not found:
        print(
            f"harness export: error: no lm_eval or passkey results in {args.results} "
            "(the tables with an lm-eval counterpart); run `harness run --tasks "
            "passkey,lm-eval:<task>` first",
            file=sys.stderr,
        )
        return 2
    written = []
    retrieved = time.time()
    for evaluation in found:
        if args.format == "lm-eval":
            name = lm_eval_format.sanitized(f"{evaluation.model}__{evaluation.mitigation}")
            stamp = evaluation.finished.strftime("%Y-%m-%dT%H-%M-%S")
            path = args.out / name / f"results_{stamp}.json"
            written.append(write_json(path, lm_eval_format.document(evaluation)))
        else:
            for library, record in every_eval_ever.documents(evaluation, retrieved).items():
                key = uuid.uuid5(
                    uuid.NAMESPACE_URL, f"{library}/{evaluation.model}/{evaluation.mitigation}"
                )
                model = lm_eval_format.sanitized(evaluation.model)
                written.append(write_json(args.out / library / model / f"{key}.json", record))
    rows = f"{len(found)} model/mitigation rows"
    print(f"exported {rows} as {args.format}: {len(written)} files in {args.out}")
    return 0


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Written whole (a temporary renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
