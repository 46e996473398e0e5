"""`harness calibrate`: determinism, the gradient against finite differences, the file's loss
against an independent evaluation through `dt-scale:file=`, and wrong input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.calibrate import CalibrationConfig, calibrate, mean_loss, scale_hooks
from harness.cli import main
from harness.mitigations import parse_mitigation
from harness.models.tiny import TINY_MODELS

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 40


@pytest.fixture
def model(one_thread: None):
    return TINY_MODELS["tiny-mamba2"].build("cpu", torch.float32, "torch")


def docs(model, length: int = 700) -> list[torch.Tensor]:
    return [torch.tensor(model.encode(TEXT)[:length])]


def config(**changes) -> CalibrationConfig:
    base = {"model": "tiny-mamba2", "mitigation": "dt-scale", "length": 700, "data": "-",
            "steps": 3, "chunk": 256}  # fmt: skip
    return CalibrationConfig(**(base | changes))


@pytest.mark.parametrize("method", ["zo", "grad"])
def test_same_seed_same_scales(model, method: str) -> None:
    kind = parse_mitigation("dt-scale:s=1")
    first = calibrate(model, kind, docs(model), config(method=method))
    second = calibrate(model, kind, docs(model), config(method=method))
    assert first.scales == second.scales and first.final_loss == second.final_loss
    assert first.final_loss <= first.initial_loss


def test_gradient_matches_finite_differences(model) -> None:
    kind, ids = parse_mitigation("a-scale:s=1"), docs(model, 300)
    theta = torch.tensor([0.3, -0.2]).requires_grad_(True)
    model.hooks = scale_hooks(kind, theta.exp())
    mean_loss(model, ids, 128).backward()
    step = 0.1  # float32 losses: a smaller step drowns the difference in rounding (~5e-7)
    for layer in range(2):
        bump = torch.zeros(2)
        bump[layer] = step
        losses = []
        for sign in (1, -1):
            model.hooks = scale_hooks(kind, (theta.detach() + sign * bump).exp())
            with torch.no_grad():
                losses.append(float(mean_loss(model, ids, 128)))
        numeric = (losses[0] - losses[1]) / (2 * step)
        assert theta.grad[layer].item() == pytest.approx(numeric, abs=1e-5)


@pytest.mark.parametrize("name", ["tiny-mamba2", "tiny-mamba1"])
def test_cli_writes_a_file_that_dt_scale_reads(name: str, tmp_path: Path) -> None:
    data = tmp_path / "calib.txt"
    data.write_text(TEXT)
    out = tmp_path / "scales.json"
    argv = ["calibrate", "--model", name, "--mitigation", "dt-scale", "--length", "600"]
    code = main([*argv, "--data", str(data), "--steps", "2", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert len(record["scales"]) == 2 and record["calibration"]["method"] == "zo"
    assert record["calibration"]["model_id"]
    # the loss the file claims, recomputed through the mitigation that reads the file
    model = TINY_MODELS[name].build("cpu", torch.float32, "torch")
    model.hooks = parse_mitigation(f"dt-scale:file={out}").hooks(model)
    ids = torch.tensor(model.encode(TEXT)[:600])
    assert float(model.token_losses(ids).mean()) == pytest.approx(
        record["calibration"]["final_loss"], abs=1e-5
    )
    results = tmp_path / "results"
    code = main(["run", "--models", name, "--mitigations", f"dt-scale:file={out}",
                 "--tasks", "perplexity", "--lengths", "600",
                 "--option", f"perplexity.source={data}", "--out", str(results)])  # fmt: skip
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "tiny-pythia"], "Mamba-2 and Mamba-1; tiny-pythia is a transformer"),
        (["--model", "tiny-rwkv6"], "Mamba-2 and Mamba-1; tiny-rwkv6 is a rwkv6"),
        (["--length", "1k,2k"], "one length"),
        (["--steps", "0"], "--steps"),
        (["--data", "/nonexistent/text.txt"], "--data"),
    ],
)
def test_wrong_input_exits_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--model": "tiny-mamba2", "--mitigation": "dt-scale", "--length": "600",
            "--data": "newlines", "--out": str(tmp_path / "s.json")}  # fmt: skip
    base |= dict(zip(args[::2], args[1::2], strict=True))
    argv = ["calibrate", *(x for kv in base.items() for x in kv)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "s.json").exists()
