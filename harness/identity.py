"""Content identity of models and mitigation input files: short hex names that change when
what determines a result changes, and only then.

- A checkpoint folder (a local one or a bundled model): a hash of the files that determine
  its outputs (config, weights, tokenizer), each named relative to the folder, so a copy in
  another folder has the same identity and another checkpoint in a folder of the same name
  has another.
- A built-in tiny model: its name, family and construction settings (weights come from a
  fixed seed).
- A catalog or hub model: its repo id and the commit of the snapshot huggingface_hub has
  cached, when it has one.
- A mitigation input file (`dt-scale:file=...`): a hash of its bytes (the unit id digests it in
  place of the path, so how the path is written and where the file lies do not count).

Hashing a checkpoint of several GB on every run is too slow, so file digests are cached by
(resolved path, size, mtime_ns, inode) in a JSON file in $HARNESS_CACHE_DIR, else
$XDG_CACHE_HOME/harness, else ~/.cache/harness, written atomically. A file rewritten in place
at the same size within one mtime tick would be missed, which no checkpoint writer does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.mitigations.base import Mitigation
    from harness.models.loading import ModelSource

LENGTH = 12  # hex characters of an identity
SUFFIX = 8  # hex characters of an identity in a local checkpoint's `model=` name
SUFFIXED = re.compile(rf"^(?P<name>.+)@[0-9a-f]{{{SUFFIX}}}$")
# The files of a checkpoint folder that determine its outputs (top level only, as loaded).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
    "*.pth",  # RWKV-6 in BlinkDL's format
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "*vocab*.txt",  # vocab.txt, the RWKV World vocabulary
    "merges.txt",
)
# The tokenizer a family's loader falls back to when a checkpoint has none beside it.
FALLBACK_TOKENIZER = {"rwkv6": "rwkv package World vocabulary"}


def cache_file() -> Path:
    if folder := os.environ.get("HARNESS_CACHE_DIR"):
        return Path(folder) / "digests.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "harness" / "digests.json"


class DigestCache:
    """sha256 of files, remembered by (resolved path, size, mtime_ns, inode)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.loaded_from: Path | None = None
        self.dirty = False

    def _load(self) -> None:
        path = cache_file()
        if self.loaded_from == path:
            return
        self.loaded_from, self.dirty = path, False
        self.entries = self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, dict[str, Any]]:
        try:
            return dict(json.loads(path.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def digest(self, path: Path) -> str:
        self._load()
        resolved = path.resolve()
        stat = resolved.stat()
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
        entry = self.entries.get(str(resolved))
        if entry is not None and all(entry.get(k) == v for k, v in key.items()):
            return str(entry["sha256"])
        with open(resolved, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        self.entries[str(resolved)] = {**key, "sha256": sha}
        self.dirty = True
        return sha

    def save(self) -> None:
        """Write the cache atomically, merged with what other processes wrote meanwhile
        (entries of files that no longer exist dropped); a cache that cannot be written is
        only a slower next run."""
        if not self.dirty or self.loaded_from is None:
            return
        path = self.loaded_from
        merged = {**self._read(path), **self.entries}
        self.entries = {p: e for p, e in merged.items() if Path(p).exists()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": 1, "files": self.entries}))
            os.replace(tmp, path)
            self.dirty = False
        except OSError:
            tmp.unlink(missing_ok=True)


CACHE = DigestCache()


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]


def model_files(path: Path) -> list[Path]:
    """The files of a checkpoint folder that determine its outputs, sorted by name; for a
    checkpoint given as one file (an RWKV .pth), that file and the vocabulary beside it."""
    if path.is_file():
        return sorted({path, *(p for p in path.parent.glob("*vocab*.txt") if p.is_file())})
    found = {p for pattern in MODEL_FILES for p in path.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.name)


def folder_identity(folder: Path, tokenizer: str | None = None) -> str:
    """A checkpoint folder (or single checkpoint file) by content; `tokenizer`: what its
    loader falls back to when there are no tokenizer files beside it."""
    files = {p.name: CACHE.digest(p) for p in model_files(folder)}
    CACHE.save()
    has_tokenizer = any("tokenizer" in name or "vocab" in name for name in files)
    return _hash({"files": files, "tokenizer": None if has_tokenizer else tokenizer})


def tiny_identity(name: str, family: str, settings: dict[str, Any]) -> str:
    return _hash({"tiny": name, "family": family, "settings": settings})


def hub_revision(repo: str) -> str | None:
    """The commit of the snapshot of `repo` that huggingface_hub has cached, if any."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return Path(found).parent.name if isinstance(found, str) else None


def hub_identity(repo: str, tokenizer: str | None) -> str:
    """Repo id plus the cached snapshot's commit. Before the first download the commit is
    unknown and the identity is the repo id alone (so a first and a later run of a catalog
    model not yet cached can differ once). The tokenizer repo counts by id only: it is
    downloaded when the model loads, after the identity is needed."""
    return _hash({"hub": repo, "revision": hub_revision(repo), "tokenizer": tokenizer})


def model_identity(source: ModelSource) -> str:
    from harness.models.catalog import NEOX_TOKENIZER
    from harness.models.tiny import TINY_MODELS

    if source.ref in TINY_MODELS:
        tiny = TINY_MODELS[source.ref]
        return tiny_identity(source.ref, tiny.family, tiny.settings)
    # transformers checkpoints load their own tokenizer (none: the load fails, no fallback)
    fallback = None if source.family == "transformer" else NEOX_TOKENIZER
    fallback = FALLBACK_TOKENIZER.get(source.family, fallback)
    fallback = source.spec.tokenizer if source.spec else fallback
    if source.path is not None:
        return folder_identity(source.path, fallback)
    assert source.repo is not None, f"model {source.ref!r} is neither local, tiny nor hub"
    return hub_identity(source.repo, fallback)


def identify(source: ModelSource) -> ModelSource:
    """The source with its identity, and, for a checkpoint folder given by path, a `model=`
    name `<folder name>@<identity prefix>` (two checkpoints in folders of one name differ;
    catalog, bundled, tiny and hub names stay as they are)."""
    if source.id is not None:
        return source
    from harness.models.bundled import bundled_models

    model_id = model_identity(source)
    local = source.path is not None and source.ref not in bundled_models()
    name = f"{source.name}@{model_id[:SUFFIX]}" if local else source.name
    return replace(source, id=model_id, name=name)


def display_name(partition: str) -> str:
    """The name a user knows a model by, from its `model=` folder name (`ckpt@3fa2c1d0`)."""
    m = SUFFIXED.match(partition)
    return m["name"] if m else partition


def clashes(out: Path, models: list[ModelSource]) -> list[str]:
    """A one-line warning for each model whose display name has other identities in `out`
    (two checkpoints in folders of one name, or weights changed under a kept name)."""
    from harness import results

    warnings = []
    for model in models:
        name = display_name(model.name)
        found = results.model_ids(out, lambda p, name=name: display_name(p) == name)
        others = sorted(found - {model.id})
        if others:
            warnings.append(
                f"model name {name!r} has {len(others) + 1} identities in {out}: {model.id} "
                f"(this run, {model.name}) and {', '.join(others)}; rows are told apart by "
                "the model_id column and the model= folder"
            )
    return warnings


def input_identities(mitigation: Mitigation) -> dict[str, str]:
    """Each file the mitigation reads (its path as given) -> its content identity."""
    found = {str(p): CACHE.digest(Path(p))[:LENGTH] for p in mitigation.input_files()}
    CACHE.save()
    return found
