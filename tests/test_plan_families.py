"""A run across families and mitigations: the combinations that do not apply are skipped and
named; one that applies to nothing is refused before any work (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.mitigations import parse_mitigation
from harness.plan import UsageError, build_plan, parse_models
from tasks.base import TaskOptions
from tasks.passkey import Passkey
from tasks.state_stats import StateStats


def plan_of(models: str, mitigations: list[str], tasks: list[type]):  # type: ignore[no-untyped-def]
    options = TaskOptions(lengths=(256,), samples=1)
    return build_plan(
        parse_models(models),
        [parse_mitigation(m) for m in mitigations],
        [task(options) for task in tasks],
        "float32",
    )


def test_rri_and_state_stats_skip_the_transformer_and_window() -> None:
    plan = plan_of("tiny", ["none", "rri", "window:r=64"], [Passkey, StateStats])
    ran = {(u.model.name, u.mitigation.spec, u.task.name) for u in plan.units}
    assert ("tiny-pythia", "none", "passkey") in ran
    assert not any(m == "tiny-pythia" and s != "none" for m, s, _ in ran)
    assert not any(
        t == "state-stats" and (m == "tiny-pythia" or s.startswith("window")) for m, s, t in ran
    )
    for family in ("tiny-mamba1", "tiny-mamba2", "tiny-rwkv6"):
        assert (family, "rri:a=0.9999:b=0.75", "state-stats") in ran
        assert (family, "window:r=64", "passkey") in ran
    assert sorted(plan.skipped) == sorted(
        [
            "rri:a=0.9999:b=0.75 on tiny-pythia (transformer)",
            "window:r=64 on tiny-pythia (transformer)",
            "state-stats on tiny-pythia (transformer)",
            "state-stats under window:r=64",
        ]
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--models", "tiny-pythia", "--mitigations", "none,rri"],
            "'rri:a=0.9999:b=0.75' does not apply to tiny-pythia",
        ),
        (["--models", "tiny-rwkv6", "--mitigations", "dt-scale"], "it applies to: mamba1, mamba2"),
        (
            ["--models", "tiny", "--tasks", "state-stats", "--mitigations", "window"],
            "reads the plain state h",
        ),
    ],
)
def test_what_applies_to_nothing_is_refused(
    args: list[str], message: str, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    assert main(["run", *args, "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_unknown_plans_raise_usage_errors() -> None:
    with pytest.raises(UsageError, match="does not apply"):
        plan_of("tiny-pythia", ["state-norm"], [Passkey])
