"""State statistics on tiny Mamba-2 models whose decays are forced near 1 or made strong."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from harness.executors.driver import run_plan
from harness.mitigations.base import NoMitigation
from harness.models.base import ModelInfo
from harness.models.loading import resolve as resolve_model
from harness.models.mamba2 import Hooks, Mamba2, Mamba2Config, Mamba2LM
from harness.models.tokenizer import byte_tokenizer
from harness.plan import Plan, Unit
from harness.results import read_table
from harness.runner import RunConfig
from tasks.base import TaskOptions
from tasks.state_stats import StateStats

T_TRAIN, LENGTH, INTERVAL = 192, 640, 64


def tiny_mamba2(a_log: float, dt_bias: float) -> Mamba2LM:
    """Two layers of 4 heads; A = -exp(a_log) and dt = softplus(dt_raw + dt_bias) set by hand."""
    tokenizer = byte_tokenizer()
    config = Mamba2Config(
        d_model=32, n_layer=2, vocab_size=len(tokenizer), d_state=16, headdim=16, chunk_size=64
    )
    torch.manual_seed(0)
    module = Mamba2(config)
    with torch.no_grad():
        for block in module.layers:
            block.mixer.A_log.fill_(a_log)
            block.mixer.dt_bias.fill_(dt_bias)
    info = ModelInfo(
        "tiny", "tiny", "mamba2", 0, config.state_size, T_TRAIN, "test", "float32", "cpu", "torch"
    )
    return Mamba2LM(module, tokenizer, info, backend="torch")


@pytest.fixture(scope="module")
def stuffed() -> Mamba2LM:
    return tiny_mamba2(a_log=-20.0, dt_bias=0.0)  # alpha = exp(-dt e^-20) ~ 1: nothing decays


@pytest.fixture(scope="module")
def forgetful() -> Mamba2LM:
    return tiny_mamba2(a_log=math.log(4.0), dt_bias=2.0)  # alpha ~ exp(-8): the state saturates


def stats(model: Mamba2LM, length: int = LENGTH, **settings: str) -> list[dict]:
    task = StateStats(
        TaskOptions(
            lengths=(length,), extra={"state-stats": {"interval": str(INTERVAL), **settings}}
        )
    )
    seen: list[int] = []
    rows = task.run(model, task.units()[0], seen.append)
    assert sum(seen) == length
    return rows


def heads(rows: list[dict]) -> dict[tuple[int, int], list[dict]]:
    found: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in rows:
        found[r["layer"], r["head"]].append(r)
    return found


@pytest.fixture(scope="module")
def stuffed_rows(stuffed: Mamba2LM) -> list[dict]:
    return stats(stuffed)


def test_a_state_that_never_decays_grows_and_collapses(stuffed_rows: list[dict]) -> None:
    rows = stuffed_rows
    series = heads(rows)
    assert len(series) == 2 * 4
    for curve in series.values():
        assert [r["position"] for r in curve] == list(range(INTERVAL, LENGTH + 1, INTERVAL))
        at_train = next(r for r in curve if r["position"] == T_TRAIN)
        assert curve[-1]["norm"] > 3 * at_train["norm"]  # grows linearly
        assert {r["train_norm"] for r in curve} == {at_train["norm"]}
        assert {r["collapsed"] for r in curve} == {True}
        position = curve[0]["collapse_position"]
        assert T_TRAIN < position <= LENGTH
        first = next(r for r in curve if r["growth"] > 2.0)
        assert position == first["position"]
        assert all(r["retention"] == pytest.approx(1.0, abs=1e-4) for r in curve)
        assert all(r["alpha_mean"] == pytest.approx(1.0, abs=1e-6) for r in curve)
    assert StateStats.summary(None, rows) == "8/8 heads collapsed"  # type: ignore[arg-type]


def test_a_state_with_strong_decay_does_not(forgetful: Mamba2LM) -> None:
    rows = stats(forgetful)
    for curve in heads(rows).values():
        assert {r["collapsed"] for r in curve} == {False}
        assert {r["collapse_position"] for r in curve} == {None}
        assert max(r["growth"] for r in curve if r["beyond_context"]) < 1.1
        # constant input: the log retention falls by log(alpha) per token
        a, b = curve[1], curve[2]
        expected = INTERVAL * math.log(b["alpha_mean"])
        assert b["log_retention"] - a["log_retention"] == pytest.approx(expected, rel=1e-3)
        assert b["retention"] == pytest.approx(math.exp(b["log_retention"]), abs=1e-300)


def test_growth_threshold_is_an_option(stuffed: Mamba2LM) -> None:
    rows = stats(stuffed, growth="100")
    assert {r["collapsed"] for r in rows} == {False}
    assert {r["growth_threshold"] for r in rows} == {100.0}


def test_no_verdict_when_the_prompt_stays_inside_the_training_length(stuffed: Mamba2LM) -> None:
    rows = stats(stuffed, length=T_TRAIN)
    assert {r["collapsed"] for r in rows} == {None}
    assert not any(r["beyond_context"] for r in rows)


def test_statistics_do_not_depend_on_the_chunk(forgetful: Mamba2LM) -> None:
    whole = stats(forgetful, length=512, chunk="4096")
    pieces = stats(forgetful, length=512, chunk="100")  # rounded up to 128
    for key in ("norm", "var", "outlier_share", "alpha_mean", "dt_mean", "log_retention"):
        assert [r[key] for r in pieces] == pytest.approx([r[key] for r in whole], rel=1e-4)


def test_observer_chains_with_a_mitigation_and_restores_it(stuffed: Mamba2LM) -> None:
    clipped = {"calls": 0}

    def clip(layer: int, h: torch.Tensor, position: int) -> torch.Tensor:
        clipped["calls"] += 1
        norms = torch.linalg.vector_norm(h.flatten(2), dim=-1)[..., None, None]
        return h * torch.clamp(0.01 / norms, max=1.0)

    mitigation = Hooks(transform_state=clip, interval=32)
    stuffed.hooks = mitigation
    try:
        rows = stats(stuffed)
    finally:
        stuffed.hooks = None
    assert clipped["calls"] == 2 * LENGTH // 32  # the mitigation ran at its own interval
    assert max(r["norm"] for r in rows) <= 0.01 + 1e-6  # the observed state is the clipped one
    assert {r["collapsed"] for r in rows} == {False}
    positions = [r["position"] for r in heads(rows)[0, 0]]
    assert positions == list(range(INTERVAL, LENGTH + 1, INTERVAL))  # the task's interval


def test_hooks_are_restored_after_a_failure(stuffed: Mamba2LM) -> None:
    mitigation = Hooks(scans={0: lambda inputs, state: (inputs.x, state)})
    stuffed.hooks = mitigation
    try:
        with pytest.raises(ValueError, match="replaces the scan"):
            stats(stuffed)
        assert stuffed.hooks is mitigation
    finally:
        stuffed.hooks = None


def test_runner_writes_the_rows(tmp_path: Path) -> None:
    task = StateStats(TaskOptions(lengths=(256,), extra={"state-stats": {"interval": "64"}}))
    model = resolve_model("tiny-mamba2")
    units = [Unit(task, model, NoMitigation(), p, "float32") for p in task.units()]
    out = tmp_path / "results"
    config = RunConfig(out=out, device="cpu", dtype="float32", backend="auto", seed=0)
    report = run_plan(Plan([model], [NoMitigation()], [task], units), config)
    assert not report.failed, report.failed
    rows = read_table(out, "state_stats").to_pylist()
    assert len(rows) == 2 * 8 * 4  # layers x heads x positions of tiny-mamba2
    assert {r["collapsed"] for r in rows} == {None}  # 256 tokens stay inside its 1024
