"""The lm-eval integration: packaged tasks, the `harness` model, the console entry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

from harness.lm_eval import include_path
from harness.lm_eval.console import main as console_main
from harness.lm_eval.console import register, with_include_path
from harness.lm_eval.loss_by_position import documents as lbp_documents
from harness.lm_eval.metadata import MetadataError
from harness.lm_eval.model import HarnessLM, ModelArgsError, SamplingNotSupported
from harness.lm_eval.passkey import documents
from harness.lm_eval.tokenizer import TokenizerNotGiven
from harness.models.base import LanguageModel, ModelInfo
from harness.models.loading import load, resolve
from tasks.passkey import EXTRA_NEW_TOKENS, build_prompt, samples_at
from tasks.perplexity import buckets
from tasks.sources import SHIPPED

LENGTHS = [512, 600]
PASSKEY = {"max_seq_lengths": LENGTHS, "samples": 1, "seed": 7}
TASKS = ["harness_passkey", "harness_perplexity", "harness_loss_by_position"]


def evaluate(model: Any, model_args: dict[str, Any], tasks: list[str], metadata: dict) -> dict:
    """What the lm-eval CLI does: task metadata = the model's arguments + --metadata."""
    manager = TaskManager(
        include_path=str(include_path()), include_defaults=False, metadata=model_args | metadata
    )
    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=True,
    )


def assert_harness_run_prompts(samples: list[dict], encode: Any) -> None:
    """Each prompt is the one `harness run --tasks passkey` builds for that model and seed."""
    expected = {
        (s.length, s.index): (build_prompt(encode, s.length, s.depth, s.key), s.key)
        for n in LENGTHS
        for s in samples_at(n, PASSKEY["samples"], None, PASSKEY["seed"])
    }
    seen = set()
    for sample in samples:
        doc = sample["doc"]
        (prompt, gen_kwargs), *_ = sample["arguments"]
        assert (prompt, doc["key"]) == expected[doc["length"], doc["sample"]]
        assert gen_kwargs["max_gen_toks"] == len(encode(" " + doc["key"])) + EXTRA_NEW_TOKENS
        seen.add((doc["length"], doc["sample"]))
    assert seen == set(expected)


def assert_per_length_metrics(results: dict) -> None:
    metrics = results["results"]["harness_passkey"]
    for name in ["acc", *(str(n) for n in LENGTHS)]:  # lm-eval's RULER convention
        assert 0.0 <= metrics[f"{name},none"] <= 1.0


def test_include_path_holds_the_tasks() -> None:
    manager = TaskManager(include_path=str(include_path()), include_defaults=False)
    assert set(TASKS) <= set(manager.all_tasks)
    assert all((include_path() / f"{name}.yaml").is_file() for name in TASKS)


def test_passkey_through_lm_eval_hf_backend(neox_dir: Path) -> None:
    args = {"pretrained": str(neox_dir), "max_length": 1024, "device": "cpu"}
    results = evaluate("hf", args, ["harness_passkey"], PASSKEY)
    assert_per_length_metrics(results)
    harness_model = load(resolve(str(neox_dir)), "cpu", torch.float32, "auto")
    assert_harness_run_prompts(results["samples"]["harness_passkey"], harness_model.encode)


def test_passkey_through_harness_model() -> None:
    model = HarnessLM(model="tiny-pythia", device="cpu")
    results = evaluate(model, {"model": "tiny-pythia"}, ["harness_passkey"], PASSKEY)
    assert_per_length_metrics(results)
    assert_harness_run_prompts(results["samples"]["harness_passkey"], model.lm.encode)


def test_tiny_mamba2_with_a_mitigation() -> None:
    if not hasattr(pytest.importorskip("harness.models.mamba2"), "Mamba2LM"):
        pytest.skip("harness.models.mamba2 has no Mamba2LM yet")
    args = {"model": "tiny-mamba2", "mitigation": "rri", "device": "cpu"}
    results = evaluate("harness", args, ["harness_passkey"], {**PASSKEY, "max_seq_lengths": [512]})
    assert 0.0 <= results["results"]["harness_passkey"]["512,none"] <= 1.0


def rolling(model: HarnessLM, text: str) -> float:
    request = Instance("loglikelihood_rolling", {}, (text,), 0, ("t", 0, 1))
    return model.loglikelihood_rolling([request])[0]


