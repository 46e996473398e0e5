"""Built-in tiny models with random weights from fixed seeds and a byte-level tokenizer.

They stand in for real checkpoints where none can be loaded (offline, CPU): the embedded
default run, smoke tests, examples. Their numbers show that the machinery works, not how
any trained model behaves; their "training context" is nominal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from harness.models.base import LanguageModel, ModelInfo

SEED = 0
NOMINAL_CONTEXT = 1024
CONTEXT_SOURCE = "nominal: random weights, never trained"
# Construction settings (with SEED, what makes each model what it is: its identity).
PYTHIA_SETTINGS: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": NOMINAL_CONTEXT,
}
MAMBA2_SETTINGS: dict[str, Any] = {
    "d_model": 64,
    "n_layer": 2,
    "d_state": 32,
    "headdim": 16,
    "chunk_size": 64,
}
MAMBA1_SETTINGS: dict[str, Any] = {"d_model": 64, "n_layer": 2, "d_state": 16}
RWKV6_SETTINGS: dict[str, Any] = {
    "d_model": 64,
    "n_layer": 2,
    "head_size": 16,
    "d_mix": 8,
    "d_decay": 16,
    "init": "normal 0.2; time_decay uniform(-4, 1); norms 1",
}


@dataclass(frozen=True)
class TinyModel:
    family: str
    description: str
    build: Callable[[str, torch.dtype, str], LanguageModel]
    settings: dict[str, Any]  # construction settings, seed included (harness.identity)
    params: int  # as built (tests check it), for `harness list models` without building
    state_size: int | None  # state elements over all layers; None for the transformer
    peer: str  # the tiny model of the other family
    train_context: int = NOMINAL_CONTEXT


def _info(
    name: str,
    family: str,
    module: torch.nn.Module,
    dtype: torch.dtype,
    device: str,
    backend: str,
    state_size: int | None,
) -> ModelInfo:
    from harness.models.base import ModelInfo

    return ModelInfo(
        name=name,
        ref=name,
        family=family,
        params=sum(p.numel() for p in module.parameters()),
        state_size=state_size,
        train_context=NOMINAL_CONTEXT,
        train_context_source=CONTEXT_SOURCE,
        dtype=str(dtype).removeprefix("torch."),
        device=device,
        backend=backend,
    )


def build_tiny_pythia(device: str, dtype: torch.dtype, backend: str) -> LanguageModel:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from harness.models.tokenizer import byte_tokenizer
    from harness.models.transformer import TransformerLM

    tokenizer = byte_tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        **PYTHIA_SETTINGS,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(SEED)
    module = GPTNeoXForCausalLM(config).to(device=device, dtype=dtype)
    info = _info("tiny-pythia", "transformer", module, dtype, device, "sdpa", None)
    return TransformerLM(module, tokenizer, info)


def build_tiny_mamba2(device: str, dtype: torch.dtype, backend: str) -> LanguageModel:
    import torch

    from harness.models.mamba2 import Mamba2, Mamba2Config, Mamba2LM, resolve_backend
    from harness.models.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = Mamba2Config(vocab_size=len(tokenizer), **MAMBA2_SETTINGS)
    torch.manual_seed(SEED)
    module = Mamba2(config).to(device=device, dtype=dtype)
    backend = resolve_backend(backend, torch.device(device))
    info = _info("tiny-mamba2", "mamba2", module, dtype, device, backend, config.state_size)
    return Mamba2LM(module, tokenizer, info, backend=backend)


def build_tiny_mamba1(device: str, dtype: torch.dtype, backend: str) -> LanguageModel:
    import torch

    from harness.models.base import RecurrentLM
    from harness.models.mamba1 import Mamba1, Mamba1Config
    from harness.models.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = Mamba1Config(vocab_size=len(tokenizer), **MAMBA1_SETTINGS)
    torch.manual_seed(SEED)
    module = Mamba1(config).to(device=device, dtype=dtype)
    info = _info("tiny-mamba1", "mamba1", module, dtype, device, "torch", config.state_size)
    return RecurrentLM(module, tokenizer, info)


def randomize_rwkv6(module: torch.nn.Module, std: float) -> None:
    """RWKV-6 builds its parameters as zeros (checkpoints fill them): draw them from a normal
    of std `std`, the decays d from U(-4, 1) (w = exp(-exp(d)): slow to fast channels), the
    norms' weights 1 (from the global torch generator)."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("time_decay"):
                p.uniform_(-4, 1)
            elif "ln" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, std)


def build_tiny_rwkv6(device: str, dtype: torch.dtype, backend: str) -> LanguageModel:
    import torch

    from harness.models.base import RecurrentLM
    from harness.models.rwkv6 import Rwkv6, Rwkv6Config
    from harness.models.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    shape = {k: v for k, v in RWKV6_SETTINGS.items() if k != "init"}
    config = Rwkv6Config(vocab_size=len(tokenizer), **shape)
    torch.manual_seed(SEED)
    module = Rwkv6(config)
    randomize_rwkv6(module, std=0.2)
    module = module.to(device=device, dtype=dtype)
    info = _info("tiny-rwkv6", "rwkv6", module, dtype, device, "torch", config.state_size)
    return RecurrentLM(module, tokenizer, info)


TINY_MODELS: dict[str, TinyModel] = {
    "tiny-mamba2": TinyModel(
        "mamba2",
        "Mamba-2, 2 layers, d_model 64, random (seed 0), bytes",
        build_tiny_mamba2,
        {**MAMBA2_SETTINGS, "seed": SEED, "tokenizer": "bytes"},
        params=78192,
        state_size=8192,
        peer="tiny-pythia",
    ),
    "tiny-mamba1": TinyModel(
        "mamba1",
        "Mamba-1, 2 layers, d_model 64, random (seed 0), bytes",
        build_tiny_mamba1,
        {**MAMBA1_SETTINGS, "seed": SEED, "tokenizer": "bytes"},
        params=82368,
        state_size=4096,
        peer="tiny-pythia",
    ),
    "tiny-rwkv6": TinyModel(
        "rwkv6",
        "RWKV-6, 2 layers, d_model 64, random (seed 0), bytes",
        build_tiny_rwkv6,
        {**RWKV6_SETTINGS, "seed": SEED, "tokenizer": "bytes"},
        params=156032,
        state_size=2048,
        peer="tiny-pythia",
    ),
    "tiny-pythia": TinyModel(
        "transformer",
        "GPT-NeoX, 2 layers, d_model 64, random (seed 0), bytes",
        build_tiny_pythia,
        {**PYTHIA_SETTINGS, "seed": SEED, "tokenizer": "bytes"},
        params=132992,
        state_size=None,
        peer="tiny-mamba2",
    ),
}
