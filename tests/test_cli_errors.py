"""Wrong input stops before any work: exit status 2, a message with the valid choices,
nothing written."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import main


def fails(args: list[str], out: Path, capsys: pytest.CaptureFixture[str], *expected: str) -> None:
    code = main(["run", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err, err
    assert not out.exists() or out.is_file(), "nothing may be written"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--models", "mamba2-37m"], ["unknown model 'mamba2-37m'", "mamba2-370m"]),
        (["--models", "tiny-pythia", "--tasks", "paskey"], ["unknown task 'paskey'", "passkey"]),
        (
            ["--models", "tiny-pythia", "--mitigations", "nonne"],
            ["unknown mitigation 'nonne'", "none"],
        ),
        (["--models", "tiny-pythia", "--lengths", "4kk"], ["bad length '4kk'"]),
        (["--models", "tiny-pythia", "--lengths", "0"], ["bad length '0'"]),
        (["--models", "tiny-pythia", "--lengths", "-1"], ["bad length '-1'"]),
        (["--models", "tiny-pythia", "--lengths", ""], ["empty item in --lengths"]),
        (["--models", "tiny-pythia", "--lengths", "1k,,2k"], ["empty item in --lengths"]),
        (["--models", "tiny-pythia", "--depths", "0.5,1.5"], ["bad depth '1.5'", "[0, 1]"]),
        (["--models", "tiny-pythia", "--depths", "-0.1"], ["bad depth '-0.1'"]),
        (["--models", "tiny-pythia", "--depths", "x"], ["bad depth 'x'"]),
        (["--models", "tiny-pythia", "--samples", "0"], ["--samples must be a whole number"]),
        (
            ["--models", "tiny-pythia", "--mitigations", "none:x=1"],
            ["has no parameter 'x'", "takes no parameters"],
        ),
        (["--models", "tiny-pythia", "--option", "passkey.x=1"], ["has no option 'x'"]),
        (["--models", "tiny-mamba2", "--backend", "triton"], ["backend 'triton' needs mamba-ssm"]),
        (["--models", "tiny-pythia", "--option", "passkey"], ["bad --option 'passkey'"]),
        (
            ["--models", "tiny-pythia", "--tasks", "perplexity", "--option", "perplexity.source="],
            ["the text source is empty", "sonnets"],
        ),
        (["--models", "tiny-pythia", "--option", "pasky.x=1"], ["unknown task 'pasky'"]),
        (
            ["--models", "tiny-pythia", "--mitigations", "rri"],
            ["'rri:a=0.9999:b=0.75' does not apply to tiny-pythia", "mamba2"],
        ),
    ],
)
def test_wrong_input(
    args: list[str], expected: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(args, tmp_path / "out", capsys, *expected)


def test_output_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    fails(["--models", "tiny-pythia"], out, capsys, "is a file")
    assert out.read_text() == "not a folder"


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (as root, file modes do not stop writes); skipped where mounting is
    not allowed."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_output_folder_not_writable(
    read_only_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(["--models", "tiny-pythia"], read_only_folder / "out", capsys, "cannot create files")
    assert not any(read_only_folder.iterdir())


def test_output_folder_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    fails(["--models", "tiny-pythia"], tmp_path / "file" / "out", capsys, "which is a file")


def test_local_model_paths(
    tmp_path: Path, neox_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    fails(["--models", str(tmp_path / "nowhere")], out, capsys, "unknown model")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["--models", str(empty)], out, capsys, "has no config.json")
    (empty / "config.json").write_text((neox_dir / "config.json").read_text())
    fails(["--models", str(empty)], out, capsys, "has no weights")
    fails(["--models", str(empty / "config.json")], out, capsys, "is a file")


def test_argparse_choices_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--dtype", "float16"])
    assert exit_.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_list_prints_one_line_per_name(capsys: pytest.CaptureFixture[str]) -> None:
    for what, name in [("models", "mamba2-370m"), ("tasks", "passkey"), ("mitigations", "none")]:
        assert main(["list", what]) == 0
        assert name in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--out", ""],
        ["leaderboard", "--results", ""],
        ["leaderboard", "--out", ""],
        ["export", "--format", "lm-eval", "--out", ""],
        ["export", "--results", " ", "--format", "lm-eval", "--out", "x"],
        ["train", "--model", "mamba2", "--data", "passkey", "--out", ""],
        ["calibrate", "--out", "", "x"],
    ],
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(
    args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_train_refuses_an_output_folder_that_is_a_file_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["train", "--model", "mamba2", "--data", "passkey", "--out", str(out)]) == 2
    assert "is a file; give a directory" in capsys.readouterr().err
    assert out.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["file"]
