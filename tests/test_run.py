"""`harness run` end to end on a tiny local GPT-NeoX: parts, resume, failure isolation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from harness.cli import main
from harness.results import read_table
from tasks.base import NonFiniteError
from tasks.passkey import Passkey

PASSKEY_COLUMNS = {
    "length",
    "tokens",
    "depth",
    "sample",
    "key",
    "prediction",
    "correct",
    "key_logprob",
    "beyond_context",
    "model",
    "mitigation",
    "status",
    "unit_id",
}


def files(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def run(neox_dir: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "run",
            "--models",
            str(neox_dir),
            "--tasks",
            "passkey",
            "--lengths",
            "512,600",
            "--samples",
            "3",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_run_writes_parts_that_read_as_one_table(neox_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert run(neox_dir, out) == 0
    [folder] = out.glob("passkey/model=neox-tiny@*")
    parts = sorted(folder.glob("mitigation=none/part-*.parquet"))
    assert len(parts) == 2
    table = pq.read_table(out / "passkey").to_pylist()
    assert set(table[0]) >= PASSKEY_COLUMNS
    assert len(table) == 6 and {r["status"] for r in table} == {"ok"}
    assert sorted({r["length"] for r in table}) == [512, 600]
    assert all(r["length"] - 3 <= r["tokens"] <= r["length"] for r in table)
    assert all(r["beyond_context"] == (r["tokens"] > 512) for r in table)
    [model_id] = {r["model_id"] for r in table}
    assert {r["model"] for r in table} == {f"neox-tiny@{model_id[:8]}"} == {folder.name[6:]}
    manifest = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert manifest["config"]["dtype"] == "float32" and manifest["versions"]["torch"]
    assert manifest["units"]["run"] == 2 and manifest["wall_time_s"] > 0
    assert manifest["config"]["models"][0]["model_id"] == model_id


def test_rerun_of_a_finished_command_writes_nothing(neox_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert run(neox_dir, out) == 0
    before = files(out)
    assert run(neox_dir, out) == 0
    assert files(out) == before


def test_interrupted_run_resumes_without_duplicates(
    neox_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "results"
    original = Passkey.run
    calls = []

    def interrupted(self, model, params, progress):
        calls.append(params["length"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, model, params, progress)

    monkeypatch.setattr(Passkey, "run", interrupted)
    assert run(neox_dir, out) == 130
    interrupted = "interrupted; 1 units done, rerun the same command to resume"
    assert interrupted in " ".join(capsys.readouterr().err.split())
    assert len(list(out.rglob("part-*.parquet"))) == 1
    monkeypatch.setattr(Passkey, "run", original)
    assert run(neox_dir, out) == 0
    printed = "".join(capsys.readouterr())
    # the summary covers the whole plan: the unit done before is read from its part
    assert "passkey 512" in printed and "passkey 600" in printed
    assert "1 units run (0 failed), 1 already done" in printed
    assert run(neox_dir, out) == 0
    printed = "".join(capsys.readouterr())
    assert "passkey 512" in printed and "nothing to do: all 2 units are already done" in printed
    table = read_table(out, "passkey").to_pylist()
    assert sorted((r["length"], r["sample"]) for r in table) == [
        (n, s) for n in (512, 600) for s in range(3)
    ]


def test_failed_units_become_status_rows_and_the_rest_goes_on(
    neox_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results"
    original = Passkey.run
    failures = {512: MemoryError("CUDA out of memory"), 600: NonFiniteError("nan logits")}

    def failing(self, model, params, progress):
        if params["length"] in failures:
            raise failures[params["length"]]
        return original(self, model, params, progress)

    monkeypatch.setattr(Passkey, "run", failing)
    code = main(
        [
            "run",
            "--models",
            str(neox_dir),
            "--lengths",
            "512,600,700",
            "--samples",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 1
    rows = read_table(out, "passkey").to_pylist()
    status = {json.loads(r["unit_params"])["length"]: (r["status"], r["message"]) for r in rows}
    assert status[512] == ("oom", "MemoryError: CUDA out of memory")
    assert status[600] == ("nonfinite", "NonFiniteError: nan logits")
    assert status[700] == ("ok", "")
    monkeypatch.setattr(Passkey, "run", original)
    assert (
        main(
            [
                "run",
                "--models",
                str(neox_dir),
                "--lengths",
                "512,600,700",
                "--samples",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )  # failed units run again, finished ones do not
    rows = read_table(out, "passkey").to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}


def test_model_with_nan_weights_is_recorded_nonfinite(neox_dir: Path, tmp_path: Path) -> None:
    from transformers import GPTNeoXForCausalLM

    broken = tmp_path / "broken"
    model = GPTNeoXForCausalLM.from_pretrained(neox_dir)
    with torch.no_grad():
        model.gpt_neox.embed_in.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    (broken / "tokenizer.json").write_bytes((neox_dir / "tokenizer.json").read_bytes())
    (broken / "tokenizer_config.json").write_bytes(
        (neox_dir / "tokenizer_config.json").read_bytes()
    )
    out = tmp_path / "results"
    assert (
        main(
            [
                "run",
                "--models",
                str(broken),
                "--lengths",
                "512",
                "--samples",
                "1",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert read_table(out, "passkey").column("status").to_pylist() == ["nonfinite"]


def test_same_prompts_and_keys_across_models(neox_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert (
        main(
            [
                "run",
                "--models",
                f"{neox_dir},tiny-pythia",
                "--lengths",
                "512",
                "--samples",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = read_table(out, "passkey").to_pylist()
    by_model = {}
    for r in rows:
        name = r["model"].split("@")[0]
        by_model.setdefault(name, []).append((r["sample"], r["key"], r["depth"], r["tokens"]))
    assert sorted(by_model["neox-tiny"]) == sorted(by_model["tiny-pythia"])


def test_cross_model_rows_are_written_beside_the_units(tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = main(["run", "--models", "tiny-mamba2", "--tasks", "state-capacity", "--lengths", "512",
                 "--samples", "1", "--option", "state-capacity.loss_length=2048",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = read_table(out, "state_capacity").to_pylist()
    fits = [r for r in rows if r["model"] == "_combined"]
    assert {r["kind"] for r in fits} == {"fit-forget", "fit-recall"}
    assert {r["model_id"] for r in fits} == {None}
    assert {r["model_id"] for r in rows if r["model"] == "tiny-mamba2"} != {None}
    assert {r["mitigation"] for r in fits} == {"none"}
    assert all(
        r["fit_points"] <= 1 and r["fit_a"] is None and "distinct state sizes" in r["fit_note"]
        for r in fits
    )


def test_no_models_runs_the_bundled_models_with_mitigations(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["run", "--lengths", "512", "--samples", "1", "--out", str(out)]) == 0
    pairs = {(r["model"], r["mitigation"]) for r in read_table(out, "perplexity").to_pylist()}
    assert ("neox-bytes-320", "none") in pairs
    assert ("mamba2-bytes-320", "rri:a=0.9999:b=0.75") in pairs
    assert ("neox-bytes-320", "rri:a=0.9999:b=0.75") not in pairs  # rri: recurrent families
    assert ("rwkv6-bytes-320", "rri:a=0.9999:b=0.75") in pairs
    assert ("mamba1-bytes-320", "state-norm:calib=newline:k=128:mult=1.0") in pairs
    assert len(read_table(out, "passkey")) == len(pairs)
