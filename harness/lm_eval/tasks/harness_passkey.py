"""What harness_passkey.yaml names with `!function`: lm-eval loads this file by its path (as a
module outside the package), so the task lives in `harness.lm_eval.passkey`, imported here."""

from harness.lm_eval.passkey import PasskeyTask, documents, process_results

__all__ = ["PasskeyTask", "documents", "process_results"]
