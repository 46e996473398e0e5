"""Models and mitigation inputs identified by content: unit ids, `model=` names, reruns."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from harness import identity
from harness.cli import main
from harness.models.loading import resolve
from harness.plan import Unit, parse_mitigation, parse_models
from harness.results import read_table
from tasks.base import TaskOptions
from tasks.passkey import Passkey

WEIGHTS = "model.safetensors"


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def perturb(folder: Path) -> None:
    """New weights in place: one embedding row changed."""
    tensors = load_file(folder / WEIGHTS)
    name = next(k for k in tensors if "embed" in k)
    tensors[name][0] += 1.0
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})


def units(models: str, mitigation: str = "none") -> list[Unit]:
    task = Passkey(TaskOptions(lengths=(512,), samples=1))
    return [
        Unit(task, model, parse_mitigation(mitigation), params, "float32")
        for model in parse_models(models)
        for params in task.units()
    ]


def run(models: str, out: Path, *extra: str) -> int:
    return main(["run", "--models", models, "--lengths", "512", "--samples", "1",
                 "--out", str(out), *extra])  # fmt: skip


def test_a_copy_in_another_folder_has_the_same_identity_and_unit_ids(
    neox_dir: Path, tmp_path: Path
) -> None:
    a = copy(neox_dir, tmp_path / "A" / "ckpt")
    b = copy(neox_dir, tmp_path / "B" / "elsewhere")
    [ua], [ub] = units(str(a)), units(str(b))
    assert ua.model_id == ub.model_id and ua.id == ub.id
    assert len(ua.model_id) == identity.LENGTH
    assert ua.model.name == f"ckpt@{ua.model_id[: identity.SUFFIX]}"
    assert ub.model.name == f"elsewhere@{ua.model_id[: identity.SUFFIX]}"


def test_weights_config_and_tokenizer_each_change_the_identity(
    neox_dir: Path, tmp_path: Path
) -> None:
    folder = copy(neox_dir, tmp_path / "ckpt")
    seen = [identity.folder_identity(folder)]
    perturb(folder)
    seen.append(identity.folder_identity(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-3}))
    seen.append(identity.folder_identity(folder))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "model_max_length": 7}))
    seen.append(identity.folder_identity(folder))
    assert len(set(seen)) == 4
    (folder / "MODEL_CARD.md").write_text("notes do not change what the model computes")
    assert identity.folder_identity(folder) == seen[-1]


def test_a_single_checkpoint_file_counts_with_the_vocabulary_beside_it(tmp_path: Path) -> None:
    weights = tmp_path / "RWKV-x060-World-1B6.pth"
    weights.write_bytes(b"weights")
    (tmp_path / "notes.txt").write_text("not part of the model")
    assert identity.model_files(weights) == [weights]
    alone = identity.folder_identity(weights, "rwkv package World vocabulary")
    (tmp_path / "rwkv_vocab_v20230424.txt").write_text("1 'a' 1")
    assert identity.model_files(weights)[1].name == "rwkv_vocab_v20230424.txt"
    beside = identity.folder_identity(weights, "rwkv package World vocabulary")
    assert identity.folder_identity(tmp_path) == beside  # the folder holding it: the same
    assert alone != beside


def test_tiny_bundled_and_hub_models_keep_their_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_m, tiny_p, bundled = parse_models("tiny-mamba2,tiny-pythia,mamba2-bytes-320")
    assert (tiny_m.name, tiny_p.name, bundled.name) == (
        "tiny-mamba2",
        "tiny-pythia",
        "mamba2-bytes-320",
    )
    assert len({tiny_m.id, tiny_p.id, bundled.id}) == 3
    assert bundled.id == identity.folder_identity(bundled.path)  # by its files
    # (parse_models also needs the hub repository fetchable: identify alone here)
    catalog = identity.identify(resolve("mamba2-130m"))
    assert catalog.name == "mamba2-130m"
    uncached = catalog.id
    # A cached snapshot (the hub cache's layout): the identity takes its commit.
    import huggingface_hub.constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--state-spaces--mamba2-130m"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert identity.hub_revision("state-spaces/mamba2-130m") == sha
    cached = identity.identify(resolve("mamba2-130m"))
    assert cached.id != uncached and cached.name == "mamba2-130m"


def test_digests_come_from_the_cache_while_size_mtime_and_inode_match(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    first = identity.CACHE.digest(path)
    identity.CACHE.save()
    stored = json.loads(identity.cache_file().read_text())["files"]
    assert stored[str(path.resolve())]["sha256"] == first
    # The cache is believed while the stat key matches (a planted digest is returned) ...
    stored[str(path.resolve())]["sha256"] = "planted"
    identity.cache_file().write_text(json.dumps({"version": 1, "files": stored}))
    identity.CACHE.loaded_from = None
    assert identity.CACHE.digest(path) == "planted"
    # ... and not once the file changed.
    path.write_bytes(b"two!")
    assert identity.CACHE.digest(path) not in {"planted", first}


def test_same_name_other_identity_slot_and_id() -> None:
    """Under a name kept across versions, a changed model reuses the part file (slot) but
    not the unit id, so the part is replaced instead of rows added beside it."""
    [unit] = units("tiny-mamba2")
    other = Unit(
        unit.task, replace(unit.model, id="f" * 12), unit.mitigation, unit.params, "float32"
    )
    assert other.slot == unit.slot and other.id != unit.id


def test_two_checkpoints_in_folders_of_one_name_are_two_models(
    neox_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = copy(neox_dir, tmp_path / "A" / "ckpt")
    b = copy(neox_dir, tmp_path / "B" / "ckpt")
    perturb(b)
    out = tmp_path / "results"
    assert run(str(a), out) == 0
    assert "identities" not in capsys.readouterr().err
    assert run(str(b), out) == 0
    err = capsys.readouterr().err
    assert err.count("harness: warning: model name 'ckpt' has 2 identities") == 1
    rows = read_table(out, "passkey").to_pylist()
    by_model = {(r["model"], r["model_id"]) for r in rows}
    assert len(by_model) == 2 and len({m for m, _ in by_model}) == 2
    assert all(m == f"ckpt@{i[: identity.SUFFIX]}" for m, i in by_model)


def test_changed_weights_run_again(neox_dir: Path, tmp_path: Path) -> None:
    folder = copy(neox_dir, tmp_path / "ckpt")
    out = tmp_path / "results"
    assert run(str(folder), out) == 0
    assert run(str(folder), out) == 0
    assert len(read_table(out, "passkey")) == 1  # unchanged: nothing to do
    perturb(folder)
    assert run(str(folder), out) == 0
    rows = read_table(out, "passkey").to_pylist()
    assert len(rows) == 2 and len({r["model_id"] for r in rows}) == 2


def test_changed_mitigation_file_runs_again_and_replaces_the_part(tmp_path: Path) -> None:
    scales = tmp_path / "scales.json"
    scales.write_text("[0.5, 0.5]")
    spec = f"dt-scale:file={scales}"
    out = tmp_path / "results"
    assert run("tiny-mamba2", out, "--mitigations", spec) == 0
    [before] = read_table(out, "passkey").to_pylist()
    manifest = json.loads(next((out / "runs").glob("*.json")).read_text())
    [(recorded_spec, inputs)] = manifest["config"]["mitigation_inputs"].items()
    assert inputs == {"scales.json": identity.CACHE.digest(scales)[: identity.LENGTH]}
    assert run("tiny-mamba2", out, "--mitigations", spec) == 0
    assert len(list((out / "runs").glob("*.json"))) == 1  # nothing to do
    scales.write_text("[0.25, 0.5]")
    assert run("tiny-mamba2", out, "--mitigations", spec) == 0
    [after] = read_table(out, "passkey").to_pylist()
    assert after["unit_id"] != before["unit_id"] and after["run_id"] != before["run_id"]
    assert len(list(out.rglob("part-*.parquet"))) == 1
    assert recorded_spec == after["mitigation"]


def test_unit_ids_do_not_depend_on_the_working_directory(
    neox_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy(neox_dir, tmp_path / "ckpt")
    [absolute] = units(str(folder))
    monkeypatch.chdir(tmp_path)
    [relative] = units("ckpt")
    assert absolute.id == relative.id and absolute.slot == relative.slot
    assert resolve("ckpt").name == "ckpt"  # resolving alone does not hash


def test_two_processes_saving_the_cache_keep_each_others_digests(tmp_path: Path) -> None:
    one, two = tmp_path / "one.bin", tmp_path / "two.bin"
    one.write_bytes(b"1")
    two.write_bytes(b"2")
    first, second = identity.DigestCache(), identity.DigestCache()
    first.digest(one)
    second.digest(two)
    first.save()
    second.save()
    stored = json.loads(identity.cache_file().read_text())["files"]
    assert {str(one.resolve()), str(two.resolve())} <= set(stored)


def test_every_mitigation_at_its_defaults_reads_no_file() -> None:
    """A spec without `file=` names no input file (and building its units does not fail)."""
    from harness.mitigations import parse_mitigation
    from harness.registry import MITIGATIONS

    for name in MITIGATIONS.names():
        assert identity.input_identities(parse_mitigation(name)) == {}, name


def scale_file(folder: Path, name: str = "s.json", text: str = "[0.5, 0.25]") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_a_mitigation_file_is_one_unit_however_its_path_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a relative path, ./path, an absolute path, a copy in another folder or under
    another name: one id (by content); the spec and slot name the file by its name only."""
    monkeypatch.chdir(tmp_path)
    scale_file(tmp_path / "cal")
    scale_file(tmp_path / "elsewhere")
    scale_file(tmp_path / "elsewhere", "t.json")
    spellings = ["cal/s.json", "./cal/s.json", "cal/../cal/s.json", str(tmp_path / "cal/s.json")]
    found = [units("tiny-mamba2", f"dt-scale:file={f}")[0] for f in spellings]
    [copy_] = units("tiny-mamba2", "dt-scale:file=elsewhere/s.json")
    [renamed] = units("tiny-mamba2", "dt-scale:file=elsewhere/t.json")
    assert {u.mitigation.spec for u in [*found, copy_]} == {"dt-scale:file=s.json:s=0.2"}
    assert len({u.id for u in [*found, copy_, renamed]}) == 1
    assert len({u.slot for u in [*found, copy_]}) == 1 and renamed.slot != copy_.slot
    assert found[0].inputs == {"s.json": identity.CACHE.digest(Path("cal/s.json"))[:12]}
    # other bytes: another id in the same slot (the new rows replace the old)
    scale_file(tmp_path / "other", text="[0.5, 0.5]")
    [changed] = units("tiny-mamba2", "dt-scale:file=other/s.json")
    assert changed.id != copy_.id and changed.slot == copy_.slot
    # the same bytes under another scale, or as a-scale: other ids
    [s_other] = units("tiny-mamba2", "dt-scale:file=cal/s.json:s=0.3")
    [a_scale] = units("tiny-mamba2", "a-scale:file=cal/s.json")
    assert len({copy_.id, s_other.id, a_scale.id}) == 3


