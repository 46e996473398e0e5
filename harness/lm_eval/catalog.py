"""lm-eval's tasks as `harness run` sees them: names, groups, lengths and the data they fetch.

`harness run --tasks lm-eval:<name>` takes any task, group or tag lm-eval knows (its own
and the harness's YAMLs, `harness.lm_eval.include_path()`); a group or tag stands for its
tasks. Everything here reads the task index and the YAMLs only: no task is built, no data
set is generated or downloaded, so a wrong name or unreachable data is found before any work.

- A task takes lengths when lm-eval hands its documents builder `max_seq_lengths`: a
  `custom_dataset` task whose metrics are named by lengths (RULER's convention) or a task
  of the harness's own folder. Each `--lengths` length is then one unit; other tasks are
  one unit each.
- A task needs data from outside when its YAML names a hub `dataset_path`, or when it is one
  of lm-eval's RULER tasks whose documents builder fetches text (`FETCHES`). Offline
  (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) such a task is refused unless its data set is in the
  local cache; online the hub is asked once with a short timeout.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.lm_eval import include_path

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

PREFIX = "lm-eval:"  # --tasks lm-eval:<task or group>
HUB_TIMEOUT_S = 5.0
# lm-eval's RULER tasks (lm_eval/tasks/ruler, 0.4.x) whose custom_dataset fetches data at
# run time: the essay haystack is a hub data set, the QA tasks download JSON files.
ESSAYS = "hub dataset baber/paul_graham_essays"
FETCHES = {
    "niah_single_2": ESSAYS,
    "niah_single_3": ESSAYS,
    "niah_multikey_1": ESSAYS,
    "niah_multivalue": ESSAYS,
    "niah_multiquery": ESSAYS,
    "ruler_qa_squad": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
    "ruler_qa_hotpot": "https://huggingface.co/datasets/namlh2004/hotpotqa/resolve/"
    "7e54db4656209750ff487f6fdf8e39a66dba136b/hotpot_dev_distractor_v1.json",
}


# Packages the tasks of an lm-eval task folder import (lm-eval's own `ruler` extra).
REQUIRES = {"ruler": ("wonderwords", "nltk", "scipy")}


class LmEvalTaskError(ValueError):
    """A name lm-eval does not know, or a task whose data cannot be reached."""


@dataclass(frozen=True)
class TaskInfo:
    """What the plan needs to know about one lm-eval task, read from its YAML."""

    name: str  # lm-eval's task name
    takes_lengths: bool  # one unit per --lengths length (max_seq_lengths metadata)
    fetches: str | None  # data from outside (hub data set or URL), None when built offline
    own: bool = False  # one of the harness's tasks (harness_passkey...): metadata samples, seed
    generates: bool = False  # output_type generate_until: an inference strategy can serve it


@cache
def task_manager() -> TaskManager:
    """lm-eval's task index with the harness's tasks, built once per process (seconds)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LmEvalTaskError("lm-eval tasks need lm-eval: pip install -e '.[lm-eval]'") from None

    return TaskManager(include_path=str(include_path()))


def resolve(names: list[str]) -> list[TaskInfo]:
    """The lm-eval tasks `names` (without the prefix) stand for, groups and tags expanded,
    each once, in order; LmEvalTaskError naming close valid names for an unknown one."""
    index = task_manager().task_index
    found: dict[str, TaskInfo] = {}
    for name in names:
        if name not in index:
            close = difflib.get_close_matches(name, list(index), n=5, cutoff=0.6)
            hint = f"; close: {', '.join(PREFIX + c for c in close)}" if close else ""
            raise LmEvalTaskError(
                f"unknown lm-eval task {PREFIX + name!r}{hint} (`harness lm-eval --tasks list` "
                "lists them all)"
            )
        for leaf in _leaves(name, index):
            found.setdefault(leaf, _info(leaf, index))
    return list(found.values())


