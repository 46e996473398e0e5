"""`harness export`: lm-eval's results JSON and Every Eval Ever records from a results folder,
validated against each format's own schema (lm-eval's EvalResults, Every Eval Ever's JSON
schema) and read back."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pytest
from lm_eval.result_schema import EvalResults
from lm_eval.utils import make_table
from pydantic import TypeAdapter

from harness.cli import main
from harness.leaderboard.build import build
from harness.leaderboard.options import Options
from harness.results import COMMON, part_path, write_part
from tasks.lm_eval_task import LmEvalTask
from tasks.passkey import Passkey

SCHEMA = Path(__file__).parent / "data" / "every_eval_ever" / "eval.schema.json"
DAY = datetime(2026, 5, 1, 12, tzinfo=UTC)
RRI = "rri:a=0.9999:b=0.75"


def write(root: Path, table: str, schema: pa.Schema, mitigation: str, params: dict, rows: list):
    """One unit's part with the runner's common columns."""
    unit_id = hashlib.sha256(json.dumps([table, mitigation, params]).encode()).hexdigest()[:16]
    common = {
        "unit_id": unit_id,
        "run_id": "20260501T120000Z-aaaaaa",
        "task": table,
        "model_ref": "mamba2-bytes-320",
        "model_id": "55f107430e3f",
        "family": "mamba2",
        "params": 140016,
        "state_size": 65536,
        "train_context": 320,
        "mitigation_name": mitigation.partition(":")[0],
        "status": "ok",
        "message": "",
        "unit_params": json.dumps(params, sort_keys=True),
        "seed": 0,
        "device": "cpu",
        "dtype": "float32",
        "backend": "torch",
        "harness_version": "0.1.0",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "created_at": DAY,
    }
    path = part_path(root, table, "mamba2-bytes-320", mitigation, unit_id)
    write_part(path, [{**common, **r} for r in rows], pa.unify_schemas([COMMON, schema]))


def niah(root: Path, mitigation: str, length: int, scores: list[float]) -> None:
    config = {
        "task": "niah_single_1",
        "metric_list": [{"metric": "4096", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    params = {"length": length, "limit": len(scores), "seed": 0, "task": "niah_single_1"}
    rows = [
        {
            "lm_eval_task": "niah_single_1",
            "lm_eval_version": "0.4.13",
            "task_version": "1.0",
            "task_config": json.dumps(config),
            "docs_total": 480,
            "doc_id": i,
            "doc_hash": f"d{i}",
            "prompt_hash": f"p{i}",
            "target_hash": f"t{i}",
            "length": length,
            "tokens": length - 150,
            "targets": ["1234567"],
            "output": " 1234567" if s else " no",
            "metrics": {"4096": -1.0, str(length): s},
        }
        for i, s in enumerate(scores)
    ]
    write(root, "lm_eval", LmEvalTask.schema, mitigation, params, rows)


def passkey(root: Path, mitigation: str, length: int, correct: list[bool]) -> None:
    params = {"depths": None, "length": length, "samples": len(correct), "seed": 0}
    rows = [
        {"length": length, "tokens": length, "depth": 0.5, "sample": i, "key": "12345",
         "prediction": "12345" if ok else "9", "correct": ok, "key_logprob": -1.0,
         "beyond_context": True}
        for i, ok in enumerate(correct)
    ]  # fmt: skip
    write(root, "passkey", Passkey.schema, mitigation, params, rows)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    niah(root, "none", 1024, [1.0, 0.0, 1.0, 1.0])
    niah(root, "none", 2048, [0.0, 0.0, 1.0, 0.0])
    niah(root, RRI, 1024, [1.0, 1.0])
    passkey(root, "none", 1024, [True, False])
    passkey(root, RRI, 1024, [True, True])
    return root


def export(results: Path, kind: str, out: Path) -> list[dict[str, Any]]:
    assert main(["export", "--results", str(results), "--format", kind, "--out", str(out)]) == 0
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))]


def leaderboard_scores(results: Path) -> dict[tuple[str, str], float]:
    """(mitigation, column) -> the leaderboard's numbers, computed on their own path."""
    main_table = build(results, Options(), draw=False).main
    found = {}
    for _, row in main_table.iterrows():
        for column in ("lm_niah_single_1@1K", "lm_niah_single_1@2K", "acc_1K"):
            if column in row and row[column] == row[column]:
                found[row["mitigation"], column] = float(row[column])
    return found


def test_lm_eval_format_validates_and_reads_back(results: Path, tmp_path: Path) -> None:
    documents = export(results, "lm-eval", tmp_path / "lm")
    assert len(documents) == 2  # one per (model, mitigation)
    adapter = TypeAdapter(EvalResults)
    board = leaderboard_scores(results)
    for document in documents:
        # lm-eval publishes no JSON schema of its results file; its TypedDict EvalResults is
        # one, except that it types a config's values as str | bool | None while lm-eval's own
        # configs (and these) hold dicts and lists (generation_kwargs, metric_list, metadata)
        adapter.validate_python({**document, "configs": {}})
        assert all(isinstance(c, dict) for c in document["configs"].values())
        assert make_table(document)  # lm-eval's table of a results file reads it
        mitigation = document["config"]["model_args"].split("mitigation=")[1].split(",")[0]
        niah = document["results"]["niah_single_1"]
        assert niah["1024,none"] == board[mitigation, "lm_niah_single_1@1K"]
        assert "4096,none" not in niah  # RULER's placeholder, no document of that length
        assert document["results"]["harness_passkey"]["1024,none"] == board[mitigation, "acc_1K"]
        assert document["config"]["model"] == "harness"
        assert len(document["task_hashes"]["niah_single_1"]) == 64
    none = next(d for d in documents if "mitigation=none" in d["config"]["model_args"])
    assert none["results"]["niah_single_1"]["2048,none"] == 0.25
    assert none["n-samples"]["niah_single_1"] == {"original": 960, "effective": 8}
    assert none["configs"]["niah_single_1"]["metadata"]["max_seq_lengths"] == [1024, 2048]


def test_every_eval_ever_records_validate_and_read_back(results: Path, tmp_path: Path) -> None:
    documents = export(results, "every-eval-ever", tmp_path / "eee")
    assert sorted(d["eval_library"]["name"] for d in documents) == [
        "harness", "harness", "lm_eval", "lm_eval"
    ]  # fmt: skip
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    board = leaderboard_scores(results)
    for document in documents:
        errors = [e.message for e in validator.iter_errors(document)]
        assert not errors, errors
        mitigation = document["model_info"]["additional_details"]["mitigation"]
        for result in document["evaluation_results"]:
            length = result["metric_config"].get("metric_parameters", {}).get("length")
            column = {
                ("niah_single_1 @ 1024 tokens", 1024): "lm_niah_single_1@1K",
                ("niah_single_1 @ 2048 tokens", 2048): "lm_niah_single_1@2K",
                ("harness_passkey @ 1024 tokens", 1024): "acc_1K",
            }.get((result["evaluation_name"], length))
            if column is not None:
                assert result["score_details"]["score"] == board[mitigation, column]


def test_nothing_to_export_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["export", "--results", str(tmp_path / "none"), "--format", "lm-eval",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()