def test_units_without_input_files_keep_the_ids_of_results_already_written() -> None:
    """The committed reference results (written before files were named by content): the
    same plan today gives their unit ids and part names, so a resume there runs nothing."""
    from harness.plan import build_plan, parse_tasks
    from harness.results import read_table

    out = Path(__file__).parents[1] / "results/reference/mitigations/results"
    options = TaskOptions(lengths=(320, 640), extra={"perplexity": {"source": "sonnets"}})
    mitigations = [parse_mitigation(m) for m in ("none", "rri", "a-scale", "window:r=320")]
    plan = build_plan(
        parse_models("mamba2-bytes-320"), mitigations, parse_tasks("perplexity", options), "float32"
    )
    rows = read_table(out, "perplexity").to_pylist()
    written = {(r["model_id"], r["mitigation"], r["unit_params"]): r["unit_id"] for r in rows}
    for unit in plan.units:
        key = (unit.model_id, unit.mitigation.spec, json.dumps(unit.params, sort_keys=True))
        assert written[key] == unit.id, key
        folder = out / "perplexity/model=mamba2-bytes-320"
        assert list(folder.glob(f"mitigation=*/part-{unit.slot}.parquet")), key
    assert len(plan.units) == 8


def test_resume_after_changing_how_the_file_path_is_written_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scale_file(tmp_path / "cal")
    out = Path("results")
    assert run("tiny-mamba2", out, "--mitigations", "dt-scale:file=cal/s.json") == 0
    manifests = sorted((out / "runs").rglob("*.json"))
    parts = sorted(out.rglob("part-*.parquet"))
    for spelling in ["./cal/s.json", str(tmp_path / "cal" / "s.json"), "cal//s.json"]:
        assert run("tiny-mamba2", out, "--mitigations", f"dt-scale:file={spelling}") == 0
    shutil.copytree(tmp_path / "cal", tmp_path / "moved")
    assert run("tiny-mamba2", out, "--mitigations", "dt-scale:file=moved/s.json") == 0
    assert sorted((out / "runs").rglob("*.json")) == manifests
    assert sorted(out.rglob("part-*.parquet")) == parts
    [row] = read_table(out, "passkey").to_pylist()
    assert row["mitigation"] == "dt-scale:file=s.json:s=0.2"


