"""state-capacity: one unit on a scripted model with known answers; fits over a results table."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from harness.executors.driver import run_plan
from harness.mitigations.base import NoMitigation
from harness.models.base import LanguageModel, ModelInfo
from harness.models.loading import resolve as resolve_model
from harness.models.tokenizer import byte_tokenizer
from harness.plan import Plan, Unit
from harness.results import read_table
from harness.runner import RunConfig
from tasks.base import TaskOptions
from tasks.detect import PAPER_FORGET, PAPER_RECALL, PAPER_STATE_UNIT
from tasks.passkey import SUFFIX
from tasks.state_capacity import StateCapacity

TOKENIZER = byte_tokenizer()
VOCAB = len(TOKENIZER)
KEY = re.compile(r"The passkey is (\d{5})\.")


@dataclass
class History:
    ids: list[int]

    def clone(self) -> History:
        return History(list(self.ids))


class Scripted(LanguageModel):
    """Loss log(vocab) before `collapse`, ~20 nats from there; retrieves keys up to `recall`."""

    eos_token_id = TOKENIZER.eos_token_id

    def __init__(self, collapse: int, recall: int, train_context: int) -> None:
        self.collapse, self.recall = collapse, recall
        self.info = ModelInfo(
            "scripted", "scripted", "mamba2", 0, 4_718_592, train_context, "test", "float32",
            "cpu", "none",
        )  # fmt: skip

    def encode(self, text: str) -> list[int]:
        return TOKENIZER.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return TOKENIZER.decode(ids)

    def init_state(self, batch: int = 1) -> History:
        return History([])

    def forward(self, ids: torch.Tensor, state: History) -> tuple[torch.Tensor, History]:
        history = state.ids + ids[0].tolist()
        positions = torch.arange(len(state.ids), len(history))
        logits = torch.zeros(1, len(positions), VOCAB)
        logits[0, positions >= self.collapse, 0] = 20.0  # confidently wrong
        answer = self._next_answer_token(history)
        if answer is not None:
            logits[0, -1] = 0.0
            logits[0, -1, answer] = 20.0
        return logits, History(history)

    def _next_answer_token(self, history: list[int]) -> int | None:
        """The next token of " <key>" when the history ends inside the answer."""
        text = self.decode(history)
        key = KEY.search(text)
        if key is None or SUFFIX not in text:
            return None
        asked = text.rindex(SUFFIX) + len(SUFFIX)
        if len(self.encode(text[:asked])) > self.recall:
            return None
        given, answer = text[asked:], " " + key.group(1)
        if not answer.startswith(given) or given == answer:
            return None
        return self.encode(answer[len(given)])[0]


def capacity(lengths: tuple[int, ...], **settings: str) -> StateCapacity:
    defaults = {"loss_length": "4096", "bucket": "128", "smoothing": "256", "window": "512"}
    options = TaskOptions(lengths=lengths, samples=2, extra={"state-capacity": defaults | settings})
    return StateCapacity(options)


def test_one_unit_finds_the_known_collapse_and_recall_lengths() -> None:
    task = capacity((512, 1024, 2048))
    [params] = task.units()
    seen: list[int] = []
    [row] = task.run(Scripted(collapse=2048, recall=1500, train_context=1024), params, seen.append)
    assert row["collapse_length"] == 2048 and row["collapse_searched_to"] == 4096
    assert row["in_context_loss"] == pytest.approx(math.log(VOCAB), abs=1e-4)
    assert row["recall_lengths"] == [512, 1024, 2048]
    assert row["recall_accuracy"] == [1.0, 1.0, 0.0]
    assert row["recall_length"] == 1024
    assert len(row["loss_starts"]) == len(row["loss_means"]) == 4096 // 128
    assert row["n_s"] == pytest.approx(4.83, abs=0.01)
    assert row["paper_forget_k"] == pytest.approx(5.172 * row["n_s"] - 4.469)
    assert sum(seen) <= task.cost(params)
    assert task.summary([row]) == "collapse at 2048; recall length 1024"


def test_no_collapse_and_no_recall_are_nulls() -> None:
    task = capacity((512,), recall_threshold="1.0")
    [row] = task.run(Scripted(10**9, 0, 1024), task.units()[0], lambda n: None)
    assert row["collapse_length"] is None and row["recall_length"] is None
    assert task.summary([row]) == "no collapse up to 4096; recall length none"


def test_loss_length_must_pass_the_training_length() -> None:
    task = capacity((512,), loss_length="1024")
    with pytest.raises(ValueError, match="does not go past the training length"):
        task.run(Scripted(10**9, 0, 1024), task.units()[0], lambda n: None)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"recall_threshold=1.5 must be in \(0, 1\]"):
        capacity((512,), recall_threshold="1.5")
    with pytest.raises(ValueError, match=r"margin=-1.0 must be > 0"):
        capacity((512,), margin="-1")


SIZES = [1.1, 1.6, 2.4, 4.8, 12.9]  # the paper's table, M elements as the paper counts them


def model_row(name: str, n_s: float | None, mitigation: str = "none", **values: object) -> dict:
    state_size = round(n_s * PAPER_STATE_UNIT) if n_s is not None else None
    return {
        "model": name,
        "mitigation": mitigation,
        "status": "ok",
        "kind": "model",
        "state_size": state_size,
        "train_context": 2048,
        "collapse_length": None,
        "recall_length": None,
    } | values


def paper_table() -> pa.Table:
    a, b = PAPER_FORGET.values()
    ra, rb, rc = PAPER_RECALL.values()
    rows = []
    for i, n_s in enumerate(SIZES):
        forget = round((a * n_s + b) * 1024)
        recall = round((rb * (ra**n_s - 1) + rc) * 1024)
        rows += [
            model_row(f"m{i}", n_s, train_context=forget, recall_length=recall),
            model_row(f"m{i}-long", n_s, train_context=2 * forget, recall_length=recall // 2),
            model_row(f"m{i}-short", n_s, train_context=forget // 2, collapse_length=forget),
        ]
    rows += [
        model_row("pythia", None, recall_length=4096),
        model_row("failed", 3.0, status="error", recall_length=10**6),
        model_row("m0", 1.1, mitigation="rri", recall_length=2048, collapse_length=4096),
        model_row("m3", 4.8, mitigation="rri", recall_length=8192, collapse_length=4096),
    ]
    return pa.Table.from_pylist(rows)


def test_fits_over_a_results_table_recover_the_paper_coefficients() -> None:
    fits = StateCapacity.combine(paper_table())
    assert sorted(fits) == ["none", "rri"]
    forget, recall = fits["none"]
    assert forget["kind"] == "fit-forget" and recall["kind"] == "fit-recall"
    assert forget["fit_points"] == recall["fit_points"] == 5
    assert forget["fit_models"] == "m0,m1,m2,m3,m4"
    assert forget["fit_a"] == pytest.approx(PAPER_FORGET["a"], rel=1e-3)
    assert forget["fit_b"] == pytest.approx(PAPER_FORGET["b"], rel=1e-3)
    assert recall["fit_a"] == pytest.approx(PAPER_RECALL["a"], rel=1e-3)
    assert recall["fit_b"] == pytest.approx(PAPER_RECALL["b"], rel=1e-2)
    assert forget["fit_r2"] == pytest.approx(1.0) and recall["fit_r2"] == pytest.approx(1.0)
    assert (recall["paper_a"], recall["paper_b"], recall["paper_c"]) == (1.365, 4.756, -0.742)


def test_a_fit_with_too_few_state_sizes_says_why() -> None:
    forget, recall = StateCapacity.combine(paper_table())["rri"]
    assert forget["fit_a"] is None and "got 0" in forget["fit_note"]  # every rri model collapsed
    assert recall["fit_points"] == 2 and recall["fit_a"] is None
    assert "needs at least 3 distinct state sizes; got 2" in recall["fit_note"]


def test_fit_rows_fit_the_table_schema() -> None:
    rows = [r for found in StateCapacity.combine(paper_table()).values() for r in found]
    table = pa.Table.from_pylist(rows, schema=StateCapacity.schema)
    assert table.num_rows == 4


def test_runner_writes_the_row_and_combine_reads_it_back(neox_dir: Path, tmp_path: Path) -> None:
    task = capacity((300,), loss_length="1024", bucket="64", window="128", smoothing="64")
    model = resolve_model(str(neox_dir))
    [params] = task.units()
    out = tmp_path / "results"
    config = RunConfig(out=out, device="cpu", dtype="float32", backend="auto", seed=0)
    units = [Unit(task, model, NoMitigation(), params, "float32")]
    report = run_plan(Plan([model], [NoMitigation()], [task], units), config)
    assert not report.failed, report.failed
    table = read_table(out, "state_capacity")
    [row] = table.to_pylist()
    assert row["kind"] == "model" and row["train_context"] == 512 and row["n_s"] is None
    assert row["collapse_searched_to"] == 1024 and len(row["loss_means"]) == 16
    assert StateCapacity.combine(table) == {}  # a transformer has no state size to fit
