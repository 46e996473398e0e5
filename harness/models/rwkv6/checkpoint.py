"""Load and save RWKV-6 checkpoints in both formats.

BlinkDL (the official release, e.g. RWKV-x060-World-1B6-...pth): one torch.save file of
    emb.weight, blocks.0.ln0.*, blocks.{i}.{ln1, ln2, att.*, ffn.*}, ln_out.*, head.weight with
    the token-shift mixes shaped (1, 1, C);
Hugging Face conversion (RWKV/v6-Finch-*-HF): config.json with model_type "rwkv6" + weights
    (pytorch_model*.bin or model*.safetensors) under rwkv.* (emb -> embeddings, ln0 -> pre_ln,
    att -> attention, ffn -> feed_forward), head.weight as is.
The shape (layers, width, heads, ranks) is read from the tensors themselves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from harness.models.mamba2.checkpoint import CheckpointError, hub_snapshot, read_weights
from harness.models.rwkv6.model import MIX, Rwkv6, Rwkv6Config

HF_NAMES = [  # Hugging Face conversion -> BlinkDL, applied in order
    (r"^rwkv\.", ""),
    (r"^embeddings\.", "emb."),
    (r"^blocks\.0\.pre_ln\.", "blocks.0.ln0."),
    (r"\.attention\.", ".att."),
    (r"\.feed_forward\.", ".ffn."),
]


HUB_PATTERNS = ["config.json", "*.safetensors", "*.bin", "*.pth", "*vocab*.txt"]


def is_blinkdl_file(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pth"


def checkpoint_path(path_or_repo: str | Path) -> Path:
    """A local .pth file or folder as is; a hub id downloaded (weights and vocabulary)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        return path
    return hub_snapshot(str(path_or_repo), HUB_PATTERNS)


def load_rwkv6(
    path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Rwkv6:
    """An RWKV-6 from a BlinkDL .pth file (or a folder holding one) or a Hugging Face-format
    folder (see `checkpoint_path` for hub ids)."""
    if is_blinkdl_file(path):
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    else:
        directory = path
        pth = sorted(directory.glob("*.pth"))
        if (directory / "config.json").is_file():
            config = json.loads((directory / "config.json").read_text())
            if config.get("model_type") != "rwkv6":
                raise CheckpointError(f"{directory}: model_type is not rwkv6")
            tensors = _blinkdl_names(read_weights(directory))
        elif len(pth) == 1:
            tensors = torch.load(pth[0], map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{directory}: neither config.json nor a single .pth file")
    return _build(tensors, str(path)).to(device=device, dtype=dtype)


def config_from(tensors: dict[str, torch.Tensor]) -> Rwkv6Config:
    """The shape of an RWKV-6 from its BlinkDL-named tensors."""
    try:
        vocab, C = tensors["emb.weight"].shape
        layers = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
        N = tensors["blocks.0.att.time_faaaa"].shape[1]
        return Rwkv6Config(
            vocab_size=vocab,
            d_model=C,
            n_layer=layers,
            head_size=N,
            d_ffn=tensors["blocks.0.ffn.key.weight"].shape[0],
            d_mix=tensors["blocks.0.att.time_maa_w1"].shape[1] // len(MIX),
            d_decay=tensors["blocks.0.att.time_decay_w1"].shape[1],
        )
    except KeyError as err:
        raise CheckpointError(f"not an RWKV-6 checkpoint: tensor {err} is missing") from None


def save_blinkdl(model: Rwkv6, path: str | Path) -> Path:
    """The official single-file format (what BlinkDL releases and the `rwkv` package reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().clone().cpu()
        if name.startswith("ln0."):
            tensors[f"blocks.0.{name}"] = tensor
        elif name.endswith(".att.time_maa"):
            for i, mix in enumerate(MIX):
                tensors[name.replace("time_maa", f"time_maa_{mix}")] = tensor[i].view(1, 1, -1)
        elif name.endswith(("time_maa_x", "time_decay", "time_maa_k", "time_maa_r")):
            tensors[name] = tensor.view(1, 1, -1)
        else:
            tensors[name] = tensor
    torch.save(tensors, path)
    return path


def _blinkdl_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in tensors.items():
        for pattern, replacement in HF_NAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    return renamed


def _build(tensors: dict[str, torch.Tensor], where: str) -> Rwkv6:
    """Our module from BlinkDL-named tensors: stack the five mixes, flatten (1, 1, C)."""
    config = config_from(tensors)
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.startswith("blocks.0.ln0."):
            ours[key.removeprefix("blocks.0.")] = tensor
        elif re.search(r"\.att\.time_maa_[wkvrg]$", key):
            continue  # stacked below
        elif tensor.dim() == 3 and tensor.shape[:2] == (1, 1):
            ours[key] = tensor.flatten()
        else:
            ours[key] = tensor
    for i in range(config.n_layer):
        names = [f"blocks.{i}.att.time_maa_{mix}" for mix in MIX]
        if not all(n in tensors for n in names):
            raise CheckpointError(f"{where}: block {i} lacks the token-shift mixes time_maa_*")
        ours[f"blocks.{i}.att.time_maa"] = torch.stack([tensors[n].flatten() for n in names])
    with torch.device("meta"):
        model = Rwkv6(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in ours.items()}
    if found != expected:
        wrong = sorted(set(found.items()) ^ set(expected.items()))[:3]
        raise CheckpointError(f"{where}: tensors do not match an RWKV-6 of shape {config}: {wrong}")
    model.load_state_dict(ours, assign=True)
    return model
