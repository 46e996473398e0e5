"""Every Eval Ever records (schema 0.3.0, github.com/evaleval/every_eval_ever,
`every_eval_ever/schemas/eval.schema.json`): one per (model, mitigation, evaluation library):
the lm-eval tasks as run by `lm_eval`, the harness's passkey as run by `harness`.

Each metric of each task is one evaluation result: its name (`<task>` or `<task> @ <L>
tokens`), where its documents come from (a hub dataset, or built here: `other`), the metric's
config (id, name, direction, range when known, the length as a parameter) and its score with
the standard error and the number of documents.
"""

from __future__ import annotations

from typing import Any

from harness.export.scores import Evaluation, Metric, TaskScores

SCHEMA_VERSION = "0.3.0"
UNIT_INTERVAL = {"acc", "exact_match"}  # lm-eval metrics that are shares of documents


def documents(evaluation: Evaluation, retrieved: float) -> dict[str, dict[str, Any]]:
    """library name -> its record, for the libraries that ran this evaluation's tasks."""
    found = {}
    for library in sorted({t.library for t in evaluation.tasks}):
        tasks = [t for t in evaluation.tasks if t.library == library]
        found[library] = record(evaluation, library, tasks, retrieved)
    return found


def record(
    evaluation: Evaluation, library: str, tasks: list[TaskScores], retrieved: float
) -> dict[str, Any]:
    facts = evaluation.facts
    model_id = str(facts.get("model_ref", evaluation.model))
    version = facts.get("lm_eval_version") if library == "lm_eval" else facts.get("harness_version")
    details = {
        "harness_version": str(facts.get("harness_version", "unknown")),
        "git_commit": str(facts.get("git_commit", "unknown")),
        "mitigation": evaluation.mitigation,
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "evaluation_id": f"{library}/{model_id}/{evaluation.mitigation}/{retrieved:.0f}",
        "evaluation_timestamp": evaluation.started.isoformat(),
        "retrieved_timestamp": f"{retrieved:.0f}",
        "source_metadata": {
            "source_name": "harness",
            "source_type": "evaluation_run",
            "source_organization_name": "harness user",
            "evaluator_relationship": "third_party",
        },
        "model_info": model_info(evaluation, model_id),
        "eval_library": {
            "name": library,
            "version": str(version or "unknown"),
            "additional_details": details,
        },
        "evaluation_results": [result(task, metric) for task in tasks for metric in task.metrics],
    }


def model_info(evaluation: Evaluation, model_id: str) -> dict[str, Any]:
    facts = evaluation.facts
    details = {
        "deployment_type": "self_deployed",
        "model_availability": "unknown",
        "mitigation": evaluation.mitigation,
        **{
            key: str(facts[key])
            for key in ("model_id", "family", "params", "state_size", "train_context", "dtype")
            if key in facts
        },
    }
    name = f"{evaluation.model} ({evaluation.mitigation})"
    return {
        "name": name,
        "id": model_id,
        "inference_platform": "local",
        "inference_engine": {"name": "harness", "version": str(facts.get("harness_version"))},
        "additional_details": details,
    }


def result(task: TaskScores, metric: Metric) -> dict[str, Any]:
    name = task.task if metric.length is None else f"{task.task} @ {metric.length} tokens"
    bounded = metric.name in UNIT_INTERVAL or (
        metric.length is not None and metric.higher_is_better
    )
    config: dict[str, Any] = {
        "evaluation_description": f"{task.library} task {task.task}, metric {metric.name}",
        "metric_id": f"{task.task}.{metric.name}",
        "metric_name": "score at length" if metric.length is not None else metric.name,
        "lower_is_better": not metric.higher_is_better,
        "score_type": "continuous",
        "min_score": 0.0 if bounded else None,
        "max_score": 1.0 if bounded else None,
    }
    if metric.length is not None:
        config["metric_parameters"] = {"length": metric.length}
    uncertainty: dict[str, Any] = {"num_samples": metric.documents}
    if metric.stderr is not None:
        uncertainty["standard_error"] = {"value": metric.stderr, "method": "analytic"}
    return {
        "evaluation_result_id": f"{task.task}/{metric.name}",
        "evaluation_name": name,
        "source_data": source_data(task),
        "metric_config": config,
        "score_details": {
            "score": metric.value,
            "details": {"documents": str(metric.documents), "task_version": str(task.version)},
            "uncertainty": uncertainty,
        },
    }


def source_data(task: TaskScores) -> dict[str, Any]:
    if task.dataset:
        return {"dataset_name": task.task, "source_type": "hf_dataset", "hf_repo": task.dataset}
    return {
        "dataset_name": task.task,
        "source_type": "other",
        "additional_details": {"built_by": f"{task.library} (documents generated at run time)"},
    }
