"""The leaderboard from synthetic result parts written exactly as the runner writes them."""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from matplotlib.figure import Figure

from harness.cli import leaderboard_hint, main
from harness.leaderboard.build import build
from harness.leaderboard.cli import add_arguments, command
from harness.leaderboard.figures import value_axis
from harness.leaderboard.options import Options
from harness.leaderboard.render import to_csv, to_markdown
from harness.leaderboard.tables import (
    cliff_points,
    effective_length,
    head_norms,
    heads_to_draw,
    passkey_heatmaps,
)
from harness.leaderboard.write import write_leaderboard
from harness.results import COMMON, part_path, write_manifest, write_part
from tasks.passkey import Passkey, passkey_key
from tasks.perplexity import Perplexity
from tasks.state_capacity import StateCapacity
from tasks.state_stats import StateStats

DAY = datetime(2026, 5, 1, 12, tzinfo=UTC)
RRI = "rri:a=0.9999"  # a spec with characters the hive folder name URI-encodes


def write_unit(
    root: Path,
    table: str,
    schema: pa.Schema,
    model: str,
    mitigation: str,
    params: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    status: str = "ok",
    dtype: str = "float32",
    run: str = "20260501T120000Z-aaaaaa",
    created: datetime = DAY,
) -> Path:
    """One unit's part, with the runner's common columns; a failed unit has one bare row."""
    key = json.dumps([table, model, mitigation, params, dtype], sort_keys=True)
    unit_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    common = {
        "unit_id": unit_id,
        "run_id": run,
        "task": table,
        "model_ref": model,
        "family": "mamba2",
        "params": 130_000_000,
        "state_size": 4_718_592,
        "train_context": 2048,
        "mitigation_name": mitigation.partition(":")[0],
        "status": status,
        "message": "" if status == "ok" else f"{status}: synthetic failure",
        "unit_params": json.dumps(params, sort_keys=True),
        "seed": params.get("seed", 0),
        "device": "cuda",
        "dtype": dtype,
        "backend": "torch",
        "harness_version": "0.1.0",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "created_at": created,
    }
    path = part_path(root, table, model, mitigation, unit_id)
    table_rows = [{**common, **row} for row in rows] if status == "ok" else [common]
    write_part(path, table_rows, pa.unify_schemas([COMMON, schema]))
    return path


def passkey_unit(
    root: Path,
    model: str,
    mitigation: str,
    length: int,
    correct: list[bool],
    *,
    samples: int | None = None,
    **common: Any,
) -> Path:
    """Samples at depths (i + 0.5) / n, as the passkey task places them without --depths."""
    count = len(correct)
    params = {"depths": None, "length": length, "samples": samples or count, "seed": 0}
    rows = [
        {
            "length": length,
            "tokens": length - 1,
            "depth": (i + 0.5) / count,
            "sample": i,
            "key": passkey_key(0, length, i),
            "prediction": passkey_key(0, length, i) if ok else "99999",
            "correct": ok,
            "key_logprob": -0.01 if ok else -9.0,
            "beyond_context": length > 2048,
        }
        for i, ok in enumerate(correct)
    ]
    return write_unit(root, "passkey", Passkey.schema, model, mitigation, params, rows, **common)


def perplexity_unit(
    root: Path,
    model: str,
    mitigation: str,
    length: int,
    losses: list[list[float]],
    bucket: int = 1024,
    **common: Any,
) -> Path:
    """One unit of len(losses) documents, losses[d][b] the mean loss of bucket b."""
    params = {"length": length, "source": "newlines", "bucket": bucket, "documents": len(losses)}
    rows = [
        {
            "source": "newlines",
            "length": length,
            "document": d,
            "bucket_size": bucket,
            "start": b * bucket,
            "end": (b + 1) * bucket,
            "count": bucket,
            "mean_loss": loss,
            "perplexity": math.exp(loss),
            "beyond_context": b * bucket >= 2048,
        }
        for d, document in enumerate(losses)
        for b, loss in enumerate(document)
    ]
    return write_unit(
        root, "perplexity", Perplexity.schema, model, mitigation, params, rows, **common
    )


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return command(parser.parse_args(list(argv)))


