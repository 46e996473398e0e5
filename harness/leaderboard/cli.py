"""`harness leaderboard`: its options and its command (harness/cli.py wires them in).

Importing this module is cheap: the command imports the heavy modules when it runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from harness.leaderboard.options import DEFAULT_POSITIONS, DEFAULT_THRESHOLD, Options
from harness.settings import PATH, SettingError, parse_value


def threshold(text: str) -> float:
    """An accuracy in (0, 1]."""
    problem = argparse.ArgumentTypeError(f"{text!r} is not an accuracy in (0, 1], e.g. 0.95")
    try:
        value = parse_value(text, float)  # ASCII digits only
    except SettingError:
        raise problem from None
    if not 0.0 < value <= 1.0:
        raise problem
    return value


def positions(text: str) -> tuple[float, ...]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0): positive multiples of the training length."""
    try:
        values = tuple(parse_value(item, float) for item in text.split(","))  # ASCII digits only
    except SettingError:
        values = ()
    if not values or not all(0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive numbers, e.g. 0.5,1,2,4,8"
        )
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=PATH, default=Path("results"), help="results folder (default: results)"
    )
    parser.add_argument(
        "--out", type=PATH, default=None, help="output folder (default: <results>/leaderboard)"
    )
    parser.add_argument(
        "--threshold",
        type=threshold,
        default=DEFAULT_THRESHOLD,
        help=f"passkey accuracy an effective length needs (default: {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--positions",
        type=positions,
        default=DEFAULT_POSITIONS,
        help="perplexity columns, as multiples of the training length "
        "(default: " + ",".join(f"{p:g}" for p in DEFAULT_POSITIONS) + ")",
    )


def command(args: argparse.Namespace) -> int:
    """Build and write the leaderboard: 0, or 2 when there are no results to read."""
    # pandas and matplotlib load here, not when `harness` builds its parser for other commands
    from harness.leaderboard.build import build
    from harness.leaderboard.load import NoResultsError
    from harness.leaderboard.write import write_leaderboard
    from harness.plan import UsageError, check_out_dir

    out = args.out if args.out is not None else args.results / "leaderboard"
    try:
        board = build(args.results, Options(args.threshold, tuple(args.positions)))
        check_out_dir(out)  # before anything is written
    except (UsageError, NoResultsError) as err:
        print(f"harness leaderboard: error: {err}", file=sys.stderr)
        return 2
    written = write_leaderboard(board, out)
    for warning in board.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"leaderboard of {len(board.main)} rows ({len(board.failures)} failed units, "
        f"{len(board.warnings)} warnings): {len(written)} files in {out}, "
        f"open {out / 'index.html'}"
    )
    return 0
