"""The harness in lm-evaluation-harness: packaged task YAMLs and a registered model.

- Tasks (`include_path()`, the folder for lm-eval's `--include_path`):
  `harness_passkey` (passkey retrieval with the prompts of `harness run`),
  `harness_perplexity` (perplexity of documents cut to given lengths),
  `harness_loss_by_position` (mean loss per token in position buckets).
- Model `harness` (`harness.lm_eval.model`): the harness's models, Mamba-2 with any
  mitigation included, as an lm-eval model; `harness.lm_eval.console.main` runs lm-eval's
  command line with it registered.

Importing this package does not import lm-eval, so the include path is cheap to ask for.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"


def include_path() -> Path:
    """The folder of the harness task YAMLs, for `--include_path` / `TaskManager`."""
    return TASKS_DIR
