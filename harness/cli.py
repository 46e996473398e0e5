"""The `harness` command: argument parsing only; plans go to the runner."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from harness import calibrate as calibrate_cli
from harness import identity
from harness.executors import EXECUTORS, executor_class
from harness.export import cli as export_cli
from harness.leaderboard import cli as leaderboard_cli
from harness.models.bundled import bundled_models
from harness.models.tiny import TINY_MODELS
from harness.plan import (
    MAX_SAMPLES,
    UsageError,
    build_plan,
    check_backend,
    check_names,
    check_out_dir,
    nonempty,
    parse_count,
    parse_depths,
    parse_device,
    parse_lengths,
    parse_list,
    parse_mitigation,
    parse_models,
    parse_seed,
    parse_task_options,
    parse_tasks,
)
from harness.registry import MITIGATIONS, TASKS, RegistryError
from harness.settings import FLOAT, INT, PATH, describe, format_value
from harness.train import cli as train_cli

if TYPE_CHECKING:
    from harness.executors.base import ExecutorSettings
    from harness.executors.driver import Report
    from harness.plan import Plan
    from tasks.base import Task

# Only the commands that need them import torch, pyarrow, pandas, transformers or rich, so that
# `harness --help` and `harness list` answer at once (tests/test_registry.py checks).
DTYPE_NAMES = ("float32", "bfloat16")  # the keys of harness.runner.DTYPES

# `harness run` with no --models: the bundled trained tiny models, offline, on the CPU
DEFAULT_MODELS = ",".join(bundled_models()) or ",".join(TINY_MODELS)
DEFAULT_TASKS = "passkey,perplexity"
DEFAULT_MITIGATIONS = "none,rri,state-norm"
DEFAULT_LENGTHS = "320,640,1280,2560"  # 1x-8x the bundled short model's training length
DEFAULT_SAMPLES = 8


class StderrConsole:
    """rich's Console on stderr, imported when something is first printed."""

    def print(self, *objects: Any, **options: Any) -> None:
        from rich.console import Console

        Console(stderr=True).print(*objects, **options)


console = StderrConsole()
SUMMARY_CAPTION = (
    "passkey L: keys retrieved/samples (mean log-probability of the key: near 0 is sure and "
    "right, a uniform guess among 5-digit keys is -11.5, far below is confidently wrong). "
    "perplexity L: within the training length / beyond it. The cliff: how these change past "
    "each model's training length."
)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`harness: error: ...`, exit 2), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"harness: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="harness",
        description="Long-context evaluation of recurrent LMs: state collapse, mitigations, "
        "transformer baselines.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    board = sub.add_parser(
        "leaderboard", help="results/ -> leaderboard (Markdown, CSV, HTML with figures)"
    )
    leaderboard_cli.add_arguments(board)

    export = sub.add_parser(
        "export", help="results/ -> lm-eval's results JSON or Every Eval Ever records"
    )
    export_cli.add_arguments(export)

    train = sub.add_parser(
        "train",
        help="train or continue a Mamba-2, Mamba-1, RWKV-6 or GPT-NeoX (state passing, TBPTT)",
    )
    train_cli.add_arguments(train)

    calibrate = sub.add_parser(
        "calibrate", help="per-layer dt or A scales minimising the loss at a target length"
    )
    calibrate_cli.add_arguments(calibrate)

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
    run.add_argument("--samples", help="samples per length (per depth if --depths)")
    run.add_argument("--seed", default="0", help="0 to 2^64 - 1 (default 0)")
    run.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help="a task setting, repeatable, e.g. perplexity.bucket=128 "
        "(`harness list tasks` names each task's settings)",
    )
    run.add_argument(
        "--device",
        default="auto",
        help="auto | cpu | cuda | cuda:N (workers of ray/slurm take the GPU their engine assigns)",
    )
    run.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    run.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "triton"],
        help="Mamba-2 scan backend (auto: triton on CUDA when mamba-ssm imports)",
    )
    run.add_argument("--out", default="results", help="results folder (default: results)")
    run.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="run every unit again, even those with finished parts",
    )
    add_executor_arguments(run)

    status = sub.add_parser("status", help="which units of the last run are done, failed, missing")
    status.add_argument("--out", type=PATH, default=Path("results"))
    return parser


def add_executor_arguments(run: argparse.ArgumentParser) -> None:
    """Where the jobs of a run go (README: Running on a cluster)."""
    group = run.add_argument_group("executors")
    group.add_argument("--executor", default="local", choices=list(EXECUTORS))
    group.add_argument(
        "--workers", type=INT, default=1, help="jobs at once (local: worker processes)"
    )
    group.add_argument("--gpus-per-worker", type=FLOAT, help="ray/slurm: GPUs per job")
    group.add_argument(
        "--max-retries", type=INT, default=1, help="runs again of a job whose worker died"
    )
    group.add_argument("--ray-address", help="an existing Ray cluster (default: a private one)")
    group.add_argument("--slurm-partition")
    group.add_argument("--slurm-time", help="time limit per job, e.g. 04:00:00")
    group.add_argument("--slurm-account")
    group.add_argument(
        "--slurm-flag", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch flag"
    )
    group.add_argument(
        "--stop-after-fails",
        type=INT,
        metavar="K",
        help="skip longer lengths of a (model, mitigation, task) once K in a row score at or "
        "below chance",
    )
    group.add_argument(
        "--dry-run", action="store_true", help="print the jobs and their cost; run nothing"
    )
    group.add_argument(
        "--detach", action="store_true", help="ray/slurm: submit, return, `harness status` later"
    )


