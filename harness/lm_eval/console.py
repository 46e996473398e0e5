"""`harness-lm-eval` (and `harness lm-eval`): lm-eval's command line with the harness in it.

lm-eval 0.4.x resolves `--model <name>` against its own registry before any other code runs,
so `lm_eval --model harness` cannot find a model that lives in another package. This command
registers the `harness` model, adds the harness task folder as `--include_path` when a
command names `--tasks` without one, then hands the arguments to lm-eval's CLI unchanged; a
setting of the harness model or tasks that cannot be used ends it with one line and exit 2:

    harness-lm-eval --model harness --model_args model=mamba2-370m,mitigation=rri \\
        --tasks harness_passkey --metadata '{"max_seq_lengths": [1024, 4096]}' --device cuda

The package also declares the entry-point groups `lm_eval.models` and `lm_eval.tasks`
proposed upstream (lm-evaluation-harness PRs 4013 and 4015); `entry_points_supported()`
tells whether the installed lm-eval discovers plugins itself, in which case plain `lm_eval`
finds the model too. Registering here is harmless either way: lm-eval's discovery skips a
name that is already registered.
"""

from __future__ import annotations

import importlib
import logging
import sys

from harness.lm_eval import include_path

log = logging.getLogger(__name__)


def register() -> None:
    """Register the `harness` model with lm-eval (importing its module does)."""
    importlib.import_module("harness.lm_eval.model")


def entry_points_supported() -> bool:
    """Whether the installed lm-eval discovers models from entry points (upstream PR 4013
    added `lm_eval.api.registry.load_plugins` for it); lm-eval 0.4.13 does not."""
    from lm_eval.api import registry

    return hasattr(registry, "load_plugins")


def with_include_path(args: list[str]) -> list[str]:
    """`args`, plus `--include_path <harness tasks>` when they name tasks and no include path."""
    names_tasks = any(a == "--tasks" or a.startswith("--tasks=") for a in args)
    has_path = any(a == "--include_path" or a.startswith("--include_path=") for a in args)
    if names_tasks and not has_path:
        return [*args, "--include_path", str(include_path())]
    return args


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI on `argv` (default: this process's arguments) with the harness in."""
    from lm_eval.__main__ import cli_evaluate

    register()
    log.debug("lm-eval discovers entry-point plugins itself: %s", entry_points_supported())
    from harness.lm_eval.metadata import MetadataError
    from harness.lm_eval.model import ModelArgsError
    from harness.lm_eval.prompt_parts import PromptSplitError
    from harness.lm_eval.tokenizer import TokenizerNotGiven
    from tasks.sources import SourceError

    args = sys.argv[1:] if argv is None else argv
    sys.argv = ["lm-eval", *with_include_path(list(args))]
    try:
        cli_evaluate()
    except (MetadataError, ModelArgsError, TokenizerNotGiven, SourceError, PromptSplitError) as err:
        print(f"harness lm-eval: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