def test_loglikelihood_rolling_is_the_sum_of_token_losses() -> None:
    model = HarnessLM(model="tiny-pythia", device="cpu", chunk=64)
    text = "The grass is green. The sky is blue. " * 12  # 444 tokens: 7 chunks of 64
    ids = [model.lm.eos_token_id, *model.lm.encode(text)]
    assert rolling(model, text) == pytest.approx(-float(model.lm.token_losses(ids).sum()), 1e-4)


def assert_buckets_are_harness_runs(results: dict, lm: LanguageModel, bucket: int) -> None:
    """Each loss@[s-e) of harness_loss_by_position is the bucket mean `harness run --tasks
    perplexity` computes for the same document (tasks.perplexity.buckets of token_losses)."""
    metrics = results["results"]["harness_loss_by_position"]
    for sample in results["samples"]["harness_loss_by_position"]:
        ids = lm.encode(sample["doc"]["text"])
        for b in buckets(lm.token_losses(ids), bucket):
            assert metrics[f"loss@[{b.start}-{b.end}),none"] == pytest.approx(b.mean_loss, 1e-4)


def assert_rolling_adds_the_end_of_text(results: dict, lm: LanguageModel) -> None:
    """harness_perplexity scores every token after lm-eval's end-of-text prefix."""
    for sample in results["samples"]["harness_perplexity"]:
        ids = [lm.eos_token_id, *lm.encode(sample["doc"]["text"])]
        expected = -float(lm.token_losses(ids).sum())
        assert sample["resps"][0][0] == pytest.approx(expected, 1e-4)


def test_loss_tasks_read_the_shipped_text_by_default() -> None:
    model = HarnessLM(model="tiny-pythia", device="cpu")
    metadata = {"max_seq_lengths": [297], "bucket": 99}
    results = evaluate(model, {"model": "tiny-pythia"}, TASKS[1:], metadata)
    (doc,) = [s["doc"] for s in results["samples"]["harness_perplexity"]]
    assert SHIPPED["sonnets"].read_text().startswith(doc["text"]) and doc["tokens"] == 297
    assert_buckets_are_harness_runs(results, model.lm, 99)
    assert_rolling_adds_the_end_of_text(results, model.lm)
    perplexity = results["results"]["harness_perplexity"]
    names = ["word_perplexity@297", "byte_perplexity@297", "bits_per_byte@297", "297"]
    assert all(math.isfinite(perplexity[f"{name},none"]) for name in names)
    assert perplexity["297,none"] == perplexity["loss,none"]  # the loss of its one document


def test_loss_tasks_through_lm_eval_hf_backend(neox_dir: Path) -> None:
    args = {"pretrained": str(neox_dir), "max_length": 1024, "device": "cpu"}
    metadata = {"max_seq_lengths": [256, 300], "bucket": 100}
    results = evaluate("hf", args, TASKS[1:], metadata)
    lm = load(resolve(str(neox_dir)), "cpu", torch.float32, "auto")
    assert_buckets_are_harness_runs(results, lm, 100)
    assert_rolling_adds_the_end_of_text(results, lm)


def test_whitespace_prompts_give_infinite_word_perplexity_or_a_clear_refusal() -> None:
    model = HarnessLM(model="tiny-pythia", device="cpu")
    metadata = {"max_seq_lengths": [1024], "source": "newlines"}
    results = evaluate(model, {"model": "tiny-pythia"}, ["harness_perplexity"], metadata)
    perplexity = results["results"]["harness_perplexity"]
    assert perplexity["word_perplexity@1024,none"] == math.inf  # 1024 newlines: no words
    assert math.isfinite(perplexity["byte_perplexity@1024,none"])
    with pytest.raises(MetadataError, match="only whitespace"):
        lbp_documents(model="tiny-pythia", max_seq_lengths=[256], source="newlines")


@dataclass
class Nothing:
    def clone(self) -> Nothing:
        return self


