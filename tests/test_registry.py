"""The registries: names once, classes checked, plugins loaded only when asked for; the CLI
imports nothing heavy to answer --help and list.

Plugins here are real installed distributions: a `*.dist-info` folder with entry_points.txt
and a module beside it, in a folder put on sys.path, found by importlib.metadata as pip's
would be.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.registry import MITIGATIONS, TASKS, Registry, RegistryError
from tasks.base import Task

HEAVY = ("torch", "pandas", "pyarrow", "transformers", "matplotlib", "rich", "datasets")

PLUGIN_TASK = """
import pyarrow as pa
from tasks.base import Task

class Echo(Task):
    name = "echo"
    description = "a plugin task"
    table = "echo"
    schema = pa.schema([("n", pa.int64())])

    def units(self):
        return [{"n": 1}]

    def run(self, model, params, progress):
        return [{"n": params["n"]}]

class NotATask:
    name = "stray"
"""


def install(site: Path, dist: str, entry_points: dict[str, dict[str, str]], modules: dict) -> None:
    """A distribution `dist` in folder `site`: its entry points and its modules' source."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)


def fresh(registry: Registry) -> Registry:
    """A registry like `registry` that has read no entry points yet."""
    return Registry(registry.kind, registry.group, registry.base, dict(registry.builtins))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    for registry in (TASKS, MITIGATIONS):  # forget what earlier tests read
        monkeypatch.setattr(registry, "_targets", None)
        monkeypatch.setattr(registry, "_classes", {})
    return folder


def test_plugin_task_loads_by_name_and_is_checked(site: Path) -> None:
    entries = {"harness.tasks": {"echo": "echo_plugin:Echo", "stray": "echo_plugin:NotATask"}}
    install(site, "echo-plugin", entries, {"echo_plugin": PLUGIN_TASK})
    tasks = fresh(TASKS)
    assert tasks.names()[:4] == ["passkey", "perplexity", "state-stats", "state-capacity"]
    assert "echo_plugin" not in sys.modules, "listing names must not import plugins"
    echo = tasks.get("echo")
    assert issubclass(echo, Task) and echo.name == "echo"
    with pytest.raises(RegistryError, match=r"echo_plugin:NotATask, which is not a subclass"):
        tasks.get("stray")


def test_clash_between_plugins_names_both(site: Path) -> None:
    install(site, "one", {"harness.mitigations": {"rri2": "one_mod:RRI2"}}, {})
    install(site, "two", {"harness.mitigations": {"rri2": "two_mod:Other"}}, {})
    with pytest.raises(RegistryError) as err:
        fresh(MITIGATIONS).names()
    assert "'rri2' is registered twice" in str(err.value)
    assert "one_mod:RRI2" in str(err.value) and "two_mod:Other" in str(err.value)


def test_clash_with_a_builtin_names_both(site: Path) -> None:
    install(site, "shadow", {"harness.tasks": {"passkey": "shadow_mod:Passkey"}}, {})
    with pytest.raises(RegistryError, match=r"tasks.passkey:Passkey and as shadow_mod:Passkey"):
        fresh(TASKS).names()


def test_decorator_registers_and_refuses_a_taken_name() -> None:
    tasks = fresh(TASKS)

    @tasks.register("echo2")
    class Echo2(Task):
        name = "echo2"
        description = "registered in-process"

    assert tasks.get("echo2") is Echo2 and "echo2" in tasks.names()
    with pytest.raises(RegistryError, match="'passkey' is registered twice"):
        tasks.register("passkey")(Echo2)
    with pytest.raises(RegistryError, match="whose name is 'echo2'"):
        tasks.register("echo3")(Echo2)
    with pytest.raises(RegistryError, match=r"not a subclass of tasks\.base:Task"):
        tasks.register("plain")(type("Plain", (), {}))


def test_broken_plugin_costs_nothing_until_asked_for(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(
        site,
        "broken",
        {"harness.tasks": {"broken": "broken_mod:Broken"}},
        {"broken_mod": "raise RuntimeError('this plugin is broken')\n"},
    )
    assert main(["list", "models"]) == 0
    assert main(["list", "mitigations"]) == 0
    assert main(["list", "tasks"]) == 0
    listed = capsys.readouterr().out
    assert "broken: task 'broken' cannot be loaded" in listed and "perplexity:" in listed
    out = tmp_path / "out"
    args = ["run", "--models", "tiny-mamba2", "--tasks", "passkey", "--lengths", "320"]
    assert main([*args, "--samples", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*args[:4], "broken", "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "task 'broken' cannot be loaded from broken_mod:Broken" in err
    assert "this plugin is broken" in err
    assert not (tmp_path / "out2").exists()


def test_unknown_names_list_plugins_without_loading_them(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(site, "lazy", {"harness.mitigations": {"lazy-fix": "lazy_mod:LazyFix"}}, {})
    out = str(tmp_path / "out")
    assert main(["run", "--models", "tiny-mamba2", "--mitigations", "lazyfix", "--out", out]) == 2
    assert "Did you mean lazy-fix?" in capsys.readouterr().err


def imported_by(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `code`."""
    found = f"','.join(m for m in {HEAVY!r} if m in sys.modules)"
    probe = f"{code}\nimport sys\nprint('imported:' + {found})"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    last = done.stdout.strip().splitlines()[-1]
    return [m for m in last.removeprefix("imported:").split(",") if m]


def test_cli_import_and_listing_stay_light() -> None:
    assert imported_by("import harness.cli") == []
    quiet = "import contextlib, io\nfrom harness.cli import main\n"
    for what in ("models", "mitigations"):
        listing = f"{quiet}with contextlib.redirect_stdout(io.StringIO()): main(['list', '{what}'])"
        assert imported_by(listing) == [], what
    tasks = f"{quiet}with contextlib.redirect_stdout(io.StringIO()): main(['list', 'tasks'])"
    assert imported_by(tasks) == ["pyarrow"]  # the tasks' table schemas; no torch


def test_cli_dtype_choices_are_the_runners() -> None:
    from harness.cli import DTYPE_NAMES
    from harness.runner import DTYPES

    assert list(DTYPE_NAMES) == list(DTYPES)


def test_list_into_a_closed_pipe_is_no_error() -> None:
    """`harness list tasks | head -0`: the reader is gone before anything is written."""
    code = "import sys; from harness.cli import main; sys.exit(main(['list', 'tasks']))"
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait() == 0 and err == "", err