def test_two_spellings_in_one_run_are_one_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scale_file(tmp_path / "cal")
    scale_file(tmp_path / "copy", "t.json")
    spellings = f"dt-scale:file=cal/s.json,dt-scale:file=./cal/s.json,dt-scale:file={tmp_path}/"
    spellings += "cal/s.json,dt-scale:file=copy/t.json"
    assert run("tiny-mamba2", Path("results"), "--mitigations", spellings) == 0
    [row] = read_table(Path("results"), "passkey").to_pylist()
    assert row["mitigation"] == "dt-scale:file=s.json:s=0.2"
    [manifest] = (Path("results") / "runs").glob("*.json")
    config = json.loads(manifest.read_text())["config"]
    assert config["mitigations"] == ["dt-scale:file=s.json:s=0.2"]


def test_two_different_files_of_one_name_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    scale_file(tmp_path / "a")
    scale_file(tmp_path / "b", text="[0.5, 0.5]")
    both = "dt-scale:file=a/s.json,dt-scale:file=b/s.json"
    for spec in [both, "dt-scale:file=a/s.json+a-scale:file=b/s.json"]:
        assert run("tiny-mamba2", Path("results"), "--mitigations", spec) == 2
        err = capsys.readouterr().err
        assert "a/s.json" in err and "b/s.json" in err and "rename one" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not Path("results").exists()


