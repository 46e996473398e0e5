"""Typed settings: one converter for `--option TASK.KEY=VALUE` and `name:key=value`, canonical
mitigation specs unchanged, `harness list` explaining every key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from harness.cli import main
from harness.mitigations import parse_mitigation
from harness.mitigations.base import Mitigation, MitigationError
from harness.registry import MITIGATIONS, TASKS, Registry
from harness.settings import SettingError, build, parse_value, setting
from tasks.base import Task, TaskOptions


@dataclass(frozen=True)
class Every:
    flag: bool = setting(False, "a switch")
    count: int = setting(3, "a count")
    scale: float = setting(0.5, "a scale")
    name: str = setting("x", "a name")
    mode: Literal["fast", "exact"] = setting("exact", "a choice")
    file: Path | None = setting(None, "an optional file")


class Switched(Task):
    """A task with every kind of setting, as a plugin would write it."""

    name = "switched"
    description = "test task"
    Settings = Every

    def units(self) -> list[dict]:
        return []

    def run(self, model, params, progress):  # type: ignore[no-untyped-def]
        return []


class SwitchedFix(Mitigation):
    """A mitigation with the same settings."""

    name = "switched-fix"
    description = "test mitigation"
    families = frozenset({"mamba2"})
    Settings = Every

    def hooks(self, model):  # type: ignore[no-untyped-def]
        return None


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("true", bool, True),
        ("YES", bool, True),
        ("1", bool, True),
        ("no", bool, False),
        ("False", bool, False),
        ("0", bool, False),
        ("-12", int, -12),
        ("2", float, 2.0),
        ("1e-3", float, 0.001),
        ("inf", float, float("inf")),
        ("", str, ""),
        ("a b", str, "a b"),
        ("f.json", Path, Path("f.json")),
        ("none", Path | None, None),
        ("", int | None, None),
        ("7", int | None, 7),
        ("fast", Literal["fast", "exact"], "fast"),
    ],
)
def test_one_converter(text: str, kind: object, value: object) -> None:
    assert parse_value(text, kind) == value
    assert type(parse_value(text, kind)) is type(value)


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("maybe", bool, "is not a boolean: true/false, 1/0 or yes/no"),
        ("1.5", int, "is not an integer"),
        ("1_000", int, "is not an integer"),
        ("١٢", int, "is not an integer"),
        ("true", int, "is not an integer"),
        ("nan", float, "is not a number"),
        ("0x10", float, "is not a number"),
        ("slow", Literal["fast", "exact"], "valid: fast, exact"),
        ("", Path, "is empty"),
    ],
)
def test_wrong_values_say_what_is_expected(text: str, kind: object, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        parse_value(text, kind)


def test_task_option_and_mitigation_spec_parse_alike() -> None:
    raw = {"flag": "yes", "count": "7", "scale": "1", "mode": "fast", "file": "s.json"}
    task = Switched(TaskOptions(extra={"switched": raw}))
    spec = ":".join(["switched-fix", *(f"{k}={v}" for k, v in raw.items())])
    mitigation = parse_mitigation(spec, _only())
    assert task.settings == mitigation.settings
    assert task.settings == Every(True, 7, 1.0, "x", "fast", Path("s.json"))
    assert mitigation.spec == (
        "switched-fix:count=7:file=s.json:flag=true:mode=fast:name=x:scale=1.0"
    )
    assert parse_mitigation(mitigation.spec, _only()).settings == mitigation.settings


def _only() -> Registry:
    """A registry holding SwitchedFix only."""
    registry = Registry("mitigation", "no-such-group", MITIGATIONS.base, {})
    registry.register("switched-fix")(SwitchedFix)
    return registry


def test_unknown_keys_and_wrong_types_are_one_line_errors() -> None:
    with pytest.raises(SettingError, match=r"task 'perplexity' has no option 'buckets'; valid: b"):
        build(TASKS.get("perplexity").Settings, {"buckets": "1"}, "task 'perplexity'", "option")
    with pytest.raises(MitigationError, match=r"parameter k=.1\.5. is not an integer"):
        parse_mitigation("state-norm:k=1.5")
    with pytest.raises(MitigationError, match="parameter calib='text' is not valid; valid: new"):
        parse_mitigation("state-norm:calib=text")
    with pytest.raises(MitigationError, match="has no parameter 'c'; valid: a, b"):
        parse_mitigation("rri:c=1")
    with pytest.raises(MitigationError, match="a is given twice"):
        parse_mitigation("rri:a=0.5:a=0.6")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--option", "perplexity.bucket=1.5"], "option bucket='1.5' is not an integer"),
        (["--option", "perplexity.short_docs=pad"], "short_docs='pad' is not valid; valid: skip"),
        (["--mitigations", "window:r=big"], "parameter r='big' is not an integer"),
        (["--mitigations", "rri:b=yes"], "parameter b='yes' is not a number"),
    ],
)
def test_cli_exits_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["run", "--models", "tiny-mamba2", "--tasks", "perplexity", *args, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not out.exists()


def test_canonical_specs_are_those_of_existing_results() -> None:
    """Result partitions and unit ids depend on these spellings: they must not change."""
    expected = {
        "none": "none",
        "rri": "rri:a=0.9999:b=0.75",
        "rri:b=1:a=1": "rri:a=1.0:b=1.0",
        "dt-scale": "dt-scale:s=0.2",
        "a-scale:s=2": "a-scale:s=2.0",
        "state-norm": "state-norm:calib=newline:k=128:mult=1.0",
        "state-norm:k=1:mult=inf": "state-norm:calib=newline:k=1:mult=inf",
        "window": "window:r=2048",
        "rri+window:r=1024": "rri:a=0.9999:b=0.75+window:r=1024",
    }
    for written, canonical in expected.items():
        assert parse_mitigation(written).spec == canonical


def test_task_params_keep_their_keys_and_types() -> None:
    """A unit's parameters (and so its id) are the settings as a dict, as before."""
    task = TASKS.get("perplexity")(TaskOptions(extra={"perplexity": {"bucket": "64"}}))
    assert task.params == {
        "source": "sonnets",
        "column": "text",
        "split": "auto",
        "subset": "",
        "short_docs": "skip",
        "documents": 1,
        "bucket": 64,
        "chunk": 2048,
    }


