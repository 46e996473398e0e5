"""Writing a leaderboard: leaderboard.md, leaderboard.csv, index.html and figures/*.png.

A figure of an earlier build that this one does not draw (a model gone from the results, a
renamed file) is removed from figures/, so the folder shows this build only.
"""

from __future__ import annotations

from pathlib import Path

from harness.leaderboard.build import Leaderboard
from harness.leaderboard.page import to_html
from harness.leaderboard.render import figure_paths, to_csv, to_markdown


def write_leaderboard(board: Leaderboard, out: Path) -> list[Path]:
    """Write every output under `out`; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for _, plot, relative in figure_paths(board):
        path = out / relative
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(plot.png)
        written.append(path)
    for stale in set((out / "figures").glob("*.png")) - set(written):
        stale.unlink()
    for name, text in (
        ("leaderboard.md", to_markdown(board)),
        ("leaderboard.csv", to_csv(board)),
        ("index.html", to_html(board)),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written
