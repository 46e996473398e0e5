"""RWKV-6 for training: fresh weights as RWKV-LM initialises them, and a checkpoint folder.

Our engine (harness/models/rwkv6) loads trained weights but builds its parameters as zeros,
and zero LoRAs never move (each factor's gradient is the other's value). `build_rwkv6` draws
the weights the way RWKV-LM's v6 trainer does (Peng et al. 2024, and BlinkDL's RWKV-LM):

- token-shift mixes mu = 1 - (c / C)^p with p from 1 (first layer) to ~0 (last), so early
  layers mix more of the previous token; mu_v adds 0.3 x depth, mu_r and mu_g use p / 2;
- decay d_c = -6 + 5 (c / (C - 1))^(0.7 + 1.3 x depth): channels from slow to fast forgetting;
- bonus u_c = depth x (1 - c / (C - 1)) + ((c + 1) mod 3 - 1) x 0.1;
- LoRAs: first factor zero, second uniform in +-0.01 (or the reverse), so both learn;
- projections orthogonal (gain sqrt(rows / cols) when taller), the key and gate ones scaled
  0.1, the time-mix output, channel-mix value and receptance zero (each block starts as the
  identity); embedding uniform in +-1e-4, head orthogonal with gain 0.5 sqrt(V / C).

`save_hf` writes the Hugging Face conversion's layout (config.json with model_type "rwkv6",
model.safetensors under rwkv.*), which `load_rwkv6` and `harness run` read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from harness.models.rwkv6 import Rwkv6, Rwkv6Config
from harness.models.rwkv6.model import MIX
from harness.models.tokenizer import TextCodec
from harness.train.models import ModelChoiceError, Shape

# our parameter names -> the Hugging Face conversion's: prefixes, then infixes (rwkv.* added)
HF_PREFIXES = [("emb.", "embeddings."), ("ln0.", "blocks.0.pre_ln.")]
HF_INFIXES = [(".att.", ".attention."), (".ffn.", ".feed_forward.")]
ZERO = (".att.output", ".ffn.value", ".ffn.receptance")  # projections that start at zero
SMALL = (".att.key", ".att.gate")  # orthogonal, scaled 0.1


def rwkv6_config(shape: Shape, vocab_size: int) -> Rwkv6Config:
    """The engine's config for a shape; ModelChoiceError when the sizes do not fit."""
    sizes = {"d_model": shape.d_model, "n_layer": shape.n_layer, "head_size": shape.head_size}
    sizes |= {"d_mix": shape.d_mix, "d_decay": shape.d_decay}
    for name, value in sizes.items():
        if value < 1:
            raise ModelChoiceError(f"--{name.replace('_', '-')} must be at least 1")
    if shape.d_ff is not None and shape.d_ff < 1:
        raise ModelChoiceError("--d-ff must be at least 1")
    if shape.d_model % shape.head_size:
        raise ModelChoiceError(
            f"--d-model {shape.d_model} is not a multiple of --head-size {shape.head_size}"
        )
    return Rwkv6Config(
        vocab_size=vocab_size,
        d_model=shape.d_model,
        n_layer=shape.n_layer,
        head_size=shape.head_size,
        d_ffn=shape.d_ff or 0,
        d_mix=shape.d_mix,
        d_decay=shape.d_decay,
    )


def build_rwkv6(shape: Shape, vocab_size: int) -> Rwkv6:
    """An RWKV-6 with fresh weights (RWKV-LM's initialisation) from torch's current seed."""
    model = Rwkv6(rwkv6_config(shape, vocab_size))
    init_weights(model)
    return model


@torch.no_grad()
def init_weights(model: Rwkv6) -> None:
    c = model.config
    C, V = c.d_model, c.vocab_size
    channel = torch.arange(C, dtype=torch.float32)
    for i, block in enumerate(model.blocks):
        depth = i / max(c.n_layer - 1, 1)  # 0 at the first layer, 1 at the last
        keep = 1.0 - i / c.n_layer  # 1 at the first layer, towards 0 at the last
        ramp = channel / C
        att, ffn = block.att, block.ffn
        att.time_maa_x.copy_(1 - ramp**keep)
        powers = {"w": keep, "k": keep, "v": keep, "r": keep / 2, "g": keep / 2}
        for j, mix in enumerate(MIX):
            att.time_maa[j].copy_(1 - ramp ** powers[mix] - (0.3 * depth if mix == "v" else 0))
        att.time_maa_w1.zero_()
        att.time_maa_w2.uniform_(-0.01, 0.01)
        spread = channel / max(C - 1, 1)
        att.time_decay.copy_(-6 + 5 * spread ** (0.7 + 1.3 * depth))
        att.time_decay_w1.zero_()
        att.time_decay_w2.uniform_(-0.01, 0.01)
        bonus = depth * (1 - spread) + ((channel + 1) % 3 - 1) * 0.1
        att.time_faaaa.copy_(bonus.view(c.n_head, c.head_size))
        ffn.time_maa_k.copy_(1 - ramp**keep)
        ffn.time_maa_r.copy_(1 - ramp**keep)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name == "head":
            continue
        if name.endswith(ZERO):
            module.weight.zero_()
            continue
        rows, cols = module.weight.shape
        gain = math.sqrt(rows / cols) if rows > cols else 1.0
        scale = 0.1 if name.endswith(SMALL) else 1.0
        nn.init.orthogonal_(module.weight, gain=gain * scale)
    nn.init.uniform_(model.emb.weight, -1e-4, 1e-4)
    nn.init.orthogonal_(model.head.weight, gain=0.5 * math.sqrt(V / C) if V > C else 0.5)


def hf_name(name: str) -> str:
    """Our parameter name -> the Hugging Face conversion's (before the BlinkDL reshapes)."""
    if name == "head.weight":
        return name
    for old, new in HF_PREFIXES:
        if name.startswith(old):
            name = new + name.removeprefix(old)
    for old, new in HF_INFIXES:
        name = name.replace(old, new)
    return f"rwkv.{name}"


def save_hf(model: Rwkv6, folder: Path) -> None:
    """config.json (model_type rwkv6 and the sizes) + model.safetensors under rwkv.* names,
    the token-shift mixes split and shaped (1, 1, C) as in the released checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if name.endswith(".att.time_maa"):
            for j, mix in enumerate(MIX):
                split = name.replace("time_maa", f"time_maa_{mix}")
                tensors[hf_name(split)] = tensor[j].view(1, 1, -1).clone()
        elif name.endswith(("time_maa_x", "time_decay", "time_maa_k", "time_maa_r")):
            tensors[hf_name(name)] = tensor.view(1, 1, -1).clone()
        else:
            tensors[hf_name(name)] = tensor.clone()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    c = model.config
    config = {
        "model_type": "rwkv6",
        "architectures": ["Rwkv6ForCausalLM"],
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer,
        "head_size": c.head_size,
        "attention_hidden_size": c.d_model,
        "intermediate_size": c.ffn,
        "layer_norm_epsilon": c.norm_eps,
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_for_training(where: Path | str) -> tuple[Rwkv6, TextCodec]:
    """A trained RWKV-6 (folder, .pth file or hub id) in float32 on the CPU, and its tokenizer."""
    from harness.models.loading import rwkv6_tokenizer
    from harness.models.rwkv6 import checkpoint_path, load_rwkv6

    path = checkpoint_path(where)
    module = load_rwkv6(path, device="cpu", dtype=torch.float32)
    return module, rwkv6_tokenizer(path if path.is_dir() else path.parent)
