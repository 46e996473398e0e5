"""lm-eval's tasks as harness units: `harness run --tasks lm-eval:<task or group>`.

Each (model, mitigation, lm-eval task, length) is one unit. The unit runs lm-eval itself
(`lm_eval.simple_evaluate` with `log_samples`) on the model the runner loaded, mitigation
installed, wrapped as the harness's lm-eval model (`harness.lm_eval.model.HarnessLM`), so its
outputs are those `harness lm-eval --model harness` gives for the same task and settings.

- Lengths: a task that takes them (RULER's, the harness's own: harness.lm_eval.catalog) gets
  `max_seq_lengths: [length]` in its metadata, one unit per `--lengths` length; others run
  once. The metadata also names the tokenizer lengths are counted in: the model's own, saved
  where AutoTokenizer reads it (harness.lm_eval.tokenizer.saved_folder).
- `--samples N` is lm-eval's `--limit N` (the first N documents; all when not given);
  `--seed` is lm-eval's `random_seed` (its default, 0, is the harness's). The harness's own
  tasks (`harness_passkey`...) take `--samples`, `--depths` and `--seed` as their metadata
  instead, so that `lm-eval:harness_passkey` asks what `--tasks passkey` asks.
- Inference strategies (oprm) serve generation tasks: lm-eval's context string is split into
  instruction, context and question lines (harness.lm_eval.prompt_parts).
- Rows: one per scored document: the lm-eval task, lm-eval's version, the task's version and
  hash (lm-eval's `task_hashes`), its config (JSON), how many documents it has in all, the
  document's id and hash, length, the prompt's token count, the target(s), the model's output
  and each metric lm-eval scored it with (numbers in `metrics`, anything else as JSON in
  `metrics_other`). Aggregates are not stored: the leaderboard computes them from the rows.
"""

from __future__ import annotations

import json
import logging
import random
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tasks.base import NonFiniteError, Progress, Task, TaskOptions

if TYPE_CHECKING:
    from harness.lm_eval.catalog import TaskInfo
    from harness.models.base import LanguageModel

TABLE = "lm_eval"


class LmEvalTask(Task):
    """One lm-eval task; the instance carries its lm-eval name (the class serves them all)."""

    name = "lm-eval"
    description = "any lm-eval task or group as harness units (lm-eval:<name>)"
    table = TABLE
    schema = pa.schema(
        [
            ("lm_eval_task", pa.string()),
            ("lm_eval_version", pa.string()),
            ("task_version", pa.string()),
            ("task_hash", pa.string()),  # as lm-eval's task_hashes: over the unit's documents
            ("task_config", pa.string()),  # lm-eval's config of the task (JSON)
            ("docs_total", pa.int64()),  # documents the task has (at this length), limit aside
            ("doc_id", pa.int64()),
            ("doc_hash", pa.string()),
            ("prompt_hash", pa.string()),
            ("target_hash", pa.string()),
            ("length", pa.int64()),  # max_seq_lengths given to the task; null: none
            ("tokens", pa.int64()),  # the prompt's tokens in the model's tokenizer
            ("targets", pa.list_(pa.string())),
            ("output", pa.string()),  # the model's (filtered) response
            ("metrics", pa.map_(pa.string(), pa.float64())),
            ("metrics_other", pa.string()),  # non-numeric per-document metric values (JSON)
        ]
    )

    def __init__(self, options: TaskOptions, info: TaskInfo) -> None:
        super().__init__(options)
        self.info = info
        self.name = f"lm-eval:{info.name}"
        self.prompt_parts = info.generates  # oprm reads a generation prompt in parts

    def units(self) -> list[dict[str, Any]]:
        o = self.options
        base: dict[str, Any] = {"task": self.info.name, "limit": o.samples, "seed": o.seed}
        if self.info.own:  # the harness's tasks take samples (per length) and depths
            depths = list(o.depths) if o.depths is not None else None
            base = {**base, "limit": None, "samples": o.samples, "depths": depths}
        if not self.info.takes_lengths:
            return [base]  # no `length`: the runner orders and sizes it as length 0
        return [{**base, "length": n} for n in (o.lengths or (4096,))]

    def cost(self, params: dict[str, Any]) -> int:
        return params.get("length", 1024) * (params["limit"] or 100)

    def run(self, model: LanguageModel, params: dict[str, Any], progress: Progress) -> list[dict]:
        found = evaluate(model, params)
        name = params["task"]
        samples = found["samples"][name]
        task_hash = _task_hash(samples)
        length = params.get("length")
        rows = [_row(model, found, name, length, s) | task_hash for s in samples]
        progress(self.cost(params))
        return rows

    def summary(self, rows: list[dict[str, Any]]) -> str:
        """The mean of the unit's main metric over its documents."""
        metric = main_metric(list(dict(rows[0]["metrics"])), rows[0]["length"]) if rows else None
        if metric is None:
            return f"{len(rows)} docs"
        values = [dict(r["metrics"])[metric] for r in rows]
        named = "" if metric == str(rows[0]["length"]) else f"{metric} "
        return f"{named}{sum(values) / len(values):.2f} ({len(rows)} docs)"


