"""What harness_loss_by_position.yaml names with `!function`: lm-eval loads this file by its
path (as a module outside the package), so the task lives in
`harness.lm_eval.loss_by_position`."""

from harness.lm_eval.loss_by_position import LossByPositionTask, documents, process_results

__all__ = ["LossByPositionTask", "documents", "process_results"]
