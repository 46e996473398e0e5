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