def main_metric(names: list[str], length: int | None) -> str | None:
    """The metric a document is scored by (the run summary, the leaderboard): the one named
    by its length (lm-eval's RULER convention), else `acc`, else the first numeric one."""
    if length is not None and str(length) in names:
        return str(length)
    if "acc" in names:
        return "acc"
    return names[0] if names else None


def evaluate(model: LanguageModel, params: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's results (samples logged) for one unit, on the model as loaded and hooked."""
    from lm_eval import evaluator
    from lm_eval.tasks._factory import TaskFactory

    from harness.lm_eval.catalog import task_manager
    from harness.lm_eval.model import HarnessLM
    from harness.lm_eval.tokenizer import saved_folder

    manager = task_manager()
    metadata: dict[str, Any] = {"tokenizer": str(saved_folder(model.tokenizer))}
    if "length" in params:
        metadata["max_seq_lengths"] = [params["length"]]
    if "samples" in params:  # the harness's own tasks: as `harness run` samples them
        own = {"samples": params["samples"], "depths": params["depths"], "seed": params["seed"]}
        metadata |= {k: v for k, v in own.items() if v is not None}
    entry = manager.task_index[params["task"]]
    _seed_as_lm_eval(params["seed"])  # documents built at random (RULER) come out as its own
    task = TaskFactory(meta=metadata).build(entry, overrides=None, registry=manager.task_index)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    found = evaluator.simple_evaluate(
        model=HarnessLM(model=model, mitigation=None),
        tasks=[task],
        task_manager=manager,
        limit=params["limit"],
        random_seed=params["seed"],
        log_samples=True,
        bootstrap_iters=0,
    )
    if found is None:
        raise RuntimeError("lm-eval returned no results (a non-zero rank under data parallel)")
    return found


def _seed_as_lm_eval(seed: int) -> None:
    """The global generators as `simple_evaluate` seeds them before it builds its tasks."""
    import numpy as np
    from lm_eval.defaults import DEFAULT_OTHER_SEED
    from lm_eval.utils import set_torch_seed

    random.seed(seed)
    np.random.seed(DEFAULT_OTHER_SEED)
    set_torch_seed(DEFAULT_OTHER_SEED)


def _row(
    model: LanguageModel, found: dict[str, Any], name: str, length: int | None, sample: dict
) -> dict[str, Any]:
    numbers, other = {}, {}
    for metric in sample["metrics"]:
        value = sample[metric]
        if isinstance(value, bool | int | float):
            numbers[metric] = float(value)
        else:
            other[metric] = value
    if any(v != v for v in numbers.values()):
        raise NonFiniteError(f"lm-eval scored document {sample['doc_id']} as NaN")
    context = _context(sample["arguments"])
    return {
        "lm_eval_task": name,
        "lm_eval_version": version("lm_eval"),
        "task_version": str(found["versions"].get(name)),
        "task_config": json.dumps(found["configs"].get(name), sort_keys=True, default=str),
        "docs_total": found["n-samples"][name]["original"],
        "doc_id": sample["doc_id"],
        "doc_hash": sample["doc_hash"],
        "prompt_hash": sample["prompt_hash"],
        "target_hash": sample["target_hash"],
        "length": length,
        "tokens": len(model.encode(context)),
        "targets": _texts(sample["target"]),
        "output": _output(sample["filtered_resps"]),
        "metrics": numbers,
        "metrics_other": json.dumps(other, default=str) if other else None,
    }


def _task_hash(samples: list[dict[str, Any]]) -> dict[str, str]:
    """lm-eval's task hash (its EvaluationTracker's): over each document's three hashes."""
    from lm_eval.utils import hash_string

    joined = "".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in samples)
    return {"task_hash": hash_string(joined)}


def _context(arguments: Any) -> str:
    """The prompt of a document's first request, as lm-eval logged it."""
    first = next(iter(arguments.values())) if isinstance(arguments, dict) else arguments[0]
    args = list(first.values()) if isinstance(first, dict) else list(first)
    return str(args[0])


def _texts(target: Any) -> list[str]:
    items = target if isinstance(target, list | tuple) else [target]
    return [item if isinstance(item, str) else json.dumps(item, default=str) for item in items]


def _output(responses: Any) -> str:
    """One generated text as it is; anything else (log-likelihoods, several) as JSON."""
    if isinstance(responses, list) and len(responses) == 1 and isinstance(responses[0], str):
        return responses[0]
    return json.dumps(responses, default=str)


def parse(names: list[str], options: TaskOptions) -> list[Task]:
    """The tasks `lm-eval:<name>` names stand for (groups expanded), data reachability checked;
    LmEvalTaskError (a ValueError) otherwise."""
    from harness.lm_eval.catalog import PREFIX, check_reachable, resolve

    infos = resolve([n.removeprefix(PREFIX) for n in names])
    for info in infos:
        check_reachable(info)
    return [LmEvalTask(options, info) for info in infos]