def test_list_explains_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    for what, registry in (("tasks", TASKS), ("mitigations", MITIGATIONS)):
        assert main(["list", what]) == 0
        listed = capsys.readouterr().out
        for name in registry.names():
            cls = registry.get(name)
            assert f"{name}: {cls.description}" in listed
            for f in dataclasses.fields(cls.Settings):
                assert f.metadata["help"], f"{name}.{f.name} has no meaning"
                assert f"{f.name}=" in listed and f.metadata["help"] in listed


def test_list_models_is_one_line_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.models.bundled import bundled_models
    from harness.models.catalog import CATALOG
    from harness.models.tiny import TINY_MODELS

    assert main(["list", "models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [*TINY_MODELS, *bundled_models(), *CATALOG]
    assert [line.split()[0] for line in lines] == ["name", *names]
    assert all(len(line) <= 100 for line in lines)
    assert not any("harness train" in line for line in lines)
    row = ["mamba2-370m", "catalog", "mamba2", "368M", "12.6M", "2048", "pythia-410m"]
    assert row in [line.split() for line in lines]


def test_tiny_model_table_matches_the_built_models() -> None:
    import torch

    from harness.models.tiny import TINY_MODELS

    for tiny in TINY_MODELS.values():
        info = tiny.build("cpu", torch.float32, "torch").info
        assert (info.params, info.state_size, info.train_context) == (
            tiny.params,
            tiny.state_size,
            tiny.train_context,
        )
