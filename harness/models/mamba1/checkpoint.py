"""Load and save Mamba-1 checkpoints in both formats.

state-spaces (state-spaces/mamba-130m ... mamba-2.8b): config.json + pytorch_model.bin, keys
    backbone.embedding.weight, backbone.layers.{i}.{norm.weight, mixer.*}, backbone.norm_f.weight,
    lm_head.weight (tied to the embedding);
transformers (MambaForCausalLM, state-spaces/mamba-*-hf): config.json with model_type "mamba" +
    model.safetensors, the same keys except backbone.embeddings.weight.
Our module's own names are those keys without "backbone.". Files are found (local directory or
hub download) and read exactly as for Mamba-2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from harness.models.mamba1.config import ConfigError, Mamba1Config
from harness.models.mamba1.model import Mamba1
from harness.models.mamba2.checkpoint import (
    CONFIG,
    SAFETENSORS,
    CheckpointError,
    read_config,
    read_weights,
)

Format = Literal["state-spaces", "hf"]
EMBEDDING_KEYS = {"state-spaces": "backbone.embedding.weight", "hf": "backbone.embeddings.weight"}


def load_mamba1(
    path_or_repo: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Mamba1:
    """A Mamba-1 from a local checkpoint directory or a hub id, in either format."""
    directory, raw = read_config(path_or_repo)
    try:
        config = Mamba1Config.from_dict(raw)
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{directory / CONFIG}: {err}") from None
    embedding = EMBEDDING_KEYS["hf" if raw.get("model_type") == "mamba" else "state-spaces"]
    tensors = {
        ("embedding.weight" if key == embedding else key.removeprefix("backbone.")): tensor
        for key, tensor in read_weights(directory).items()
    }
    with torch.device("meta"):
        model = Mamba1(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
        tensors.pop("lm_head.weight", None)
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != expected:
        wrong = sorted(set(found.items()) ^ set(expected.items()))[:3]
        raise CheckpointError(
            f"{directory}: tensors do not match config.json's Mamba-1 shape; first differences "
            f"(name, shape): {wrong}"
        )
    model.load_state_dict(tensors, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embedding.weight
    return model.to(device=device, dtype=dtype)


def save_pretrained(model: Mamba1, directory: str | Path, format: Format = "state-spaces") -> Path:
    """config.json + model.safetensors in the state-spaces or the transformers ("hf") format."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # tied: the embedding is stored once
        key = EMBEDDING_KEYS[format] if name == "embedding.weight" else name
        key = key if key.startswith(("lm_head.", "backbone.")) else f"backbone.{key}"
        tensors[key] = tensor.detach().contiguous().cpu()
    save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt"})
    as_dict = config.to_transformers() if format == "hf" else config.to_state_spaces()
    (directory / CONFIG).write_text(json.dumps(as_dict, indent=2) + "\n")
    return directory
