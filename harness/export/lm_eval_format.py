"""lm-eval's results JSON, one per (model, mitigation), as `lm_eval --output_path` writes it:
results (`<metric>,none` and `<metric>_stderr,none` per task), group_subtasks, configs,
versions, n-shot, higher_is_better, n-samples, config (the `harness` model and the model
args that reproduce the run with `harness lm-eval`), git_hash, date, task_hashes,
lm_eval_version, model_source, model_name(_sanitized), start and end time.
"""

from __future__ import annotations

import re
from typing import Any

from harness.export.scores import Evaluation, TaskScores

FILTER = "none"  # lm-eval's key suffix for the unfiltered responses
NOT_AVAILABLE = "N/A"  # lm-eval's stderr when it has none


def document(evaluation: Evaluation) -> dict[str, Any]:
    facts = evaluation.facts
    tasks = evaluation.tasks
    return {
        "results": {t.task: _results(t) for t in tasks},
        "group_subtasks": {t.task: [] for t in tasks},
        "configs": {t.task: t.config for t in tasks},
        "versions": {t.task: t.version for t in tasks},
        "n-shot": {t.task: 0 for t in tasks},
        "higher_is_better": {
            t.task: {m.name: m.higher_is_better for m in t.metrics} for t in tasks
        },
        "n-samples": {t.task: {"original": t.docs_total, "effective": t.docs} for t in tasks},
        "config": {
            "model": "harness",
            "model_args": model_args(evaluation),
            "model_num_parameters": facts.get("params"),
            "model_dtype": facts.get("dtype"),
            "batch_size": "1",
            "device": facts.get("device"),
            "limit": None,
            "bootstrap_iters": 0,
            "random_seed": facts.get("seed"),
        },
        "git_hash": facts.get("git_commit"),
        "date": evaluation.started.timestamp(),
        "lm_eval_version": facts.get("lm_eval_version"),
        "task_hashes": {t.task: t.task_hash for t in tasks if t.task_hash is not None},
        "model_source": "harness",
        "model_name": evaluation.model,
        "model_name_sanitized": sanitized(f"{evaluation.model}__{evaluation.mitigation}"),
        "start_time": evaluation.started.timestamp(),
        "end_time": evaluation.finished.timestamp(),
        "total_evaluation_time_seconds": str(
            (evaluation.finished - evaluation.started).total_seconds()
        ),
    }


def model_args(evaluation: Evaluation) -> str:
    """The `--model_args` of `harness lm-eval --model harness` for this model and mitigation."""
    facts = evaluation.facts
    args = {
        "model": facts.get("model_ref", evaluation.model),
        "mitigation": evaluation.mitigation,
        "dtype": facts.get("dtype"),
        "backend": facts.get("backend"),
    }
    return ",".join(f"{k}={v}" for k, v in args.items() if v is not None)


def _results(task: TaskScores) -> dict[str, Any]:
    found: dict[str, Any] = {"alias": task.task, "name": task.task, "sample_len": task.docs}
    for metric in task.metrics:
        found[f"{metric.name},{FILTER}"] = metric.value
        stderr = metric.stderr if metric.stderr is not None else NOT_AVAILABLE
        found[f"{metric.name}_stderr,{FILTER}"] = stderr
    return found


def sanitized(name: str) -> str:
    """A name safe in one file name, as lm-eval sanitizes model names."""
    return re.sub(r"[^\w.@=-]+", "__", name)