def list_command(what: str) -> None:
    """Models: one line each (name, family, size, state, training length, peer); tasks and
    mitigations: a line each, then one per setting with its type, default and meaning."""
    if what == "models":
        from harness.models.listing import format_rows, model_rows

        print("\n".join(format_rows(model_rows())))
        return
    registry = TASKS if what == "tasks" else MITIGATIONS
    how = "--option {name}.KEY=VALUE" if what == "tasks" else "{name}:KEY=VALUE"
    for name in registry.names():
        try:
            cls = registry.get(name)
        except RegistryError as err:  # a broken plugin: say so, list the others
            print(f"{name}: {err}")
            continue
        print(f"{name}: {cls.description} (families: {', '.join(sorted(cls.families))})")
        settings = describe(cls.Settings)
        if settings:
            print(f"  {how.format(name=name)}, KEY=default (type): meaning")
        written = [f"{s.key}={format_value(s.default)}" for s in settings]
        width = max(map(len, written), default=0)
        for s, key in zip(settings, written, strict=True):
            print(f"    {key:<{width}}  ({s.kind}) {s.help}")


def to_stdout(command: Callable[[], int | None]) -> int:
    """Run a command that prints; a reader that stops early (`harness list tasks | head`,
    `harness status | head -1`) is no error."""
    try:
        code = command() or 0
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    return code


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    from harness.executors.driver import Driver, detach
    from harness.runner import RunConfig
    from tasks.base import TaskOptions

    embedded = args.models is None
    for what in ("models", "tasks", "mitigations", "samples", "seed", "device"):
        if getattr(args, what) is not None:
            nonempty(getattr(args, what), what)
    samples = args.samples and parse_count(
        args.samples, "samples", MAX_SAMPLES, "the plan lists every unit before it starts"
    )
    seed = parse_seed(args.seed)
    args.out = Path(nonempty(args.out, "out"))
    lengths = args.lengths if args.lengths is not None else (DEFAULT_LENGTHS if embedded else None)
    options = TaskOptions(
        lengths=parse_lengths(lengths) if lengths is not None else None,
        depths=parse_depths(args.depths) if args.depths is not None else None,
        samples=samples or (DEFAULT_SAMPLES if embedded else None),
        seed=seed,
        extra=parse_task_options(args.option),
    )
    check_out_dir(args.out)
    settings = executor_settings(args)
    device = parse_device(args.device, here=settings.name == "local")
    mitigation_specs = args.mitigations or (DEFAULT_MITIGATIONS if embedded else "none")
    mitigations = [
        parse_mitigation(s) for s in dict.fromkeys(parse_list(mitigation_specs, "mitigations"))
    ]
    tasks = parse_tasks(args.tasks or (DEFAULT_TASKS if embedded else "passkey"), options)
    models = parse_models(args.models or DEFAULT_MODELS)
    if settings.name != "local":
        check_absolute_sources(tasks, settings.name)
    elif any(m.family == "mamba2" for m in models):
        check_backend(args.backend, device)
    plan = build_plan(models, mitigations, tasks, args.dtype)
    check_names(plan, args.out)
    config = RunConfig(
        out=args.out,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        seed=seed,
        resume=args.resume,
        stop_after_fails=args.stop_after_fails,
        command=["harness", *argv],
    )
    driver = Driver(plan, config, settings)
    if plan.skipped:
        console.print(
            f"not applicable, skipped: {', '.join(plan.skipped)}", markup=False, soft_wrap=True
        )
    if args.dry_run:
        print(driver.describe_jobs())
        return 0
    if args.detach:
        pid, log = detach(argv, args.out)
        console.print(
            f"detached: the driver runs as pid {pid}, log {log}; "
            f"`harness status --out {args.out}` shows its progress",
            markup=False,
        )
        return 0
    for warning in identity.clashes(args.out, plan.models):
        print(f"harness: warning: {warning}", file=sys.stderr)
    report = driver.run()
    if report.interrupted:
        console.print(
            f"interrupted; {report.done_now} units done, rerun the same command to resume"
        )
        return 130
    print_report(report, plan, args.out)
    if report.lost:
        console.print(
            f"{len(report.lost)} units missing (their worker was lost); "
            "rerun the same command to run them"
        )
    return 1 if report.failed or report.lost or report.problems else 0


