"""Malformed command lines, many of them: each stops before any work with exit status 2,
exactly one line on stderr (`harness: error: ...`), no traceback, and nothing written, neither
under --out nor anywhere else in the test's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

LONG_DIR = "ü" * 100  # 200 bytes, a valid folder name; 600 URI-encoded
# Each case: the arguments after `harness run` (@T is the test's folder, @NEOX a tiny
# checkpoint), then a piece of the expected message.
CASES: list[tuple[list[str], str]] = [
    # empty values never fall back to a default
    (["--models", ""], "--models is empty"),
    (["--models", " "], "--models is empty"),
    (["--models", ","], "empty item in --models"),
    (["--models", "tiny-pythia,"], "empty item in --models"),
    (["--models", "tiny-pythia", "--out", ""], "--out is empty"),
    (["--models", "tiny-pythia", "--mitigations", ""], "--mitigations is empty"),
    (["--models", "tiny-pythia", "--mitigations", "none,"], "empty item in --mitigations"),
    (["--models", "tiny-pythia", "--tasks", ""], "--tasks is empty"),
    (["--models", "tiny-pythia", "--tasks", "passkey,,perplexity"], "empty item in --tasks"),
    (["--models", "tiny-pythia", "--lengths", ""], "empty item in --lengths"),
    (["--models", "tiny-pythia", "--depths", ""], "empty item in --depths"),
    (["--models", "tiny-pythia", "--samples", ""], "--samples is empty"),
    (["--models", "tiny-pythia", "--seed", ""], "--seed is empty"),
    (["--models", "tiny-pythia", "--device", ""], "--device is empty"),
    # lengths
    (["--models", "tiny-pythia", "--lengths", "0"], "bad length '0'"),
    (["--models", "tiny-pythia", "--lengths", "-1"], "bad length '-1'"),
    (["--models", "tiny-pythia", "--lengths", "4kk"], "bad length '4kk'"),
    (["--models", "tiny-pythia", "--lengths", "５１２"], "bad length '５１２'"),
    (["--models", "tiny-pythia", "--lengths", "٥١٢"], "bad length '٥١٢'"),
    (["--models", "tiny-pythia", "--lengths", "1_024"], "bad length '1_024'"),
    (["--models", "tiny-pythia", "--lengths", "1.5k"], "bad length '1.5k'"),
    (["--models", "tiny-pythia", "--lengths", "0x10"], "bad length '0x10'"),
    (["--models", "tiny-pythia", "--lengths", "17m"], "above the limit of 16m"),
    (["--models", "tiny-pythia", "--lengths", "512,99999999999999999999"], "above the limit"),
    # depths
    (["--models", "tiny-pythia", "--depths", "1.5"], "bad depth '1.5'"),
    (["--models", "tiny-pythia", "--depths", "-0.1"], "bad depth '-0.1'"),
    (["--models", "tiny-pythia", "--depths", "nan"], "bad depth 'nan'"),
    (["--models", "tiny-pythia", "--depths", "inf"], "bad depth 'inf'"),
    (["--models", "tiny-pythia", "--depths", "０.５"], "bad depth '０.５'"),
    # samples and seed
    (["--models", "tiny-pythia", "--samples", "0"], "--samples must be a whole number"),
    (["--models", "tiny-pythia", "--samples", "-3"], "--samples must be a whole number"),
    (["--models", "tiny-pythia", "--samples", "2.5"], "--samples must be a whole number"),
    (["--models", "tiny-pythia", "--samples", "５"], "--samples must be a whole number"),
    (["--models", "tiny-pythia", "--samples", "100001"], "from 1 to 100000"),
    (["--models", "tiny-pythia", "--seed", "-1"], "--seed must be a whole number"),
    (["--models", "tiny-pythia", "--seed", str(2**64)], "to 2^64 - 1"),
    (["--models", "tiny-pythia", "--seed", "x"], "--seed must be a whole number"),
    (["--models", "tiny-pythia", "--seed", "٣"], "--seed must be a whole number"),
    # devices, dtypes, backends
    (["--models", "tiny-pythia", "--device", "tpu"], "bad --device 'tpu'"),
    (["--models", "tiny-pythia", "--device", "cuda:x"], "bad --device 'cuda:x'"),
    (["--models", "tiny-pythia", "--device", "cuda:99"], "--device cuda:99"),
    (["--models", "tiny-pythia", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["--models", "tiny-mamba2", "--backend", "cuda"], "invalid choice: 'cuda'"),
    (["--models", "tiny-mamba2", "--backend", "triton"], "backend 'triton' needs mamba-ssm"),
    # models
    (["--models", "mamba2-37m"], "unknown model 'mamba2-37m'"),
    (["--models", "a/.."], "unknown model 'a/..'"),
    (["--models", "./x/y"], "unknown model './x/y'"),
    (["--models", "~/no/where"], "unknown model '~/no/where'"),
    (["--models", "@T/nowhere"], "unknown model"),
    (["--models", "@T/setup.txt"], "is a file"),
    (["--models", "mamba2-130m"], "harness list models"),
    (["--models", "pythia-160m"], "HF_HUB_OFFLINE is set"),
    (["--models", "rwkv6-world-1.6b"], "HF_HUB_OFFLINE is set"),
    (["--models", "no-such-owner/no-such-model"], "not in the local cache"),
    (["--models", "tiny-pythia,mamba2-370m"], "mamba2-370m"),
    (["--models", f"@T/{LONG_DIR}"], "above the file system's 255"),
    # tasks and task options
    (["--models", "tiny-pythia", "--tasks", "paskey"], "unknown task 'paskey'"),
    (["--models", "tiny-pythia", "--tasks", "state-stats"], "does not apply to tiny-pythia"),
    (["--models", "tiny-pythia", "--option", "passkey"], "bad --option 'passkey'"),
    (["--models", "tiny-pythia", "--option", "=1"], "bad --option '=1'"),
    (["--models", "tiny-pythia", "--option", "pasky.x=1"], "unknown task 'pasky'"),
    (["--models", "tiny-pythia", "--option", "passkey.x=1"], "has no option 'x'"),
    (["--models", "tiny-pythia", "--option", "perplexity.bucket=1"], "not in --tasks"),
    (
        ["--models", "tiny-pythia", "--tasks", "perplexity", "--option", "perplexity.bucket=0"],
        "must be > 0",
    ),
    (
        ["--models", "tiny-pythia", "--tasks", "perplexity", "--option", "perplexity.bucket=x"],
        "bucket='x'",
    ),
    # mitigations
    (["--models", "tiny-pythia", "--mitigations", "nonne"], "unknown mitigation 'nonne'"),
    (["--models", "tiny-pythia", "--mitigations", "rri"], "does not apply to tiny-pythia"),
    (["--models", "tiny-mamba2", "--mitigations", "rri+"], "empty mitigation name"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:a"], "expected key=value"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:c=1"], "has no parameter 'c'"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:a=abc"], "a='abc'"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:a=2"], "in (0, 1]"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:a=-0.5"], "in (0, 1]"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:a=nan"], "a='nan' is not a number"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:b=inf"], "finite number > 0"),
    (["--models", "tiny-mamba2", "--mitigations", "dt-scale:s=0"], "finite number > 0"),
    (["--models", "tiny-mamba2", "--mitigations", "dt-scale:s=nan"], "s='nan' is not a number"),
    (["--models", "tiny-mamba2", "--mitigations", "dt-scale:file=@T/no.json"], "does not exist"),
    (["--models", "tiny-mamba2", "--mitigations", "dt-scale:file=@T/setup.txt"], "not JSON"),
    (["--models", "tiny-mamba2", "--mitigations", "dt-scale:file=@T"], "cannot read scale file"),
    (["--models", "tiny-mamba2", "--mitigations", "window:r=0"], "integer >= 1"),
    (["--models", "tiny-mamba2", "--mitigations", "state-norm:calib=x"], "calib='x'"),
    (
        ["--models", "tiny-mamba2", "--mitigations", f"dt-scale:file=@T/{LONG_DIR}.json"],
        "above the file system's 255",
    ),
    (["--models", "tiny-mamba2", "--mitigations", "rri:b=２"], "b='２' is not a number"),
    (["--models", "tiny-mamba2", "--mitigations", "rri:b=0x1"], "b='0x1' is not a number"),
    (["--models", "tiny-mamba2", "--mitigations", "window:r=1_0"], "r='1_0' is not an integer"),
    (["--models", "tiny-mamba2", "--mitigations", "state-norm:k=1e3"], "is not an integer"),
    (
        ["--models", "tiny-pythia", "--tasks", "perplexity", "--option", "perplexity.bucket=６４"],
        "bucket='６４' is not an integer",
    ),
    # executor flags
    (["--models", "tiny-pythia", "--workers", "５"], "'５' is not an integer"),
    (["--models", "tiny-pythia", "--workers", "0"], "--workers must be at least 1"),
    (["--models", "tiny-pythia", "--gpus-per-worker", "nan"], "'nan' is not a number"),
    (["--models", "tiny-pythia", "--executor", "mpi"], "invalid choice: 'mpi'"),
    # output folder
    (["--models", "tiny-pythia", "--out", "@T/setup.txt"], "is a file"),
    (["--models", "tiny-pythia", "--out", "@T/setup.txt/results"], "which is a file"),
    # argparse's own errors, on one line too
    (["--models", "tiny-pythia", "--bogus"], "unrecognized arguments: --bogus"),
    (["--models", "tiny-pythia", "extra"], "unrecognized arguments: extra"),
    (["--models"], "expected one argument"),
]
OTHER_COMMANDS: list[tuple[list[str], str]] = [
    ([], "the following arguments are required"),
    (["runn"], "invalid choice: 'runn'"),
    (["list", "bogus"], "invalid choice: 'bogus'"),
    (["train", "--steps", "３"], "'３' is not an integer"),
    (["leaderboard", "--positions", "１,2"], "'１,2' is not a comma-separated list"),
    (["leaderboard", "--positions", "1,inf"], "'1,inf' is not a comma-separated list"),
    (["leaderboard", "--threshold", "０.５"], "'０.５' is not an accuracy"),
    (["train", "--lr", "nan"], "'nan' is not a number"),
]


@pytest.fixture(autouse=True)
def empty_hub_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catalog models are never cached, whatever this machine's own hub cache holds."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub-cache")))


@pytest.fixture
def folder(tmp_path: Path, neox_dir: Path) -> Path:
    """The test's folder with what the cases refer to: a text file, a long-named checkpoint,
    a scale file of a long name."""
    (tmp_path / "setup.txt").write_text("a file, not a folder")
    long = tmp_path / LONG_DIR
    long.mkdir()
    for item in neox_dir.iterdir():
        (long / item.name).symlink_to(item)
    (tmp_path / f"{LONG_DIR}.json").write_text('{"0": 0.5}')
    return tmp_path


def files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.lstat().st_mtime for p in root.rglob("*")}


def substitute(args: list[str], folder: Path) -> list[str]:
    return [a.replace("@T", str(folder)) for a in args]


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


def check(code: int, err: str, expected: str) -> None:
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("harness: error: "), err
    assert "Traceback" not in err
    assert expected in lines[0], err


def test_case_count() -> None:
    assert len(CASES) + len(OTHER_COMMANDS) >= 60


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_malformed_run(
    args: list[str], expected: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", *substitute(args, folder)]
    if "--out" not in args:
        argv += ["--out", str(folder / "out")]
    before = files(folder)
    code, err = run_in_process(argv, capsys)
    check(code, err, expected)
    assert files(folder) == before, "nothing may be written"


@pytest.mark.parametrize(("args", "expected"), OTHER_COMMANDS)
def test_malformed_command(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    check(*run_in_process(args, capsys), expected)


SUBPROCESS_CASES = [
    (["--models", ""], "--models is empty"),
    (["--models", "tiny-pythia", "--lengths", "５１２"], "bad length"),
    (["--models", "tiny-pythia", "--out", "@T/setup.txt/results"], "which is a file"),
    (["--models", "mamba2-130m"], "harness list models"),
]


@pytest.mark.parametrize(("args", "expected"), SUBPROCESS_CASES)
def test_malformed_subprocess(args: list[str], expected: str, folder: Path) -> None:
    argv = [sys.executable, "-m", "harness", "run", *substitute(args, folder)]
    if "--out" not in args:
        argv += ["--out", str(folder / "out")]
    before = files(folder)
    env = {**os.environ, "HF_HOME": str(folder.parent / f"{folder.name}-hf")}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    check(proc.returncode, proc.stderr, expected)
    assert files(folder) == before, "nothing may be written"