def test_a_results_tree_holds_no_path_of_where_it_lies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run manifests (the driver's and the workers') name no folder of this machine: not the
    results folder, not where a mitigation file lies (the command is recorded as typed)."""
    monkeypatch.chdir(tmp_path)
    scale = scale_file(tmp_path / "cal")
    assert run("tiny-mamba2", Path("results"), "--mitigations", f"dt-scale:file={scale}") == 0
    manifest_path = next(Path("results/runs").glob("*.json"))
    manifest = json.loads(manifest_path.read_text())
    assert str(tmp_path) in " ".join(manifest.pop("command"))
    workers = list(Path("results/runs").glob("*/*.json"))
    assert workers
    for text in [json.dumps(manifest), *(p.read_text() for p in workers)]:
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text
    assert "out" not in manifest["config"]
    assert manifest["config"]["mitigation_inputs"] == {
        "dt-scale:file=s.json:s=0.2": {"s.json": identity.CACHE.digest(scale)[:12]}
    }


def strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_committed_manifests_name_no_folder_of_the_machine_that_wrote_them() -> None:
    """results/reference: no absolute path in any run or worker manifest, the command as
    typed aside."""
    manifests = list(
        (Path(__file__).parents[1] / "results/reference").glob("*/results/runs/**/*.json")
    )
    assert len(manifests) > 10
    for path in manifests:
        manifest = json.loads(path.read_text())
        manifest.pop("command", None)
        assert "out" not in manifest.get("config", {}), path
        assert not [s for s in strings(manifest) if s.startswith("/")], path
