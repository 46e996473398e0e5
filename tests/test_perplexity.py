"""Loss by position: bucket arithmetic, chunk invariance, progress, non-finite losses, results."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from harness.cli import main
from harness.executors.driver import run_plan
from harness.mitigations.base import NoMitigation
from harness.models.base import LanguageModel, ModelInfo
from harness.models.loading import resolve as resolve_model
from harness.models.tiny import build_tiny_mamba2, build_tiny_pythia
from harness.plan import Plan, Unit
from harness.results import read_table
from harness.runner import RunConfig
from tasks.base import NonFiniteError, TaskOptions
from tasks.perplexity import Perplexity, buckets


def perplexity_task(lengths: tuple[int, ...], **settings: str) -> Perplexity:
    return Perplexity(TaskOptions(lengths=lengths, extra={"perplexity": settings}))


@pytest.fixture(scope="module")
def pythia() -> LanguageModel:
    return build_tiny_pythia("cpu", torch.float32, "auto")


@pytest.fixture(scope="module")
def mamba2() -> LanguageModel:
    return build_tiny_mamba2("cpu", torch.float32, "torch")


@pytest.mark.parametrize("length", [2, 3, 128, 129, 1000, 1025])
@pytest.mark.parametrize("size", [1, 7, 128, 4096])
def test_every_position_is_in_exactly_one_bucket(length: int, size: int) -> None:
    losses = torch.arange(1, length, dtype=torch.float32)  # loss at position p is p
    found = buckets(losses, size)
    assert sum(b.count for b in found) == length - 1
    assert found[0].start == (1 if size == 1 else 0) and found[-1].end == length  # [0, 1) is empty
    assert all(a.end == b.start for a, b in itertools.pairwise(found))
    for b in found:  # the mean of the positions max(start, 1)..end-1
        low = max(b.start, 1)
        assert b.count == b.end - low
        assert b.mean_loss == pytest.approx((low + b.end - 1) / 2)


def test_rows_count_each_target_once_and_flag_beyond_context(pythia: LanguageModel) -> None:
    task = perplexity_task((1500,), bucket="100", source="capital")
    seen: list[int] = []
    rows = task.run(pythia, task.units()[0], seen.append)
    assert sum(r["count"] for r in rows) == 1499
    assert sum(seen) == 1500 == task.cost(task.units()[0])
    assert [r["start"] for r in rows] == list(range(0, 1500, 100))
    assert all(r["beyond_context"] == (r["start"] >= 1024) for r in rows)
    assert all(r["perplexity"] == pytest.approx(math.exp(r["mean_loss"])) for r in rows)
    assert {(r["source"], r["split"], r["short_docs"], r["parts"]) for r in rows} == {
        ("capital", None, "skip", "capital")
    }
    inside, beyond = (
        math.exp(sum(r["mean_loss"] * r["count"] for r in group) / sum(r["count"] for r in group))
        for group in ([r for r in rows if not r["beyond_context"]],
                      [r for r in rows if r["beyond_context"]])
    )  # fmt: skip
    assert task.summary(rows) == f"{inside:.3g} in / {beyond:.3g} beyond"


@pytest.mark.parametrize("name", ["pythia", "mamba2"])
def test_chunk_size_does_not_change_the_losses(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(name)

    def means(chunk: int) -> list[float]:
        task = perplexity_task((300,), bucket="64", chunk=str(chunk), source="haystack")
        return [r["mean_loss"] for r in task.run(model, task.units()[0], lambda n: None)]

    whole = means(4096)
    for chunk in (37, 128):
        assert means(chunk) == pytest.approx(whole, abs=1e-5)


class NaNAfter(LanguageModel):
    """A fake model whose logits turn NaN from one position on."""

    info = ModelInfo("nan", "nan", "transformer", 0, None, 64, "test", "float32", "cpu", "none")
    eos_token_id = 0

    def __init__(self, position: int) -> None:
        self.position = position

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 8 for c in text]

    def decode(self, ids: list[int]) -> str:
        return ""

    def init_state(self, batch: int = 1) -> list[int]:
        return [0]

    def forward(self, ids: torch.Tensor, state: list[int]) -> tuple[torch.Tensor, list[int]]:
        positions = torch.arange(state[0], state[0] + ids.shape[1])
        logits = torch.zeros(1, ids.shape[1], 8)
        logits[0, positions >= self.position] = math.nan
        return logits, [state[0] + ids.shape[1]]


def test_non_finite_losses_raise(tmp_path: Path) -> None:
    task = perplexity_task((300,), chunk="64")
    with pytest.raises(NonFiniteError, match="position 201 of document 0"):
        task.run(NaNAfter(200), task.units()[0], lambda n: None)
    assert len(task.run(NaNAfter(1000), task.units()[0], lambda n: None)) == 3


def test_runner_writes_one_row_per_document_bucket(neox_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"story": ["x" * 100, "once upon a time " * 40, "", "y" * 900]}), data)
    task = perplexity_task(
        (300, 600), source=str(data), column="story", documents="3", short_docs="concat"
    )
    model = resolve_model(str(neox_dir))
    units = [Unit(task, model, NoMitigation(), p, "float32") for p in task.units()]
    out = tmp_path / "results"
    config = RunConfig(out=out, device="cpu", dtype="float32", backend="auto", seed=0)
    report = run_plan(Plan([model], [NoMitigation()], [task], units), config)
    assert not report.failed, report.failed
    rows = read_table(out, "perplexity").to_pylist()
    by_doc: dict[tuple[int, int], int] = {}
    for r in rows:
        by_doc[r["length"], r["document"]] = (
            by_doc.get((r["length"], r["document"]), 0) + r["count"]
        )
    assert by_doc == {(300, 0): 299, (300, 1): 299, (600, 0): 599, (600, 1): 599}
    first = [r for r in rows if r["length"] == 300 and r["document"] == 0]
    assert {(r["parts"], r["skipped"], r["short_docs"], r["split"]) for r in first} == {
        ("0,1", 0, "concat", "train")
    }
    assert {r["status"] for r in rows} == {"ok"} and {r["model"] for r in rows} == {"neox-tiny"}


def test_cli_options_reach_the_task(neox_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["run", "--models", str(neox_dir), "--tasks", "perplexity", "--lengths", "600"]
    options = ["--option", "perplexity.bucket=200", "--option", "perplexity.source=haystack"]
    assert main([*argv, *options, "--out", str(out)]) == 0
    rows = read_table(out, "perplexity").to_pylist()
    assert [(r["start"], r["count"]) for r in rows] == [(0, 199), (200, 200), (400, 200)]
    assert {r["source"] for r in rows} == {"haystack"}
    assert main([*argv, "--option", "perplexity.short_docs=pad", "--out", str(out)]) == 2
