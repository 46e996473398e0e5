"""harness train: schedule, data, TBPTT, resume, checkpoints through the loaders, wrong input."""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.models.linear import pack
from harness.models.loading import load, resolve
from harness.models.tokenizer import byte_tokenizer
from harness.train import checkpoint
from harness.train.cli import add_arguments, command
from harness.train.data import DataError, PasskeySamples, parse_mixture
from harness.train.loop import TrainConfig, Trainer
from harness.train.models import Mamba2Trainable, Shape, Trainable, build, detach_state
from harness.train.models import load as load_trainable
from harness.train.schedule import WSD

TEXT = "It is a truth universally acknowledged, that a single byte in want of a model.\n" * 40
SHAPE = Shape(
    d_model=32,
    n_layer=2,
    d_state=16,
    headdim=16,
    n_head=4,
    d_ff=64,
    head_size=16,
    d_mix=8,
    d_decay=8,
)
FAMILIES = ["mamba2", "mamba1", "rwkv6", "gpt-neox"]
RECURRENT = ["mamba2", "mamba1", "rwkv6"]


def encode(text: str) -> list[int]:
    return list(text.encode())


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def config(out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        out=out,
        steps=6,
        batch_size=2,
        segment_length=32,
        segments=2,
        lr=3e-3,
        min_lr=0.0,
        warmup=2,
        decay=0.5,
        weight_decay=0.1,
        clip=1.0,
        seed=0,
        save_every=3,
    )
    return replace(base, **changes)


def trainer(family: str, corpus: Path, out: Path, **changes: object) -> Trainer:
    tokenizer = byte_tokenizer()
    model = build(family, SHAPE, tokenizer, seed=0)
    data = parse_mixture([f"text:{corpus}"], encode, tokenizer.eos_token_id)
    return Trainer(model, data, config(out, **changes), meta={})


def test_wsd_schedule_warms_up_holds_and_decays() -> None:
    wsd = WSD(lr=1.0, steps=10, warmup=2, decay=0.2, min_lr=0.0)
    assert [wsd(s) for s in range(10)] == [0.5, 1, 1, 1, 1, 1, 1, 1, 0.5, 0.0]
    with pytest.raises(ValueError, match="decay fraction"):
        WSD(lr=1.0, steps=10, warmup=0, decay=1.5)


def test_batches_are_a_function_of_seed_and_step(corpus: Path) -> None:
    data = parse_mixture([f"text:{corpus}@1", "passkey@1"], encode, 256)
    first, again = data.batch(0, 5, 4, 400), data.batch(0, 5, 4, 400)
    assert torch.equal(first.ids, again.ids) and torch.equal(first.mask, again.mask)
    assert first.ids.shape == (4, 401) and first.mask.shape == (4, 400)
    assert not torch.equal(first.ids, data.batch(0, 6, 4, 400).ids)


def test_passkey_samples_score_the_answer_only() -> None:
    sample = PasskeySamples(encode, pad_id=256).sample(random.Random(1), 400)
    assert len(sample.ids) == 401 and len(sample.mask) == 400
    answer = bytes(i for i, m in zip(sample.ids[1:], sample.mask, strict=True) if m).decode()
    assert answer.strip().isdigit() and len(answer) == 6
    prompt = bytes(i for i in sample.ids if i != 256).decode()
    assert f"The passkey is {answer.strip()}. Remember it." in prompt


