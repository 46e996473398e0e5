"""Load and save Mamba-2 checkpoints in both formats.

state-spaces (mamba-ssm): config.json + pytorch_model.bin (or model.safetensors), keys
    backbone.embedding.weight, backbone.layers.{i}.{norm, mixer.*}, backbone.norm_f.weight,
    lm_head.weight (tied to the embedding);
transformers (Mamba2ForCausalLM): config.json with model_type "mamba2" + model.safetensors, the
    same keys except backbone.embeddings.weight.
Our module's own names are those keys without "backbone.".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from harness.models.mamba2.config import ConfigError, Mamba2Config
from harness.models.mamba2.model import Mamba2

Format = Literal["state-spaces", "hf"]
CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
HUB_PATTERNS = [CONFIG, "*.safetensors", TORCH_BIN]
EMBEDDING_KEYS = {"state-spaces": "backbone.embedding.weight", "hf": "backbone.embeddings.weight"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: what is missing or misshapen, and where."""


def load_mamba2(
    path_or_repo: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Mamba2:
    """A Mamba-2 from a local checkpoint directory or a hub id, in either format; dtype is that
    of its projections (Mamba2.set_projection_dtype), everything else is float32."""
    directory, raw = read_config(path_or_repo)
    try:
        config = Mamba2Config.from_dict(raw)
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{directory / CONFIG}: {err}") from None
    fmt: Format = "hf" if raw.get("model_type") == "mamba2" else "state-spaces"
    tensors = _module_names(read_weights(directory), fmt)
    with torch.device("meta"):
        model = Mamba2(config)
    _check(tensors, model, directory)
    model.load_state_dict(tensors, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embedding.weight
    return model.to(device=device, dtype=torch.float32).set_projection_dtype(dtype)


def save_pretrained(model: Mamba2, directory: str | Path, format: Format = "state-spaces") -> Path:
    """config.json + model.safetensors in the state-spaces or the transformers ("hf") format."""
    if format not in EMBEDDING_KEYS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose state-spaces or hf")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # tied: the embedding is stored once
        key = name if name.startswith("lm_head.") else f"backbone.{name}"
        tensors[key] = tensor.detach().contiguous().cpu()
    tensors[EMBEDDING_KEYS[format]] = tensors.pop("backbone.embedding.weight")
    save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt"})
    as_dict = config.to_transformers() if format == "hf" else config.to_state_spaces()
    (directory / CONFIG).write_text(json.dumps(as_dict, indent=2) + "\n")
    return directory


def read_config(path_or_repo: str | Path) -> tuple[Path, dict]:
    """The checkpoint folder (downloaded for a hub id) and its config.json."""
    directory = local_dir(path_or_repo)
    config_file = directory / CONFIG
    if not config_file.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG}: not a checkpoint directory")
    return directory, json.loads(config_file.read_text())


def local_dir(path_or_repo: str | Path) -> Path:
    """A local directory as is; otherwise a hub id, downloaded (config and weights only)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; give the checkpoint directory")
        return path
    return hub_snapshot(str(path_or_repo), HUB_PATTERNS)


def hub_snapshot(repo: str, patterns: list[str]) -> Path:
    """The local folder of a hub model's files matching `patterns`, downloaded if needed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{repo!r} is neither a local directory nor a downloadable hub model "
            f"({type(err).__name__}: {err}); offline (HF_HUB_OFFLINE=1), only cached models load"
        ) from None


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of model*.safetensors, else of pytorch_model.bin."""
    shards = sorted(directory.glob("model*.safetensors"))
    if shards:
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_read_safetensors(shard))
        return tensors
    if (directory / TORCH_BIN).is_file():
        return torch.load(directory / TORCH_BIN, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{directory} has no weights: neither model*.safetensors nor {TORCH_BIN}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, each copied into memory of its own, the file mapped for one
    tensor at a time: safetensors' load_file gives views of one mapping of the whole file, all of
    it resident while any of them lives (the dense projections a PackedLinear replaces would stay:
    +270 MiB peak at 130m)."""
    with safe_open(path, framework="pt") as f:
        names = list(f.keys())
    tensors = {}
    for name in names:
        with safe_open(path, framework="pt") as f:
            tensors[name] = f.get_tensor(name).clone()
    return tensors


def _module_names(tensors: dict[str, torch.Tensor], fmt: Format) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> our module's parameter names."""
    renamed = {}
    for key, tensor in tensors.items():
        if key == EMBEDDING_KEYS[fmt]:
            key = "backbone.embedding.weight"
        renamed[key.removeprefix("backbone.")] = tensor
    return renamed


def _check(tensors: dict[str, torch.Tensor], model: Mamba2, directory: Path) -> None:
    """Every parameter present with its shape; nothing left over (the tied head may be)."""
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    tied = model.config.tie_embeddings
    for name, shape in expected.items():
        if name == "lm_head.weight" and tied:
            continue
        if name not in tensors:
            raise CheckpointError(
                f"{directory}: tensor {_key(name)} is missing (expected shape {list(shape)})"
            )
        actual = tuple(tensors[name].shape)
        if actual != shape:
            raise CheckpointError(
                f"{directory}: tensor {_key(name)} has shape {list(actual)}, expected "
                f"{list(shape)} from config.json"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{directory}: tensors not in a {model.config.n_layer}-layer model: "
            f"{', '.join(_key(k) for k in unexpected[:5])}"
        )


def _key(name: str) -> str:
    return name if name.startswith("lm_head.") else f"backbone.{name}"
