"""lm-eval task YAMLs of the harness, each with its Python module next to it.

This directory is what `harness.lm_eval.include_path()` returns, for lm-eval's
`--include_path` / `TaskManager(include_path=...)`.
"""