def test_passkey_keys_loss_adds_the_needles_repeated_key() -> None:
    sample = PasskeySamples(encode, pad_id=256, loss="keys").sample(random.Random(2), 400)
    scored = bytes(i for i, m in zip(sample.ids[1:], sample.mask, strict=True) if m).decode()
    key = scored[-5:]
    assert scored == f"{key} {key}"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["text:/no/such/file.txt"], "does not exist"),
        (["passkey@lots"], "bad ratio"),
        (["passkey@-1"], "bad ratio"),
        (["passkey@0"], "sum to zero"),
        (["books:x"], "bad data spec"),
        ([], "no training data"),
    ],
)
def test_wrong_data_specs_are_named(specs: list[str], message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_mixture(specs, encode, 256)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_steps_lower_the_loss(family: str, corpus: Path, tmp_path: Path) -> None:
    run = trainer(family, corpus, tmp_path / "run", steps=12, warmup=1, decay=0.0)
    losses = [run.train_step(step).loss for step in range(12)]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5


def test_resume_after_interruption_is_bit_identical(corpus: Path, tmp_path: Path) -> None:
    straight = trainer("mamba2", corpus, tmp_path / "straight")
    straight.run(resume=False)

    interrupted = trainer("mamba2", corpus, tmp_path / "resumed")
    steps = interrupted.train_step

    def crash_at_step_4(step: int):
        if step == 4:
            raise KeyboardInterrupt
        return steps(step)

    interrupted.train_step = crash_at_step_4  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(resume=False)
    resumed = trainer("mamba2", corpus, tmp_path / "resumed")
    resumed.run(resume=True)

    for (name, a), b in zip(
        straight.model.module.state_dict().items(),
        resumed.model.module.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name


def test_resume_refuses_changed_settings(corpus: Path, tmp_path: Path) -> None:
    trainer("gpt-neox", corpus, tmp_path / "run", steps=3).run(resume=False)
    changed = trainer("gpt-neox", corpus, tmp_path / "run", steps=3, lr=1e-2)
    with pytest.raises(checkpoint.ResumeError, match="lr"):
        changed.run(resume=True)


def untied_mamba2() -> Trainable:
    from harness.models.mamba2 import Mamba2, Mamba2Config

    torch.manual_seed(0)
    config = Mamba2Config(
        d_model=32, n_layer=2, vocab_size=257, d_state=16, headdim=16, tie_embeddings=False
    )
    module = Mamba2(config)
    return Mamba2Trainable(module, byte_tokenizer())


def test_tbptt_state_equals_one_pass_and_no_gradient_crosses() -> None:
    model = untied_mamba2()
    first = torch.full((1, 24), 5)  # token 5 appears in the first segment only
    second = torch.randint(10, 250, (1, 24), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        _, joined = model.forward(torch.cat([first, second], 1), model.initial_state(1))
        _, state = model.forward(first, model.initial_state(1))
        _, chained = model.forward(second, detach_state(state))
    for a, b in zip(joined.ssm + joined.conv, chained.ssm + chained.conv, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    def second_segment_grad(detach: bool) -> torch.Tensor:
        model.module.zero_grad(set_to_none=True)
        _, state = model.forward(first, model.initial_state(1))
        logits, _ = model.forward(second, detach_state(state) if detach else state)
        logits[0, :, 7].sum().backward()
        return model.module.embedding.weight.grad[5]

    assert torch.count_nonzero(second_segment_grad(detach=False)) > 0  # the control
    assert torch.count_nonzero(second_segment_grad(detach=True)) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoints_load_through_the_harness_loaders(
    family: str, corpus: Path, tmp_path: Path
) -> None:
    run = trainer(family, corpus, tmp_path / family, steps=2)
    run.run(resume=False)
    model = load(resolve(str(tmp_path / family)), "cpu", torch.float32, "torch")
    assert model.info.family == ("transformer" if family == "gpt-neox" else family)
    assert model.info.train_context == (64 if family in RECURRENT else 32)
    assert model.info.state_size == run.model.state_size
    assert model.encode("a byte") == encode("a byte")  # the byte tokenizer saved beside it

    ids = torch.tensor([encode("a single byte in want")])
    run.model.module.eval()
    with torch.no_grad():
        expected, _ = run.model.forward(ids, run.model.initial_state(1))
        continued = load_trainable(str(tmp_path / family))  # what --model DIR continues
        again, _ = continued.forward(ids, continued.initial_state(1))
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    loaded = model.module.state_dict()  # a packed projection writes its dense weight back
    for name, tensor in run.model.module.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
    pack(run.model.module)  # as the harness evaluates it: its products sum in another order
    with torch.no_grad():  # as the harness runs a model (with grad mode on, F.linear computes)
        expected, _ = run.model.forward(ids, run.model.initial_state(1))
        logits, _ = model.forward(ids, model.init_state(1))
    vocab = logits.shape[-1]  # Mamba's embedding is padded past the tokenizer's 257 ids
    torch.testing.assert_close(logits, expected[..., :vocab], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["mamba1", "rwkv6"])
def test_new_families_carry_their_state_exactly_between_segments(family: str) -> None:
    """Two segments chained through the (detached) state give the logits of one pass."""
    model = build(family, SHAPE, byte_tokenizer(), seed=0)
    ids = torch.randint(0, 257, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, _ = model.forward(ids, model.initial_state(2))
        first, state = model.forward(ids[:, :20], model.initial_state(2))
        second, _ = model.forward(ids[:, 20:], detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-5)


def test_fresh_rwkv6_learns_its_data_dependent_mixes_and_decay(
    corpus: Path, tmp_path: Path
) -> None:
    """The engine builds zero LoRAs, which would never move; training starts them as RWKV-LM
    does (one factor zero, the other small), so both factors learn."""
    run = trainer("rwkv6", corpus, tmp_path / "run", steps=3, warmup=1, decay=0.0)
    for step in range(3):
        run.train_step(step)
    att = run.model.module.blocks[0].att
    for name in ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2"):
        assert torch.count_nonzero(getattr(att, name)) > 0, name


def train_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return command(parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "gpt-neox", "--data", "text:/no/such.txt"], "does not exist"),
        (["--model", "gpt-neox", "--data", "passkey@x"], "bad ratio"),
        (["--model", "mamba3", "--data", "passkey"], "unknown model"),
        (["--model", "gpt-neox", "--data", "passkey", "--steps", "0"], "--steps"),
        (["--model", "gpt-neox", "--data", "passkey", "--tokenizer", __file__], "not a tokenizer"),
        (["--model", "mamba2", "--data", "passkey", "--head-size", "16"], "not a mamba2 shape"),
        (["--model", "rwkv6", "--data", "passkey", "--headdim", "16"], "rwkv6 takes --d-model"),
        (["--model", "mamba1", "--data", "passkey", "--d-ff", "64"], "not a mamba1 shape"),
        (["--model", "rwkv6", "--data", "passkey", "--head-size", "48"], "not a multiple"),
        (["--model", "mamba1", "--data", "passkey", "--d-state", "0"], "at least 1"),
        (["--model", "tiny-mamba2", "--data", "passkey", "--d-model", "8"], "from scratch"),
    ],
)
def test_wrong_input_exits_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_cli(*argv, "--out", str(tmp_path / "run")) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "use auto, cpu, cuda or cuda:N"), ("cuda:7", "--device cuda:7: torch")],
)
def test_a_device_that_is_not_here_exits_2_before_anything_is_written(
    device: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert (
        train_cli("--model", "mamba1", "--data", "passkey", "--device", device, "--out", str(out))
        == 2
    )
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_trains_and_refuses_to_overwrite(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "run")
    argv = ["--model", "gpt-neox", "--data", f"text:{corpus}", "--out", out, "--steps", "2"]
    argv += ["--d-model", "32", "--n-layer", "1", "--segment-length", "32", "--warmup", "1"]
    assert train_cli(*argv, "--batch-size", "2") == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert train_cli(*argv, "--batch-size", "2") == 2
    assert "--resume" in capsys.readouterr().err


def test_a_failure_while_training_exits_1(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Input that checks out but a write that fails mid-run: exit 1, one line, not 2."""
    out = tmp_path / "run"
    (out / checkpoint.STATE_FILE).mkdir(parents=True)  # the checkpoint cannot be written
    argv = ["--model", "gpt-neox", "--data", f"text:{corpus}", "--out", str(out), "--steps", "1"]
    argv += ["--d-model", "32", "--n-layer", "1", "--segment-length", "32", "--warmup", "1"]
    assert train_cli(*argv, "--batch-size", "2") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("harness train: failed while training: IsADirectoryError"), err


def test_ctrl_c_while_training_exits_130_with_one_line(corpus: Path, tmp_path: Path) -> None:
    """A real SIGINT to a real `harness train` process, once it has logged a step."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = ["--model", "gpt-neox", "--data", f"text:{corpus}", "--out", str(out)]
    argv += ["--d-model", "32", "--n-layer", "1", "--segment-length", "32", "--warmup", "1"]
    argv += ["--steps", "100000", "--save-every", "1", "--batch-size", "2"]
    code = "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "train", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and Python
        # then installs no KeyboardInterrupt handler: give the child the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("harness train: interrupted; rerun with --resume"), last
    assert checkpoint.has_state(out)