def row(frame: pd.DataFrame, model: str, mitigation: str) -> pd.Series:
    found = frame[(frame["model"] == model) & (frame["mitigation"] == mitigation)]
    assert len(found) == 1, f"{model} / {mitigation}: {len(found)} rows"
    return found.iloc[0]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """mamba2-130m: none passes 1K and 2K, not 4K; rri passes all, with an oom at 8K.
    pythia-160m: none passes 1K only."""
    root = tmp_path / "results"
    for length, right in ((1024, 10), (2048, 10), (4096, 9)):
        passkey_unit(root, "mamba2-130m", "none", length, [True] * right + [False] * (10 - right))
        passkey_unit(root, "mamba2-130m", RRI, length, [True] * 10)
        pythia_right = 10 if length == 1024 else 3
        passkey_unit(root, "pythia-160m", "none", length, [i < pythia_right for i in range(10)])
    oom = {"depths": None, "length": 8192, "samples": 10, "seed": 0}
    write_unit(root, "passkey", Passkey.schema, "mamba2-130m", RRI, oom, [], status="oom")
    return root


def test_effective_length_is_the_last_length_before_the_first_failure() -> None:
    accuracy = pd.Series({1024: 1.0, 2048: 0.96, 4096: 0.5, 8192: 1.0})
    assert effective_length(accuracy, [], 0.95) == 2048
    assert effective_length(accuracy, [2048], 0.95) == 2048  # ok results beat a failed unit
    assert effective_length(accuracy.drop(2048), [2048], 0.95) == 1024  # a failed length stops it
    assert effective_length(accuracy, [], 0.97) == 1024
    assert effective_length(pd.Series({1024: 0.2}), [], 0.95) == 0


def test_main_table_passkey_columns(results: Path) -> None:
    main = build(results, Options(), draw=False).main
    none = row(main, "mamba2-130m", "none")
    assert none["effective_length"] == 2048
    assert (none["acc_1K"], none["acc_2K"], none["acc_4K"]) == (1.0, 1.0, 0.9)
    assert (none["n_4K"], none["passkey_samples"]) == (10, 30)
    assert none[["family", "params", "train_context"]].tolist() == ["mamba2", 130_000_000, 2048]
    assert row(main, "pythia-160m", "none")["effective_length"] == 1024
    assert list(main["mitigation"][:2]) == ["none", "rri:a=0.9999"]  # URI-decoded, none first


def test_failed_units_are_counted_not_averaged(results: Path) -> None:
    board = build(results, Options(), draw=False)
    rri = row(board.main, "mamba2-130m", "rri:a=0.9999")
    assert rri["effective_length"] == 4096
    assert rri["failed_units"] == 1 and rri["passkey_samples"] == 30
    assert "acc_8K" not in board.main.columns
    assert board.failures[["mitigation", "status"]].values.tolist() == [["rri:a=0.9999", "oom"]]
    assert board.warnings == []


def test_threshold_option_moves_the_effective_length(results: Path) -> None:
    main = build(results, Options(threshold=0.9), draw=False).main
    assert row(main, "mamba2-130m", "none")["effective_length"] == 4096


def test_two_dtypes_in_one_cell_keep_the_newest_and_warn(results: Path) -> None:
    later = DAY + timedelta(days=1)
    run = "20260502T120000Z-bbbbbb"
    passkey_unit(
        results, "mamba2-130m", "none", 1024, [False] * 10, dtype="bfloat16", run=run, created=later
    )
    board = build(results, Options(), draw=False)
    none = row(board.main, "mamba2-130m", "none")
    assert none["acc_1K"] == 0.0 and none["n_1K"] == 10  # not 0.5 over 20 samples
    assert none["effective_length"] == 0
    assert none["dtype"] == "bfloat16, float32"  # 2K and 4K are still float32
    clash = [w for w in board.warnings if "more than one setting" in w]
    assert clash == [
        "passkey mamba2-130m / none: length 1024 had results of more than one setting; kept "
        "the newest (dtype=bfloat16, 10 rows), dropped dtype=float32 (10 rows)"
    ]
    assert any("more than one dtype" in w for w in board.warnings)


def test_two_sample_counts_for_one_length_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "results"
    passkey_unit(root, "mamba2-130m", "none", 1024, [True] * 4)
    passkey_unit(root, "mamba2-130m", "none", 1024, [False] * 10, created=DAY - timedelta(1))
    board = build(root, Options(), draw=False)
    assert row(board.main, "mamba2-130m", "none")["n_1K"] == 4
    [warning] = board.warnings
    assert "kept the newest (samples=4, 4 rows), dropped samples=10 (10 rows)" in warning


