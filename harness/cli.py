"""The `harness` command: argument parsing only; plans go to the runner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import registry
from harness.leaderboard import cli as leaderboard_cli
from harness.models.bundled import bundled_models, card_summary
from harness.models.catalog import CATALOG
from harness.models.loading import pick_device
from harness.models.tiny import TINY_MODELS
from harness.plan import (
    UsageError,
    build_plan,
    check_backend,
    check_out_dir,
    parse_depths,
    parse_lengths,
    parse_mitigation,
    parse_models,
    parse_task_options,
    parse_tasks,
)
from harness.runner import DTYPES, Report, RunConfig, Runner
from harness.train import cli as train_cli
from tasks.base import TaskOptions

# `harness run` with no --models: the bundled trained tiny models, offline, on the CPU.
DEFAULT_MODELS = ",".join(bundled_models()) or ",".join(TINY_MODELS)
DEFAULT_TASKS = "passkey,perplexity"
DEFAULT_MITIGATIONS = "none,rri,state-norm"
DEFAULT_LENGTHS = "512,2k,8k"
DEFAULT_SAMPLES = 4

console = Console(stderr=True)
SUMMARY_CAPTION = (
    "passkey: correct/samples (mean log-probability of the key; chance for 5 digits is "
    "about -11.5); perplexity: within the training context > beyond it. "
    "Everything else is in the Parquet tables; `harness leaderboard` draws them."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Long-context evaluation of recurrent LMs: state collapse, mitigations, "
        "transformer baselines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    board = sub.add_parser(
        "leaderboard", help="results/ -> leaderboard (Markdown, CSV, HTML with figures)"
    )
    leaderboard_cli.add_arguments(board)

    train = sub.add_parser(
        "train", help="train or continue a Mamba-2 (state passing, TBPTT) or a GPT-NeoX"
    )
    train_cli.add_arguments(train)

    sub.add_parser(
        "lm-eval", add_help=False, help="lm-eval's CLI with the harness model and tasks registered"
    )
    sub.add_parser("lm-eval-path", help="print the folder of the harness lm-eval task YAMLs")

    lst = sub.add_parser("list", help="list models, tasks or mitigations")
    lst.add_argument("what", choices=["models", "tasks", "mitigations"])

    run = sub.add_parser(
        "run",
        help="evaluate models x mitigations x tasks, write Parquet results",
        description="With no --models: the bundled trained tiny models (byte tokenizer), tasks "
        f"{DEFAULT_TASKS}, mitigations {DEFAULT_MITIGATIONS} where they apply, lengths "
        f"{DEFAULT_LENGTHS}, {DEFAULT_SAMPLES} samples: offline, CPU, a couple of minutes.",
    )
    run.add_argument("--models", help="comma-separated catalog names, local dirs or hub ids")
    run.add_argument(
        "--tasks", help=f"comma-separated (default: passkey; with no --models: {DEFAULT_TASKS})"
    )
    run.add_argument(
        "--mitigations", help="comma-separated, each name[:key=value...] (default: none)"
    )
    run.add_argument("--lengths", help="comma-separated token counts: 512,4k,1m")
    run.add_argument("--depths", help="comma-separated needle depths in [0, 1]")
    run.add_argument("--samples", type=int, help="samples per length (per depth if --depths)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help="a task setting, repeatable, e.g. perplexity.bucket=128 "
        "(`harness list tasks` names each task's settings)",
    )
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--dtype", default="float32", choices=list(DTYPES))
    run.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "triton"],
        help="Mamba-2 scan backend (auto: triton on CUDA when mamba-ssm imports)",
    )
    run.add_argument("--out", type=Path, default=Path("results"))
    run.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="run every unit again, even those with finished parts",
    )
    return parser


def list_command(what: str) -> None:
    """One line per name: the name, then its description."""
    lines: dict[str, str] = {}
    if what == "models":
        lines |= {name: tiny.description for name, tiny in TINY_MODELS.items()}
        lines |= {name: card_summary(path) for name, path in bundled_models().items()}
        for spec in CATALOG.values():
            state = f"state {spec.state_size / 1e6:.2f}M" if spec.state_size else "no state"
            lines[spec.name] = (
                f"{spec.description}; {spec.params / 1e6:.0f}M params, {state}, trained at "
                f"{spec.train_context} tokens, peer {spec.peer}"
            )
    elif what == "tasks":
        for name, cls in registry.tasks().items():
            settings = ", ".join(f"{k}={v}" for k, v in cls.settings_defaults.items())
            lines[name] = cls.description + (f" [options: {settings}]" if settings else "")
    else:
        for name, cls in registry.mitigations().items():
            defaults = ", ".join(f"{k}={v}" for k, v in cls.defaults.items())
            lines[name] = cls.description + (f" [{defaults}]" if defaults else "")
    width = max(map(len, lines)) + 2
    for name, line in lines.items():
        print(f"{name:<{width}}{line}")


def run_command(args: argparse.Namespace) -> int:
    embedded = args.models is None
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {args.samples}")
    lengths = args.lengths if args.lengths is not None else (DEFAULT_LENGTHS if embedded else None)
    options = TaskOptions(
        lengths=parse_lengths(lengths) if lengths is not None else None,
        depths=parse_depths(args.depths) if args.depths is not None else None,
        samples=args.samples or (DEFAULT_SAMPLES if embedded else None),
        seed=args.seed,
        extra=parse_task_options(args.option),
    )
    models = parse_models(args.models or DEFAULT_MODELS)
    mitigation_specs = args.mitigations or (DEFAULT_MITIGATIONS if embedded else "none")
    mitigations = [parse_mitigation(s) for s in dict.fromkeys(mitigation_specs.split(","))]
    tasks = parse_tasks(args.tasks or (DEFAULT_TASKS if embedded else "passkey"), options)
    check_out_dir(args.out)
    device = pick_device(args.device)
    if any(m.family == "mamba2" for m in models):
        check_backend(args.backend, device)
    plan = build_plan(
        models, mitigations, tasks, args.dtype, strict=not (embedded and args.mitigations is None)
    )
    config = RunConfig(
        out=args.out,
        device=device,
        dtype=args.dtype,
        backend=args.backend,
        seed=args.seed,
        resume=args.resume,
    )
    report = Runner(plan, config).run()
    print_report(report)
    return 1 if report.failed else 0


def print_report(report: Report) -> None:
    """One row per (model, mitigation), one column per (task, length): each unit's summary."""
    if not report.outcomes:
        console.print(f"nothing to do: all {len(report.skipped)} units are already done")
        return
    columns: dict[str, None] = {}
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for o in report.outcomes:
        column = f"{o.unit.task.name} {o.unit.params.get('length', '')}".strip()
        columns[column] = None
        row = cells.setdefault((o.unit.model.name, o.unit.mitigation.spec), {})
        row[column] = o.summary if o.status == "ok" else o.status
    table = Table(title=f"run {report.run_id}", caption=SUMMARY_CAPTION)
    for name in ("model", "mitigation", *columns):
        table.add_column(name, overflow="fold")
    for (model, mitigation), row in cells.items():
        table.add_row(model, mitigation, *(row.get(c, "") for c in columns))
    Console(width=max(Console().width, 160)).print(table)
    for o in report.failed:
        console.print(
            f"failed: {o.unit.model.name} {o.unit.mitigation.spec} "
            f"{o.unit.task.name} {o.unit.params}: {o.message}",
            markup=False,
        )
    console.print(
        f"{len(report.outcomes)} units run ({len(report.failed)} failed), "
        f"{len(report.skipped)} already done; manifest {report.manifest}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "lm-eval":
        from harness.lm_eval.console import main as lm_eval_main

        lm_eval_main(rest)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "lm-eval-path":
        from harness.lm_eval import include_path

        print(include_path())
        return 0
    try:
        if args.command == "list":
            list_command(args.what)
            return 0
        if args.command == "leaderboard":
            return leaderboard_cli.command(args)
        if args.command == "train":
            return train_cli.command(args)
        return run_command(args)
    except UsageError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
