"""lm-eval tasks as harness units (`harness run --tasks lm-eval:<name>`), offline, tiny models."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from harness.cli import main
from harness.lm_eval.tokenizer import saved_folder
from harness.models.tokenizer import byte_tokenizer
from harness.results import read_table

RULER = Path(lm_eval.__file__).parent / "tasks" / "ruler"
RUN = ["--models", "tiny-mamba2", "--mitigations", "rri", "--lengths", "512", "--samples", "2"]


def harness_run(out: Path, *extra: str) -> int:
    return main(["run", *RUN, "--tasks", "lm-eval:niah_single_1", "--out", str(out), *extra])


def through_harness_lm_eval() -> dict[int, str]:
    """What `harness lm-eval --model harness --model_args model=tiny-mamba2,mitigation=rri
    --tasks niah_single_1 --limit 2 --metadata {max_seq_lengths, tokenizer}` computes: lm-eval
    builds the model from its arguments and the task from its YAML with that metadata (the
    index holds only the RULER folder, to stay fast)."""
    model_args = {"model": "tiny-mamba2", "mitigation": "rri"}
    metadata = {"max_seq_lengths": [512], "tokenizer": str(saved_folder(byte_tokenizer()))}
    manager = TaskManager(
        include_path=str(RULER), include_defaults=False, metadata=model_args | metadata
    )
    found = simple_evaluate(
        model="harness",
        model_args=model_args,
        tasks=["niah_single_1"],
        task_manager=manager,
        limit=2,
        bootstrap_iters=0,
        log_samples=True,
    )
    assert found is not None
    return {s["doc_id"]: s["filtered_resps"][0] for s in found["samples"]["niah_single_1"]}


def test_unit_equals_harness_lm_eval_and_resumes(tmp_path: Path) -> None:
    import harness.lm_eval.model  # noqa: F401 - registers the `harness` model with lm-eval

    out = tmp_path / "out"
    assert harness_run(out) == 0
    rows = read_table(out, "lm_eval").to_pylist()
    assert len(rows) == 2
    assert {r["status"] for r in rows} == {"ok"}
    assert {(r["task"], r["length"], r["mitigation"]) for r in rows} == {
        ("lm-eval:niah_single_1", 512, "rri:a=0.9999:b=0.75")
    }
    for row in rows:
        assert row["lm_eval_version"] == lm_eval.__version__
        assert 400 < row["docs_total"] <= 500  # RULER's 500, less those it could not fit
        assert 256 < row["tokens"] <= 512  # the prompt (RULER keeps 128 tokens for the answer)
        assert row["targets"] and all(t.isdigit() for t in row["targets"])
        assert dict(row["metrics"])["512"] in (0.0, 1.0)
        assert len(row["task_hash"]) == 64
    assert {r["doc_id"]: r["output"] for r in rows} == through_harness_lm_eval()

    parts = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert harness_run(out) == 0  # resumes: nothing new
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == parts


def fails(args: list[str], out: Path, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    code = main(["run", "--models", "tiny-mamba2", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    assert not out.exists(), "nothing may be written"
    return err


def test_unknown_lm_eval_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(
        ["--tasks", "lm-eval:niah_singel_1"],
        tmp_path / "out",
        capsys,
        "unknown lm-eval task 'lm-eval:niah_singel_1'",
        "lm-eval:niah_single_1",
    )


@pytest.mark.parametrize(
    ("task", "needs"),
    [
        ("lm-eval:niah_single_2", "baber/paul_graham_essays"),  # RULER's essay haystack
        ("lm-eval:arc_easy", "allenai/ai2_arc"),  # a task with a hub dataset_path
    ],
)
def test_hub_data_refused_offline(
    task: str,
    needs: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    fails(["--tasks", task], tmp_path / "out", capsys, task, needs, "OFFLINE")


def test_group_expands_to_its_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lm-eval:ruler` stands for RULER's tasks; those that fetch data are refused offline."""
    fails(["--tasks", "lm-eval:ruler"], tmp_path / "out", capsys, "lm-eval:niah_single_2")


def test_units_per_length_or_one() -> None:
    """A task that takes lengths gets one unit per --lengths length (RULER's 4096 without);
    one that does not gets one unit with no length, which the runner orders as length 0."""
    from harness.lm_eval.catalog import TaskInfo
    from harness.runner import longest_prompt
    from tasks.base import TaskOptions
    from tasks.lm_eval_task import LmEvalTask

    options = TaskOptions(lengths=(512, 1024), samples=3, seed=5)
    ruler = LmEvalTask(options, TaskInfo("niah_single_1", takes_lengths=True, fetches=None))
    assert [u["length"] for u in ruler.units()] == [512, 1024]
    assert [u["length"] for u in LmEvalTask(TaskOptions(), ruler.info).units()] == [4096]
    plain = LmEvalTask(options, TaskInfo("arc_easy", takes_lengths=False, fetches="x"))
    assert plain.units() == [{"task": "arc_easy", "limit": 3, "seed": 5}]
    assert longest_prompt(plain.units()[0]) == 0
    assert plain.name == "lm-eval:arc_easy" and plain.table == "lm_eval"


def test_harness_passkey_through_lm_eval_equals_passkey_with_and_without_oprm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lm-eval's harness_passkey as a unit asks the prompts of `--tasks passkey` and, with
    oprm, its context is split as passkey splits it: the outputs are the same."""
    out = tmp_path / "out"
    models = ["--models", "tiny-mamba2", "--mitigations", "none,oprm:chunk=128"]
    args = [*models, "--lengths", "512", "--samples", "2", "--out", str(out)]
    assert main(["run", *args, "--tasks", "passkey,lm-eval:harness_passkey"]) == 0
    passkey = read_table(out, "passkey").to_pylist()
    expected = {(r["mitigation"], r["sample"]): r["prediction"] for r in passkey}
    rows = read_table(out, "lm_eval").to_pylist()
    assert {(r["mitigation"], r["doc_id"]): r["output"] for r in rows} == expected
    assert len(expected) == 4
    assert main(["run", *args, "--tasks", "lm-eval:harness_perplexity"]) == 2  # scores sequences
    assert "inference strategy" in capsys.readouterr().err


def test_transformer_unit_equals_lm_evals_hf_backend(neox_dir: Path) -> None:
    """For a transformers checkpoint, a unit generates what lm-eval's own `hf` backend
    generates for the same task and documents."""
    out = neox_dir.parent / "hf-unit"
    args = ["--models", str(neox_dir), "--tasks", "lm-eval:niah_single_1", "--lengths", "512"]
    assert main(["run", *args, "--samples", "2", "--out", str(out)]) == 0
    rows = read_table(out, "lm_eval").to_pylist()
    model_args = {"pretrained": str(neox_dir), "max_length": 1024, "device": "cpu"}
    manager = TaskManager(
        include_path=str(RULER),
        include_defaults=False,
        metadata=model_args | {"max_seq_lengths": [512]},
    )
    found = simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=["niah_single_1"],
        task_manager=manager,
        limit=2,
        bootstrap_iters=0,
        log_samples=True,
    )
    assert found is not None
    hf = {s["doc_id"]: s["filtered_resps"][0] for s in found["samples"]["niah_single_1"]}
    assert {r["doc_id"]: r["output"] for r in rows} == hf
    assert all(r["output"] for r in rows)  # something was generated to compare