def _leaves(name: str, index: dict[str, Any]) -> list[str]:
    """The tasks of a task (itself), a tag or a group (recursively)."""
    from lm_eval.tasks._index import Kind

    entry = index[name]
    if entry.kind == Kind.TAG:
        members: list[Any] = sorted(entry.tags)
    elif entry.kind == Kind.GROUP:
        members = _config(entry).get("task") or []
    else:
        return [name]
    leaves = []
    for member in members:
        member_name = member.get("task") if isinstance(member, dict) else member
        if not isinstance(member_name, str) or member_name not in index:
            raise LmEvalTaskError(
                f"lm-eval group {PREFIX + name!r} defines a member inline ({member!r}); "
                "name its tasks one by one"
            )
        leaves += _leaves(member_name, index)
    return leaves


def _config(entry: Any) -> dict[str, Any]:
    """The entry's YAML with its includes, functions left as names (nothing imported)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if entry.yaml_path is None:
        return dict(entry.cfg or {})
    return load_yaml(entry.yaml_path, resolve_func=False, recursive=True)


def _info(name: str, index: dict[str, Any]) -> TaskInfo:
    entry = index[name]
    config = _config(entry)
    own = entry.yaml_path is not None and include_path() in Path(entry.yaml_path).parents
    metrics = [str(m.get("metric", "")) for m in config.get("metric_list") or []]
    ruler_style = bool(config.get("custom_dataset")) and any(m.isdigit() for m in metrics)
    path = config.get("dataset_path") or ""
    fetches = FETCHES.get(name)
    if fetches is None and path and not config.get("custom_dataset") and not Path(path).exists():
        fetches = f"hub dataset {path}"
    folder = Path(entry.yaml_path).parent.name if entry.yaml_path is not None else ""
    missing = [p for p in REQUIRES.get(folder, ()) if importlib.util.find_spec(p) is None]
    if missing:
        raise LmEvalTaskError(
            f"lm-eval task {PREFIX + name!r} needs {', '.join(missing)}: "
            f"pip install -e '.[{folder}]'"
        )
    generates = config.get("output_type") == "generate_until"
    return TaskInfo(name, own or ruler_style, fetches, own=own, generates=generates)


def check_reachable(task: TaskInfo) -> None:
    """LmEvalTaskError when the task's data is neither cached here nor reachable."""
    if task.fetches is None:
        return
    where = f"lm-eval task {PREFIX + task.name!r} needs {task.fetches}"
    if task.fetches.startswith("hub dataset "):
        _check_hub_dataset(task.fetches.removeprefix("hub dataset "), where)
    elif _offline():
        raise LmEvalTaskError(f"{where}, and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set")
    else:
        _check_url(task.fetches, where)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_DATASETS_OFFLINE", "").upper()
    return constants.is_offline_mode() or flag in ("1", "ON", "YES", "TRUE")


def _check_hub_dataset(repo: str, where: str) -> None:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.file_download import repo_folder_name

    hub = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="dataset")
    datasets_cache = Path(
        os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets")
    ) / repo.replace("/", "___")
    if (hub / "snapshots").is_dir() or datasets_cache.is_dir():
        return
    if _offline():
        raise LmEvalTaskError(
            f"{where}, which is not in the local cache, and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE "
            "is set; run it where the hub is reachable once, or pick a task that builds its "
            "documents offline (e.g. lm-eval:niah_single_1, lm-eval:ruler_vt)"
        )
    try:
        HfApi().dataset_info(repo, timeout=HUB_TIMEOUT_S)
    except Exception as err:  # network and HTTP errors: their classes vary with the version
        raise LmEvalTaskError(
            f"{where}, which is not in the local cache, and the hub ({constants.ENDPOINT}) did "
            f"not give it ({type(err).__name__})"
        ) from None


def _check_url(url: str, where: str) -> None:
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S)
    except OSError as err:
        raise LmEvalTaskError(f"{where}, which did not answer ({type(err).__name__})") from None
