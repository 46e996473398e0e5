"""What harness_perplexity.yaml names with `!function`: lm-eval loads this file by its path
(as a module outside the package), so the task lives in `harness.lm_eval.perplexity`."""

from harness.lm_eval.perplexity import PerplexityTask, documents, process_results

__all__ = ["PerplexityTask", "documents", "process_results"]