def test_corrupt_part_is_named_and_skipped(results: Path, capsys: pytest.CaptureFixture) -> None:
    bad = passkey_unit(results, "pythia-160m", "none", 8192, [True] * 10)
    bad.write_bytes(bad.read_bytes()[:200])
    assert run_cli("--results", str(results)) == 0
    err = capsys.readouterr().err
    assert str(bad) in err
    out = results / "leaderboard"
    assert str(bad) in (out / "leaderboard.md").read_text()
    csv = pd.read_csv(out / "leaderboard.csv")
    assert len(csv) == 3 and "acc_8K" not in csv.columns


@pytest.mark.parametrize("layout", ["missing", "empty", "manifest only"])
def test_no_results_exit_2(tmp_path: Path, layout: str, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "results"
    if layout != "missing":
        root.mkdir()
    if layout == "manifest only":
        write_manifest(root, "r1", {"run_id": "r1", "device_name": "cpu"})
    assert run_cli("--results", str(root)) == 2
    err = capsys.readouterr().err
    assert str(root) in err and "harness run" in err
    assert not (root / "leaderboard").exists()


@pytest.mark.parametrize("option", [["--threshold", "1.5"], ["--positions", "1,-2"]])
def test_bad_options_exit_2(option: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        run_cli(*option)
    assert stop.value.code == 2
    assert option[1] in capsys.readouterr().err


def test_an_output_folder_that_is_a_file_exits_2(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    assert run_cli("--results", str(results), "--out", str(out)) == 2
    assert "is a file; give a directory" in capsys.readouterr().err
    assert out.read_text() == "x"


def test_perplexity_at_multiples_of_the_training_length(tmp_path: Path) -> None:
    root = tmp_path / "results"
    # two documents, 8 buckets of 1K: loss 1 then 2 in [1K, 2K), 3 in [3K, 4K)
    doc = [0.5, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]
    perplexity_unit(root, "mamba2-130m", "none", 8192, [doc, [x + 1 for x in doc]])
    perplexity_unit(root, "mamba2-130m", "none", 4096, [[9.0] * 4])  # shorter unit: not used
    board = build(root, Options(positions=(1.0, 2.0, 8.0)))
    none = row(board.main, "mamba2-130m", "none")
    assert none["ppl_1x"] == pytest.approx(math.exp(1.5))  # token 2048 is in [1024, 2048)
    assert none["ppl_2x"] == pytest.approx(math.exp(3.5))
    assert math.isnan(none["ppl_8x"]) and none["ppl_documents"] == 2
    assert [p.name for p in board.plots["mamba2-130m"]] == ["loss-by-position"]


def test_state_tables_feed_collapse_length_and_norm_curves(tmp_path: Path) -> None:
    root = tmp_path / "results"
    stats = [
        {"source": "newlines", "length": 8192, "layer": layer, "head": head, "position": p,
         "norm": 1.0 + grows * p / 1024, "collapsed": grows}
        for layer in (0, 3)
        for head, grows in ((0, False), (1, True))
        for p in (512, 2048, 8192)
    ]  # fmt: skip
    params = {"length": 8192, "source": "newlines"}
    write_unit(root, "state_stats", StateStats.schema, "mamba2-130m", "none", params, stats)
    found = {"kind": "model", "collapse_length": 5000, "recall_length": 4096}
    unbroken = {"kind": "model", "collapse_searched_to": 32768, "recall_length": 32768}
    for mitigation, rows in (("none", [found]), (RRI, [unbroken])):
        write_unit(
            root, "state_capacity", StateCapacity.schema, "mamba2-130m", mitigation, {}, rows
        )
    board = build(root, Options())
    none = row(board.main, "mamba2-130m", "none")
    assert (none["collapse_length"], none["recall_length"]) == (5000, 4096)
    assert "effective_length" not in board.main.columns
    [plot] = board.plots["mamba2-130m"]
    assert plot.name == "state-norms" and plot.png.startswith(b"\x89PNG")
    assert plot.title == "state norm of the collapsing heads"
    assert f"| {RRI} | mamba2 | 130M | 4.72M | 2K | none to 32K | 32K |" in to_markdown(board)


def test_heads_to_draw_follow_the_task_verdict_then_growth() -> None:
    rows = pd.DataFrame(
        [
            {"model": "m", "mitigation": "none", "layer": 0, "head": head, "position": p,
             "norm": 1.0 if p <= 2048 else growth, "collapsed": head == 1}
            for head, growth in ((0, 50.0), (1, 3.0), (2, 1.0))
            for p in (1024, 2048, 8192)
        ]
    )  # fmt: skip
    assert heads_to_draw(rows, head_norms(rows), 2048).heads == [(0, 1)]
    none_flagged = heads_to_draw(rows.assign(collapsed=False), head_norms(rows), 2048)
    assert none_flagged.heads == [(0, 0), (0, 1), (0, 2)]
    assert none_flagged.what == "heads whose norm grew most (none collapsed)"
    by_growth = heads_to_draw(rows.drop(columns="collapsed"), head_norms(rows), 2048)
    assert by_growth.heads == [(0, 0), (0, 1), (0, 2)]
    assert by_growth.what == "heads whose norm grew most"


class PageCounter(HTMLParser):
    """Rows of the leaderboard table (first cells) and images with data: URIs."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.first_cells: list[str] = []
        self.images = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self.table = values.get("id")
        elif tag == "tr":
            self._cell = None
        elif tag == "td" and self.table == "leaderboard" and self._cell is None:
            self._cell = []
            self.first_cells.append("")
        elif tag == "img" and (values.get("src") or "").startswith("data:image/png;base64,"):
            self.images += 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._cell:  # the first cell of a row, in pieces
            self.first_cells[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._cell.append("done")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium is not installed (apt-get install -y chromium)",
)
def test_html_page_in_a_headless_browser(results: Path, tmp_path: Path) -> None:
    perplexity_unit(results, "mamba2-130m", "none", 8192, [[1.0, 1.0, 2.0, 3.0, 5.0, 6, 7, 8]])
    out = tmp_path / "board"
    assert run_cli("--results", str(results), "--out", str(out)) == 0
    page = (out / "index.html").as_uri()
    shot = tmp_path / "page.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2000", page, profile=tmp_path / "p1")
    assert shot.read_bytes().startswith(b"\x89PNG")
    sorted_dom = chromium(
        "--dump-dom", page + "#sort=effective_length:asc", profile=tmp_path / "p2"
    ).stdout
    counter = PageCounter()
    counter.feed(sorted_dom)
    assert counter.first_cells == ["pythia-160m", "mamba2-130m", "mamba2-130m"]
    assert counter.images == 4  # the length cliff; mamba2-130m heatmap and loss; pythia heatmap
    assert 'data-order="asc"' in sorted_dom  # the script ran and marked the sorted column


def test_cli_module_imports_nothing_heavy() -> None:
    """`harness` builds every subcommand's parser; the leaderboard's must not cost seconds."""
    probe = (
        "import sys, harness.leaderboard.cli; "
        "print(sorted({'matplotlib', 'pandas'} & set(sys.modules)))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_cross_model_fits_get_their_own_section(tmp_path: Path) -> None:
    root = tmp_path / "results"
    found = {"kind": "model", "collapse_length": 5000, "recall_length": 4096}
    write_unit(root, "state_capacity", StateCapacity.schema, "mamba2-130m", "none", {}, [found])
    fit = {"kind": "fit-forget", "fit_points": 3, "fit_models": "a,b,c", "fit_a": 5.0,
           "fit_b": -4.0, "fit_r2": 0.99, "paper_a": 5.172, "paper_b": -4.469}  # fmt: skip
    write_unit(root, "state_capacity", StateCapacity.schema, "_combined", "none", {}, [fit])
    board = build(root, Options())
    assert list(board.main["model"]) == ["mamba2-130m"]
    assert board.fits[["kind", "fit_a", "fit_r2"]].values.tolist() == [["fit-forget", 5.0, 0.99]]
    text = to_markdown(board)
    assert "## Fits against state size" in text
    assert "| none | fit-forget | 3 | a,b,c | 5 | -4 |  | 0.99 | 5.172 | -4.469 |" in text


# --- issue 11: what a newcomer sees -------------------------------------------------------


def identity_unit(root: Path, model: str, model_id: str | None, length: int, right: int) -> Path:
    """A passkey unit whose rows carry a model_id, as harness.identity records it."""
    params = {"depths": None, "length": length, "samples": 4, "seed": 0}
    rows = [
        {"length": length, "depth": (i + 0.5) / 4, "sample": i, "key": passkey_key(0, length, i),
         "correct": i < right, "key_logprob": -1.0, "model_id": model_id}
        for i in range(4)
    ]  # fmt: skip
    schema = pa.unify_schemas([Passkey.schema, pa.schema([("model_id", pa.string())])])
    return write_unit(root, "passkey", schema, model, "none", params, rows)


def test_model_that_never_ran_is_failed_not_length_0(results: Path, tmp_path: Path) -> None:
    for length in (1024, 2048):
        params = {"depths": None, "length": length, "samples": 10, "seed": 0}
        write_unit(root := results, "passkey", Passkey.schema, "broken", "none", params, [],
                   status="error")  # fmt: skip
    board = build(root, Options())
    broken = row(board.main, "broken", "none")
    assert math.isnan(broken["effective_length"]) and broken["status"] == "failed"
    assert broken["failed_units"] == 2
    assert row(board.main, "mamba2-130m", RRI)["status"] == "partial"
    assert row(board.main, "pythia-160m", "none")["status"] == "ok"
    assert "broken" not in board.plots  # nothing to draw
    assert "| broken | none | failed (2 units) |" in to_markdown(board)
    effective = [c for c in to_markdown(board).splitlines() if c.startswith("| broken |")]
    assert effective[0].count("| failed |") == 1  # the effective length cell says failed
    written = pd.read_csv(io.StringIO(to_csv(board)))
    assert written.loc[written["model"] == "broken", "effective_length"].isna().all()


def test_key_logprob_beside_accuracy(results: Path) -> None:
    board = build(results, Options(), draw=False)
    none = row(board.main, "mamba2-130m", "none")
    assert none["logp_1K"] == pytest.approx(-0.01)
    assert none["logp_4K"] == pytest.approx(0.9 * -0.01 + 0.1 * -9.0)
    columns = list(board.main.columns)
    assert columns[columns.index("acc_2K") : columns.index("acc_2K") + 3] == [
        "acc_2K", "n_2K", "logp_2K",
    ]  # fmt: skip
    assert board.chance == pytest.approx(-5 * math.log(10))
    header = to_markdown(board).split("| model |")[1].splitlines()[0]
    assert "| passkey 1K | log p 1K | passkey 2K | log p 2K |" in header
    assert "| 9/10 | -0.9 |" in to_markdown(board)
    passkey = pd.read_parquet(results / "passkey")
    mamba = passkey[(passkey["model"] == "mamba2-130m") & (passkey["mitigation"] == "none")]
    heatmap = passkey_heatmaps(mamba)["none"]
    assert heatmap.logprob is not None  # printed under each cell's accuracy
    assert heatmap.logprob.loc["90%-100%", 4096] == pytest.approx(-9.0)  # the one miss
    assert heatmap.accuracy.loc["90%-100%", 4096] == 0.0


def test_length_cliff_figure_has_every_model(results: Path, tmp_path: Path) -> None:
    board = build(results, Options())
    [cliff] = board.overview
    assert cliff.name == "passkey-by-length" and cliff.png.startswith(b"\x89PNG")
    contexts = pd.Series(
        [2048.0, 2048.0, 1024.0],
        index=pd.MultiIndex.from_tuples(
            [("mamba2-130m", "none"), ("mamba2-130m", RRI), ("pythia-160m", "none")],
            names=["model", "mitigation"],
        ),
    )
    passkey = pd.read_parquet(results / "passkey")
    points = cliff_points(passkey[passkey["status"] == "ok"], contexts)
    assert len(points) == 9  # 3 rows x 3 lengths
    pythia = points[points["model"] == "pythia-160m"].sort_values("ratio")
    assert pythia["ratio"].tolist() == [1.0, 2.0, 4.0]
    written = write_leaderboard(board, tmp_path / "board")
    assert tmp_path / "board" / "figures" / "passkey-by-length.png" in written
    assert "figures/passkey-by-length.png" in (tmp_path / "board" / "leaderboard.md").read_text()


@pytest.mark.parametrize(
    ("values", "log"),
    [(218.6 + 1e-6 * np.sin(np.arange(60)), False), (np.geomspace(5, 5000, 20), True)],
)
def test_constant_curve_is_drawn_flat(values: np.ndarray, log: bool) -> None:
    axis = Figure().add_subplot()
    axis.plot(np.arange(len(values)), values)
    value_axis(axis, values)
    low, high = axis.get_ylim()
    assert (axis.get_yscale() == "log") == log
    if not log:  # the noise spans 1e-8 of the axis, not all of it
        assert high - low >= 0.999 * 0.05 * values.mean()
        assert low < values.min() and values.max() < high


def test_one_figure_file_per_model_identity(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for model in ("x y", "x_y"):
        passkey_unit(root, model, "none", 1024, [True, False])
    board = build(root, Options())
    out = tmp_path / "board"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "gone-0000-passkey-heatmap.png").write_bytes(b"stale")
    written = write_leaderboard(board, out)
    heatmaps = sorted(p.name for p in (out / "figures").glob("*passkey-heatmap.png"))
    assert len(heatmaps) == 2 and all(name.startswith("x_y-") for name in heatmaps)
    assert {p.name for p in written} >= set(heatmaps)
    assert not (out / "figures" / "gone-0000-passkey-heatmap.png").exists()


def test_one_name_with_two_identities_is_shown_apart(tmp_path: Path) -> None:
    root = tmp_path / "results"
    identity_unit(root, "toy", "aaaaaaaa1111", 1024, 4)
    identity_unit(root, "toy", "bbbbbbbb2222", 2048, 0)
    identity_unit(root, "other", "cccccccc3333", 1024, 2)
    board = build(root, Options())
    assert sorted(board.main["model"]) == ["other", "toy@aaaaaaaa", "toy@bbbbbbbb"]
    assert row(board.main, "toy@aaaaaaaa", "none")["acc_1K"] == 1.0
    assert math.isnan(row(board.main, "toy@aaaaaaaa", "none").get("acc_2K"))
    assert row(board.main, "toy@bbbbbbbb", "none")["model_id"] == "bbbbbbbb2222"
    [warning] = board.warnings
    assert "'toy' names 2 different checkpoints" in warning
    assert "toy@aaaaaaaa, toy@bbbbbbbb" in warning
    assert set(board.plots) == {"other", "toy@aaaaaaaa", "toy@bbbbbbbb"}


def test_rows_without_identity_beside_rows_with_one_are_apart(tmp_path: Path) -> None:
    root = tmp_path / "results"
    passkey_unit(root, "toy", "none", 2048, [True] * 4)  # written before identities existed
    identity_unit(root, "toy", "aaaaaaaa1111", 1024, 0)
    board = build(root, Options(), draw=False)
    assert sorted(board.main["model"]) == ["toy@aaaaaaaa", "toy@no-id"]
    assert len(board.warnings) == 1


HOSTILE = 'evil | <script>alert("x")</script> [link](http://x) *em*'


def test_names_are_escaped_in_markdown_html_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "results"
    passkey_unit(root, HOSTILE, '=HYPERLINK("http://x")', 1024, [True, False])
    passkey_unit(root, "@sum", "+1", 1024, [True, False])
    passkey_unit(root, "-2", "none", 1024, [False, False])
    board = build(root, Options())
    out = tmp_path / "board"
    write_leaderboard(board, out)
    markdown = (out / "leaderboard.md").read_text()
    assert "<script>" not in markdown and not re.search(r"(?<!\\)\]\(http", markdown)
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in table[: 2 + len(board.main)]}
    assert len(cells) == 1  # no name adds a column
    assert "\\<script\\>" in markdown and "evil \\| " in markdown
    page = (out / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    with open(out / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = {(r["model"], r["mitigation"]) for r in rows}
    assert (HOSTILE, '\'=HYPERLINK("http://x")') in cells
    assert ("'@sum", "'+1") in cells and ("'-2", "none") in cells
    assert {r["logp_1K"] for r in rows} >= {"-4.505"}  # numbers keep their sign


def browser_page(out: Path, checker: str) -> str:
    """index.html with an error recorder first in <head> and `checker` run after the page's
    own script; the results land in <body data-errors data-checked>."""
    recorder = (
        "<script>window.pageErrors = []; addEventListener('error', "
        "(e) => pageErrors.push(String(e.message)));</script>"
    )
    done = "<script>document.body.dataset.errors = JSON.stringify(pageErrors);</script>"
    page = (out / "index.html").read_text()
    page = page.replace("<head>", "<head>" + recorder, 1)
    page = page.replace("</body>", f"<script>{checker}</script>{done}</body>", 1)
    path = out / "checked.html"
    path.write_text(page)
    return path.as_uri()


SORT_EVERY_COLUMN = """
const problems = [];
for (const table of document.querySelectorAll("table.sortable")) {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, column) => {
    for (const pass of [1, 2]) {
      try { th.click(); } catch (error) { problems.push("click threw " + error); }
      const ascending = th.dataset.order === "asc";
      const keys = Array.from(table.tBodies[0].rows).map((row) => {
        const cell = row.cells[column];
        const text = (cell.dataset.sort ?? cell.textContent).trim();
        return text === "" ? null : Number.isNaN(Number(text)) ? text : Number(text);
      });
      const blanks = keys.findIndex((k) => k === null);
      if (blanks >= 0 && keys.slice(blanks).some((k) => k !== null))
        problems.push(table.id + " " + th.textContent + ": a blank before a value");
      const numbers = keys.filter((k) => typeof k === "number");
      for (let i = 1; i < numbers.length; i++)
        if (ascending ? numbers[i] < numbers[i - 1] : numbers[i] > numbers[i - 1])
          problems.push(table.id + " " + th.textContent + " pass " + pass + ": out of order");
    }
  });
}
document.body.dataset.checked = JSON.stringify(problems);
"""

MEASURE = """
const widest = document.documentElement.scrollWidth;
const titles = Array.from(document.querySelectorAll("#leaderboard td.name"), (td) => td.title);
document.body.dataset.checked = JSON.stringify({ widest, inner: innerWidth, titles });
"""


def body_data(dom: str, name: str) -> Any:
    found = re.search(rf'<body[^>]*\bdata-{name}="([^"]*)"', dom)
    assert found, f"no data-{name} on <body>: the checker did not run"
    return json.loads(html.unescape(found[1]))


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium is not installed (apt-get install -y chromium)",
)
def test_sorting_every_column_twice_never_throws(results: Path, tmp_path: Path) -> None:
    """Mixed numbers and blanks (a failed row, a missing length), every table of the page, each
    header clicked twice; and a malformed #sort address."""
    write_unit(results, "passkey", Passkey.schema, "broken", "none",
               {"length": 1024, "samples": 10, "seed": 0}, [], status="error")  # fmt: skip
    perplexity_unit(results, "mamba2-130m", "none", 8192, [[1.0, 1.0, 2.0, 3.0, 5.0, 6, 7, 8]])
    out = tmp_path / "board"
    assert run_cli("--results", str(results), "--out", str(out)) == 0
    page = browser_page(out, SORT_EVERY_COLUMN)
    for address, profile in ((page, "p1"), (page + "#sort=%E0%A4%A", "p2")):
        dom = chromium("--dump-dom", address, profile=tmp_path / profile).stdout
        assert body_data(dom, "errors") == []
        assert body_data(dom, "checked") == []


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="chromium is not installed (apt-get install -y chromium)",
)
def test_main_table_fits_a_laptop_screen(tmp_path: Path) -> None:
    """1366 px wide: long mitigation specs and model names wrap, their full text on hover."""
    root = tmp_path / "results"
    long_spec = "state-norm:calib=newline:k=128:mult=1.0+window:r=4096"
    long_model = "/data/checkpoints/mamba2-bytes-512-tbptt-2k-continued-from-step-12000"
    for model in (long_model, "mamba2-bytes-512"):
        for mitigation in ("none", "rri:a=0.9999:b=0.75", long_spec):
            for length in (512, 2048, 8192):
                passkey_unit(root, model, mitigation, length, [True, False, False, True])
            perplexity_unit(root, model, mitigation, 8192, [[1.0, 1.0, 2.0, 3.0, 5.0, 6, 7, 8]])
    out = tmp_path / "board"
    assert run_cli("--results", str(root), "--out", str(out)) == 0
    page = browser_page(out, MEASURE)
    dom = chromium("--window-size=1366,768", "--dump-dom", page, profile=tmp_path / "p").stdout
    measured = body_data(dom, "checked")
    assert measured["inner"] == 1366
    assert measured["widest"] <= measured["inner"], "the page scrolls sideways at 1366 px"
    assert long_spec in measured["titles"] and long_model in measured["titles"]