SLURM_FLAGS = ("slurm_partition", "slurm_time", "slurm_account", "slurm_flag")


def executor_settings(args: argparse.Namespace) -> ExecutorSettings:
    """The executor's settings from the run's flags, checked (UsageError: exit 2)."""
    from harness.executors.base import ExecutorSettings

    for flag, least in (("workers", 1), ("max_retries", 0), ("stop_after_fails", 1)):
        value = getattr(args, flag)
        if value is not None and value < least:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least {least}, got {value}")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    if args.ray_address is not None and args.executor != "ray":
        raise UsageError("--ray-address needs --executor ray")
    used = [f for f in SLURM_FLAGS if getattr(args, f)]
    if used and args.executor != "slurm":
        raise UsageError(f"--{used[0].replace('_', '-')} needs --executor slurm")
    if args.detach and args.executor == "local":
        raise UsageError("--detach needs --executor ray or slurm (a local run is this process)")
    if args.detach and args.dry_run:
        raise UsageError("--detach and --dry-run exclude each other")
    settings = ExecutorSettings(
        name=args.executor,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        max_retries=args.max_retries,
        ray_address=args.ray_address,
        slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time,
        slurm_account=args.slurm_account,
        slurm_flags=list(args.slurm_flag),
    )
    executor_class(settings.name).check(settings)
    return settings


def check_absolute_sources(tasks: list[Task], executor: str) -> None:
    """Workers of ray/slurm may start in another folder: task files must be absolute."""
    for task in tasks:
        for field in dataclasses.fields(task.settings):
            key, value = field.name, getattr(task.settings, field.name)
            path = Path(value).expanduser() if isinstance(value, str | Path) and value else None
            if path is not None and path.exists() and not path.is_absolute():
                raise UsageError(
                    f"--option {task.name}.{key}={value} is a relative path; with "
                    f"--executor {executor} give it as an absolute path"
                )


def print_report(report: Report, plan: Plan, out: Path) -> None:
    """One row per (model, mitigation), one column per (task, length): each unit's summary,
    those of units done before this run read from their parts."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from harness.runner import done_summary

    ran = {o.unit.id: o.summary if o.status == "ok" else o.status for o in report.outcomes}
    before = {u.id for u in report.skipped}
    columns: dict[str, None] = {}
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for unit in plan.units:
        if unit.id not in ran and unit.id not in before:
            continue  # lost, or interrupted
        column = f"{unit.task.name} {unit.params.get('length', '')}".strip()
        columns[column] = None
        row = cells.setdefault((unit.model.name, unit.mitigation.spec), {})
        row[column] = ran[unit.id] if unit.id in ran else done_summary(out, unit)
    table = Table(title=f"run {report.run_id}", caption=SUMMARY_CAPTION)
    table.add_column("model", no_wrap=True)  # whole names; the other columns fold
    for name in ("mitigation", *columns):
        table.add_column(name, overflow="fold")
    for (model, mitigation), row in cells.items():
        texts = (model, mitigation, *(row.get(c, "") for c in columns))
        table.add_row(*(escape(text) for text in texts))  # names may hold [markup]
    Console(width=max(Console().width, 160)).print(table)
    if not report.outcomes:
        console.print(f"nothing to do: all {len(report.skipped)} units are already done")
        return
    for o in report.failed:
        console.print(
            f"failed: {o.unit.model.name} {o.unit.mitigation.spec} "
            f"{o.unit.task.name} {o.unit.params}: {o.message}",
            markup=False,
        )
    manifest = f"manifest {report.manifest}" if report.manifest else "no manifest"
    problems = f"; not recorded: {' | '.join(report.problems)}" if report.problems else ""
    console.print(
        f"{len(report.outcomes)} units run ({len(report.failed)} failed), "
        f"{len(report.skipped)} already done; {manifest}{problems}",
        markup=False,
        soft_wrap=True,
    )
    if report.manifest is not None:
        hint = leaderboard_hint(report.manifest.parent.parent)
        console.print(hint, markup=False, soft_wrap=True)  # one line: the command copies whole


def leaderboard_hint(out: Path) -> str:
    """The command that draws a results folder (`out`) as a leaderboard, and where it lands."""
    page = out / "leaderboard" / "index.html"
    return (
        f"leaderboard (every model against length / training length, tables, figures): "
        f"harness leaderboard --results {shlex.quote(str(out))}  then open {shlex.quote(str(page))}"
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
            return to_stdout(lambda: list_command(args.what))
        if args.command == "leaderboard":
            return leaderboard_cli.command(args)
        if args.command == "export":
            return export_cli.command(args)
        if args.command == "train":
            return train_cli.command(args)
        if args.command == "calibrate":
            return calibrate_cli.command(args)
        if args.command == "status":
            from harness.executors.status import status_command

            return to_stdout(lambda: status_command(args.out))
        return run_command(args, list(sys.argv[1:] if argv is None else argv))
    except UsageError as err:
        print(f"harness: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
