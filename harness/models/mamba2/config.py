"""Mamba-2 hyperparameters, read from either checkpoint format's config.json.

Two formats exist for the same weights:
  state-spaces (mamba-ssm): {"d_model", "n_layer", "vocab_size", "ssm_cfg": {"layer": "Mamba2"}}
    where ssm_cfg lists only what differs from mamba-ssm's defaults (d_state 128, headdim 64...);
  transformers (model_type "mamba2"): {"hidden_size", "num_hidden_layers", "num_heads",
    "head_dim", "state_size", "n_groups", ...}; keys equal to transformers' class defaults may
    be left out of the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A config.json that describes no Mamba-2 model this engine can run."""


_POSITIVE = (
    "d_model",
    "n_layer",
    "vocab_size",
    "d_state",
    "headdim",
    "expand",
    "ngroups",
    "d_conv",
    "chunk_size",
    "pad_vocab_size_multiple",
)


@dataclass(frozen=True)
class Mamba2Config:
    d_model: int
    n_layer: int
    vocab_size: int  # tokens the tokenizer knows; the embedding is padded (padded_vocab_size)
    d_state: int = 128  # N
    headdim: int = 64  # P
    expand: int = 2
    ngroups: int = 1  # G: B and C are shared by the heads of a group
    d_conv: int = 4
    chunk_size: int = 256
    pad_vocab_size_multiple: int = 16
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    conv_bias: bool = True
    bias: bool = False  # in_proj and out_proj

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            _check_positive(name, getattr(self, name))
        if self.d_inner % self.headdim:
            raise ConfigError(
                f"expand * d_model = {self.d_inner} is not a multiple of headdim {self.headdim}"
            )
        if self.nheads % self.ngroups:
            raise ConfigError(
                f"{self.nheads} heads cannot be split evenly among ngroups = {self.ngroups}"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:  # H
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: [x, B, C]."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        """Width of in_proj's output: [z, x, B, C, dt]."""
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return math.ceil(self.vocab_size / m) * m

    @property
    def state_size(self) -> int:
        """SSM state elements over all layers (the paper's N_S)."""
        return self.n_layer * self.nheads * self.headdim * self.d_state

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Mamba2Config:
        """From a state-spaces or a transformers config.json."""
        if config.get("model_type") == "mamba2":
            return _from_transformers(config)
        if "d_model" in config and "n_layer" in config:
            return _from_state_spaces(config)
        raise ConfigError(
            "config.json is neither a state-spaces Mamba-2 config (d_model, n_layer, ssm_cfg) "
            f"nor a transformers one (model_type 'mamba2'); its keys: {sorted(config)}"
        )

    def to_state_spaces(self) -> dict[str, Any]:
        """mamba-ssm's MambaConfig as a dict, ssm_cfg listing what differs from its defaults."""
        ssm_cfg: dict[str, Any] = {"layer": "Mamba2"}
        defaults = {f.name: f.default for f in fields(Mamba2Config)}
        for name in (*sorted(_SSM_CFG_KEYS), "conv_bias", "bias"):
            if getattr(self, name) != defaults[name]:
                ssm_cfg[name] = getattr(self, name)
        return {
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": ssm_cfg,
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": True,
            "residual_in_fp32": True,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
            "norm_epsilon": self.norm_eps,
        }

    def to_transformers(self) -> dict[str, Any]:
        """A config.json that transformers' Mamba2ForCausalLM loads (vocab = padded size)."""
        return {
            "model_type": "mamba2",
            "architectures": ["Mamba2ForCausalLM"],
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "vocab_size": self.padded_vocab_size,
            "state_size": self.d_state,
            "head_dim": self.headdim,
            "num_heads": self.nheads,
            "expand": self.expand,
            "n_groups": self.ngroups,
            "conv_kernel": self.d_conv,
            "chunk_size": self.chunk_size,
            "tie_word_embeddings": self.tie_embeddings,
            "layer_norm_epsilon": self.norm_eps,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "residual_in_fp32": True,
            "hidden_act": "silu",
        }


# mamba-ssm's Mamba2 arguments that change the computation, with the only value we run.
_SSM_CFG_FIXED: dict[str, Any] = {
    "d_ssm": None,
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "dt_limit": (0.0, math.inf),
}
# ...and those that only matter when training from scratch (initialisation) or for kernels.
_SSM_CFG_IGNORED = frozenset(
    {
        "layer",
        "A_init_range",
        "dt_min",
        "dt_max",
        "dt_init_floor",
        "conv_init",
        "use_mem_eff_path",
    }
)
_SSM_CFG_KEYS = {"d_state", "headdim", "expand", "ngroups", "d_conv", "chunk_size"}

# transformers' Mamba2Config class defaults: its config.json may omit any of these.
_TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "num_heads": 128,
    "head_dim": 64,
    "vocab_size": 32768,
    "hidden_size": 4096,
    "state_size": 128,
    "num_hidden_layers": 64,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "n_groups": 8,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "chunk_size": 256,
    "tie_word_embeddings": False,
}