def test_run_summary_reads_right_and_points_at_the_leaderboard(
    neox_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Perplexity as 'x in / y beyond' (not 'x > y'), the key log-probability beside each
    passkey count, names printed as they are (no rich markup), and the leaderboard command."""
    model = tmp_path / "[bold]neox"
    shutil.copytree(neox_dir, model)
    out = tmp_path / "results"
    argv = ["run", "--models", str(model), "--tasks", "passkey,perplexity", "--lengths", "600",
            "--samples", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "[bold]neox" in text
    assert re.search(r"\d/2 \(-?\d+\.\d\)", text)  # correct/samples (mean key logprob)
    assert re.search(r"\d\S* in / \d\S* beyond", text) and " > " not in text
    command = f"harness leaderboard --results {out}"
    assert command in text  # on one line, to copy
    assert run_cli("--results", str(out)) == 0  # the command it names works


def test_the_closing_hint_quotes_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "my results"
    hint = leaderboard_hint(out)
    assert f"--results {shlex.quote(str(out))} " in hint
    assert hint.endswith(f"then open {shlex.quote(str(out / 'leaderboard' / 'index.html'))}")


def test_csv_counts_are_integers_and_blank_when_unknown(results: Path) -> None:
    """A column widened by a missing value (a transformer has no state size) stays integral."""
    passkey_unit(results, "pythia-160m", "none", 8192, [True] * 10)
    board = build(results, Options(), draw=False)
    board.main.loc[board.main["model"] == "pythia-160m", "state_size"] = math.nan
    rows = list(csv.DictReader(io.StringIO(to_csv(board))))
    assert {r["state_size"] for r in rows} == {"4718592", ""}
    assert {r["n_8K"] for r in rows} == {"10", ""}


def lm_eval_unit(
    root: Path, mitigation: str, task: str, length: int | None, scores: list[float]
) -> Path:
    """Documents as tasks.lm_eval_task writes them: RULER-style tasks log -1 for the lengths
    a document is not of (here 4096), tasks without lengths log acc."""
    from tasks.lm_eval_task import LmEvalTask

    params = {"length": length, "limit": None, "seed": 0, "task": task}
    rows = [
        {
            "lm_eval_task": task,
            "doc_id": i,
            "length": length,
            "targets": ["1234567"],
            "output": " 1234567" if score else " no",
            "metrics": {"4096": -1.0, str(length): score} if length else {"acc": score},
        }
        for i, score in enumerate(scores)
    ]
    return write_unit(root, "lm_eval", LmEvalTask.schema, "mamba2-130m", mitigation, params, rows)


def test_lm_eval_columns_and_figure_beside_passkey(results: Path, tmp_path: Path) -> None:
    lm_eval_unit(results, "none", "niah_single_1", 1024, [1.0, 1.0, 0.0, 1.0])
    lm_eval_unit(results, "none", "niah_single_1", 2048, [0.0, 1.0, 0.0, 0.0])
    lm_eval_unit(results, RRI, "niah_single_1", 1024, [1.0, 0.5])
    lm_eval_unit(results, "none", "arc_easy", None, [1.0, 0.0, 0.0])
    board = build(results, Options())
    none, rri = row(board.main, "mamba2-130m", "none"), row(board.main, "mamba2-130m", RRI)
    assert (none["lm_niah_single_1@1K"], none["lmn_niah_single_1@1K"]) == (0.75, 4)
    assert none["lm_niah_single_1@2K"] == 0.25  # RULER's -1 placeholders are not averaged
    assert (rri["lm_niah_single_1@1K"], rri["lmn_niah_single_1@1K"]) == (0.75, 2)
    assert math.isnan(rri["lm_niah_single_1@2K"])
    assert none["lm_arc_easy"] == pytest.approx(1 / 3)
    assert none["acc_1K"] == 1.0  # passkey beside them
    assert [p.name for p in board.overview] == ["passkey-by-length", "lm-eval-niah_single_1"]
    markdown = to_markdown(board)
    assert "| lm-eval arc_easy | lm-eval niah_single_1 1K | lm-eval niah_single_1 2K |" in markdown
    assert "0.75 (4)" in markdown and "0.25 (4)" in markdown