class Counting(LanguageModel):
    """Bytes, certain that end of text is followed by 'a', 'a' by 'b', ..., 'z' by end of text."""

    eos_token_id = 256

    def __init__(self) -> None:
        self.info = ModelInfo("counting", "counting", "transformer", 0, None, 8, "-", "", "cpu", "")

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode()

    def init_state(self, batch: int = 1) -> Nothing:
        return Nothing()

    def forward(self, ids: torch.Tensor, state: Nothing) -> tuple[torch.Tensor, Nothing]:
        following = torch.where(ids >= ord("z"), self.eos_token_id, ids + 1)
        following[ids == self.eos_token_id] = ord("a")
        return 20.0 * torch.nn.functional.one_hot(following, 257).float(), state


def generate(model: HarnessLM, context: str, **gen_kwargs: Any) -> str:
    return model.generate_until([Instance("generate_until", {}, (context, gen_kwargs), 0)])[0]


def test_generate_until_stops_at_until_max_tokens_and_end_of_text() -> None:
    model = HarnessLM(model=Counting(), chunk=3)
    assert generate(model, "a", until=["ef", "x"], max_gen_toks=20) == "bcd"
    assert generate(model, "a", until="e", max_gen_toks=20) == "bcd"
    assert generate(model, "a", until=[], max_gen_toks=5) == "bcdef"
    assert generate(model, "u", until=[], max_gen_toks=20) == "vwxyz"
    with pytest.raises(SamplingNotSupported, match="greedily"):
        generate(model, "a", until=[], do_sample=True)


def test_loglikelihood_streams_a_long_continuation_and_flags_greedy() -> None:
    model = HarnessLM(model=Counting(), chunk=3)
    requests = [
        Instance("loglikelihood", {}, (context, continuation), 0)
        for context, continuation in [("ab", "cdefghij"), ("ab", "cdefghiX"), ("", "abc")]
    ]
    (greedy_ll, greedy), (_, not_greedy), (_, from_nothing) = model.loglikelihood(requests)
    assert greedy and not not_greedy and from_nothing
    assert greedy_ll == pytest.approx(
        8 * torch.log_softmax(torch.tensor([20.0] + [0.0] * 256), 0)[0]
    )


def test_a_missing_hf_max_length_is_warned_about(
    neox_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    documents(pretrained=str(neox_dir), max_seq_lengths=[300], samples=1)
    assert "pass max_length=" in caplog.text


def test_wrong_settings_are_refused_with_the_fix() -> None:
    with pytest.raises(ModelArgsError, match="does not apply to tiny-pythia"):
        HarnessLM(model="tiny-pythia", mitigation="rri")
    with pytest.raises(ModelArgsError, match="float32"):
        HarnessLM(model="tiny-pythia", dtype="float16")
    with pytest.raises(MetadataError, match="max_seq_lengths"):
        documents(model="tiny-pythia", max_seq_lengths=["4q"])
    with pytest.raises(TokenizerNotGiven, match="--metadata"):
        documents(max_seq_lengths=[512])
    with pytest.raises(MetadataError, match="pass max_length=5"):
        documents(model="tiny-pythia", max_seq_lengths=[512], samples=1, max_length=512)


def test_model_args_win_over_lm_eval_settings() -> None:
    given = {"device": "cuda:0", "batch_size": 1, "max_batch_size": None}
    model = HarnessLM.create_from_arg_string("model=tiny-pythia,device=cpu,chunk=64", given)
    assert (model.device.type, model.chunk, model.mitigation.spec) == ("cpu", 64, "none")


def test_console_registers_the_model_beside_lm_evals_own() -> None:
    register()
    assert get_model("harness") is HarnessLM
    assert get_model("hf").__name__ == "HFLM"
    added = with_include_path(["--model", "harness", "--tasks", "harness_passkey"])
    assert added[-2:] == ["--include_path", str(include_path())]
    assert with_include_path(["--tasks", "x", "--include_path", "d"])[-1] == "d"
    assert with_include_path(["ls", "models"]) == ["ls", "models"]


def test_console_ends_an_unusable_setting_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["harness-lm-eval"])
    metadata = '{"max_seq_lengths": [256], "source": "newlines"}'
    args = ["--model", "harness", "--model_args", "model=tiny-pythia,device=cpu"]
    with pytest.raises(SystemExit) as exit_info:
        console_main([*args, "--tasks", "harness_loss_by_position", "--metadata", metadata])
    assert exit_info.value.code == 2
    assert "harness lm-eval: error: harness_loss_by_position" in capsys.readouterr().err
