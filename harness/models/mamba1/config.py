"""Mamba-1 shapes, read from a state-spaces or a transformers (MambaForCausalLM) config.json.

state-spaces (mamba-ssm's MambaConfig): {"d_model", "n_layer", "vocab_size", "ssm_cfg": {...},
"rms_norm", "pad_vocab_size_multiple", ...}, where an ssm_cfg without "layer" (or with
"layer": "Mamba1") is Mamba-1 and its keys override the Mamba-1 mixer defaults below.
transformers: model_type "mamba" with hidden_size, num_hidden_layers, state_size, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config.json that does not describe a Mamba-1 model this engine runs."""


@dataclass(frozen=True)
class Mamba1Config:
    d_model: int
    n_layer: int
    vocab_size: int  # tokens the tokenizer knows; the embedding is padded (padded_vocab_size)
    d_state: int = 16  # N: state entries per channel
    d_conv: int = 4  # causal depthwise conv kernel
    expand: int = 2  # d_inner = expand * d_model channels
    dt_rank: int = 0  # width of the low-rank dt projection; 0 = ceil(d_model / 16) ("auto")
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    conv_bias: bool = True
    bias: bool = False  # in_proj and out_proj

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    @property
    def state_size(self) -> int:
        """SSM state elements over all layers (the paper's N_S): d_inner x d_state per layer."""
        return self.n_layer * self.d_inner * self.d_state

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Mamba1Config:
        if config.get("model_type") == "mamba":
            return _from_transformers(config)
        if "d_model" in config and "n_layer" in config:
            return _from_state_spaces(config)
        raise ConfigError(
            "config.json is neither a state-spaces Mamba config (d_model, n_layer) nor a "
            f"transformers one (model_type 'mamba'); its keys: {sorted(config)}"
        )

    def to_state_spaces(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": {
                "d_state": self.d_state,
                "d_conv": self.d_conv,
                "expand": self.expand,
                "dt_rank": self.dt_rank or "auto",
                "conv_bias": self.conv_bias,
                "bias": self.bias,
            },
            "rms_norm": True,
            "residual_in_fp32": True,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
            "norm_epsilon": self.norm_eps,
        }

    def to_transformers(self) -> dict[str, Any]:
        """A config.json that transformers' MambaForCausalLM loads (vocab = padded size)."""
        return {
            "model_type": "mamba",
            "architectures": ["MambaForCausalLM"],
            "vocab_size": self.padded_vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "intermediate_size": self.d_inner,
            "time_step_rank": self.rank,
            "layer_norm_epsilon": self.norm_eps,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "hidden_act": "silu",
            "residual_in_fp32": True,
            "tie_word_embeddings": self.tie_embeddings,
        }


_SSM_CFG_KEYS = {"d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias"}
# mamba-ssm Mamba-1 mixer arguments that only shape the initialisation or the kernels
_SSM_CFG_IGNORED = {
    "layer",
    "dt_min",
    "dt_max",
    "dt_init",
    "dt_scale",
    "dt_init_floor",
    "use_fast_path",
}


def _from_state_spaces(config: dict[str, Any]) -> Mamba1Config:
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    if ssm_cfg.get("layer", "Mamba1") != "Mamba1":
        raise ConfigError(f"ssm_cfg.layer is {ssm_cfg['layer']!r}: not a Mamba-1 model")
    if config.get("d_intermediate", 0) or config.get("attn_layer_idx"):
        raise ConfigError("MLP (d_intermediate > 0) or attention layers are not supported")
    if not config.get("rms_norm", True):
        raise ConfigError("rms_norm = false (LayerNorm blocks) is not supported")
    unknown = set(ssm_cfg) - _SSM_CFG_KEYS - _SSM_CFG_IGNORED
    if unknown:
        raise ConfigError(f"unknown ssm_cfg keys {sorted(unknown)}")
    dt_rank = ssm_cfg.pop("dt_rank", "auto")
    return Mamba1Config(
        d_model=config["d_model"],
        n_layer=config["n_layer"],
        vocab_size=config["vocab_size"],
        dt_rank=0 if dt_rank == "auto" else int(dt_rank),
        pad_vocab_size_multiple=config.get("pad_vocab_size_multiple", 8),
        tie_embeddings=config.get("tie_embeddings", True),
        norm_eps=config.get("norm_epsilon", 1e-5),
        **{key: ssm_cfg[key] for key in _SSM_CFG_KEYS - {"dt_rank"} if key in ssm_cfg},
    )


# transformers' MambaConfig class defaults: its config.json may omit any of these.
_TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50280,
    "hidden_size": 768,
    "state_size": 16,
    "num_hidden_layers": 32,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "time_step_rank": "auto",
    "tie_word_embeddings": True,
}


def _from_transformers(config: dict[str, Any]) -> Mamba1Config:
    c = _TRANSFORMERS_DEFAULTS | config
    if c["hidden_act"] != "silu":
        raise ConfigError(f"hidden_act {c['hidden_act']!r} is not supported (only 'silu')")
    d_inner = c["expand"] * c["hidden_size"]
    if c.get("intermediate_size", d_inner) != d_inner:
        raise ConfigError(
            f"intermediate_size {c['intermediate_size']} must equal expand * hidden_size {d_inner}"
        )
    rank = c["time_step_rank"]
    return Mamba1Config(
        d_model=c["hidden_size"],
        n_layer=c["num_hidden_layers"],
        vocab_size=c["vocab_size"],
        d_state=c["state_size"],
        d_conv=c["conv_kernel"],
        expand=c["expand"],
        dt_rank=0 if rank == "auto" else int(rank),
        pad_vocab_size_multiple=1,  # transformers' embedding has exactly vocab_size rows
        tie_embeddings=c["tie_word_embeddings"],
        norm_eps=c["layer_norm_epsilon"],
        conv_bias=c["use_conv_bias"],
        bias=c["use_bias"],
    )
