"""The leaderboard from synthetic result parts written exactly as the runner writes them."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from harness.leaderboard.build import build
from harness.leaderboard.cli import add_arguments, command
from harness.leaderboard.options import Options
from harness.leaderboard.render import to_markdown
from harness.leaderboard.tables import effective_length, head_norms, heads_to_draw
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
        elif tag == "img" and (values.get("src") or "").startswith("data:image/png;base64,"):
            self.images += 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._cell:
            self._cell.append(data)
            self.first_cells.append(data)


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
    assert counter.images == 3  # mamba2-130m heatmap and loss curves, pythia-160m heatmap
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