def _from_state_spaces(config: dict[str, Any]) -> Mamba2Config:
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    if ssm_cfg.get("layer", "Mamba1") != "Mamba2":
        raise ConfigError(
            f"ssm_cfg.layer is {ssm_cfg.get('layer', 'Mamba1 (by default)')!r}: not a Mamba-2 model"
        )
    if config.get("d_intermediate", 0) or config.get("attn_layer_idx"):
        raise ConfigError("MLP (d_intermediate > 0) or attention layers are not supported")
    if not config.get("rms_norm", True):
        raise ConfigError("rms_norm = false (LayerNorm blocks) is not supported")
    for key, value in _SSM_CFG_FIXED.items():
        if key in ssm_cfg and _normalise(ssm_cfg[key]) != _normalise(value):
            raise ConfigError(f"ssm_cfg.{key} = {ssm_cfg[key]!r} is not supported (only {value!r})")
    unknown = set(ssm_cfg) - _SSM_CFG_KEYS - set(_SSM_CFG_FIXED) - _SSM_CFG_IGNORED
    unknown -= {"conv_bias", "bias"}
    if unknown:
        raise ConfigError(f"unknown ssm_cfg keys {sorted(unknown)}")
    return Mamba2Config(
        d_model=config["d_model"],
        n_layer=config["n_layer"],
        vocab_size=config["vocab_size"],
        pad_vocab_size_multiple=config.get("pad_vocab_size_multiple", 8),
        tie_embeddings=config.get("tie_embeddings", True),
        norm_eps=config.get("norm_epsilon", 1e-5),
        conv_bias=ssm_cfg.get("conv_bias", True),
        bias=ssm_cfg.get("bias", False),
        **{key: ssm_cfg[key] for key in _SSM_CFG_KEYS if key in ssm_cfg},
    )


def _from_transformers(config: dict[str, Any]) -> Mamba2Config:
    c = _TRANSFORMERS_DEFAULTS | config
    if c["hidden_act"] != "silu":
        raise ConfigError(f"hidden_act {c['hidden_act']!r} is not supported (only 'silu')")
    limit = c.get("time_step_limit")
    if limit is not None and _normalise(limit) != _normalise((0.0, math.inf)):
        raise ConfigError(f"time_step_limit {limit!r} is not supported (only (0.0, inf))")
    d_inner = c["expand"] * c["hidden_size"]
    if c["num_heads"] * c["head_dim"] != d_inner:
        raise ConfigError(
            f"num_heads * head_dim = {c['num_heads']} * {c['head_dim']} must equal "
            f"expand * hidden_size = {d_inner}"
        )
    return Mamba2Config(
        d_model=c["hidden_size"],
        n_layer=c["num_hidden_layers"],
        vocab_size=c["vocab_size"],
        d_state=c["state_size"],
        headdim=c["head_dim"],
        expand=c["expand"],
        ngroups=c["n_groups"],
        d_conv=c["conv_kernel"],
        chunk_size=c["chunk_size"],
        pad_vocab_size_multiple=1,  # transformers' embedding has exactly vocab_size rows
        tie_embeddings=c["tie_word_embeddings"],
        norm_eps=c["layer_norm_epsilon"],
        conv_bias=c["use_conv_bias"],
        bias=c["use_bias"],
    )


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _normalise(value: Any) -> Any:
    """JSON lists as tuples of floats; infinity may be written Infinity or (by transformers)
    {"__float__": "Infinity"}."""
    if isinstance(value, list | tuple):
        return tuple(_normalise(v) for v in value)
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    if isinstance(value, int | float):
        return float(value)
    return value
