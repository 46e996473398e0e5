"""Model families as trainables: build from scratch or load to continue, run a segment, save.

A `Trainable` runs one segment of a sample, `forward(ids, state) -> (logits, state)`:
the recurrent families (Mamba-2, Mamba-1, RWKV-6: our engines) carry their states exactly
from segment to segment, GPT-NeoX starts every segment afresh (its state is always None).
`save` writes a checkpoint the harness loaders read, with the training length recorded in
config.json as `train_context`.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from harness.models.tokenizer import TextCodec

FAMILIES = ("mamba2", "mamba1", "rwkv6", "gpt-neox")
RECURRENT = ("mamba2", "mamba1", "rwkv6")  # families whose state is carried between segments
# the shape fields each family reads (the others are refused when it trains from scratch)
SHAPE_FIELDS = {
    "mamba2": ("d_model", "n_layer", "d_state", "headdim"),
    "mamba1": ("d_model", "n_layer", "d_state"),
    "rwkv6": ("d_model", "n_layer", "head_size", "d_ff", "d_mix", "d_decay"),
    "gpt-neox": ("d_model", "n_layer", "n_head", "d_ff"),
}


class ModelChoiceError(ValueError):
    """A --model that names nothing trainable."""


@dataclass(frozen=True)
class Shape:
    """Sizes of a model built from scratch (each family uses the fields it has)."""

    d_model: int = 128
    n_layer: int = 4
    d_state: int | None = None  # Mamba-2 N (None: 128), Mamba-1 N (None: 16)
    headdim: int = 32  # Mamba-2
    n_head: int = 4  # GPT-NeoX
    d_ff: int | None = None  # GPT-NeoX MLP (None: 256), RWKV-6 channel mix (None: 3.5 x d_model)
    head_size: int = 64  # RWKV-6 head size N (d_model must be a multiple)
    d_mix: int = 32  # RWKV-6 rank of the token-shift mixing LoRA
    d_decay: int = 64  # RWKV-6 rank of the decay LoRA


class Trainable(ABC):
    family: str
    module: torch.nn.Module
    tokenizer: TextCodec

    @abstractmethod
    def initial_state(self, batch: int) -> Any: ...

    @abstractmethod
    def forward(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """ids (b, l) -> logits (b, l, vocab) float32, and the state to pass to the next segment."""

    @abstractmethod
    def _save_weights(self, path: Path) -> None: ...

    @property
    def state_size(self) -> int | None:
        return None

    def save(self, path: Path, extra_config: dict[str, Any]) -> None:
        """Weights, config.json (plus `extra_config`) and tokenizer, as the loaders read them."""
        path.mkdir(parents=True, exist_ok=True)
        self._save_weights(path)
        config_file = path / "config.json"
        config = json.loads(config_file.read_text()) | extra_config
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self.tokenizer.save_pretrained(path)


class Mamba2Trainable(Trainable):
    family = "mamba2"

    def __init__(self, module: torch.nn.Module, tokenizer: TextCodec) -> None:
        self.module = module
        self.tokenizer = tokenizer

    def initial_state(self, batch: int) -> Any:
        return self.module.init_state(batch)

    def forward(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        logits, state = self.module(ids, state, backend="torch")  # differentiable on any device
        return logits, state

    @property
    def state_size(self) -> int | None:
        return self.module.config.state_size

    def _save_weights(self, path: Path) -> None:
        from harness.models.mamba2 import save_pretrained

        save_pretrained(self.module, path, format="state-spaces")


class Mamba1Trainable(Trainable):
    family = "mamba1"

    def __init__(self, module: torch.nn.Module, tokenizer: TextCodec) -> None:
        self.module = module
        self.tokenizer = tokenizer

    def initial_state(self, batch: int) -> Any:
        return self.module.init_state(batch)

    def forward(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.module(ids, state)

    @property
    def state_size(self) -> int | None:
        return self.module.config.state_size

    def _save_weights(self, path: Path) -> None:
        from harness.models.mamba1 import save_pretrained

        save_pretrained(self.module, path, format="state-spaces")


class Rwkv6Trainable(Trainable):
    family = "rwkv6"

    def __init__(self, module: torch.nn.Module, tokenizer: TextCodec) -> None:
        self.module = module
        self.tokenizer = tokenizer

    def initial_state(self, batch: int) -> Any:
        return self.module.init_state(batch)

    def forward(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.module(ids, state)

    @property
    def state_size(self) -> int | None:
        return self.module.config.state_size

    def _save_weights(self, path: Path) -> None:
        from harness.train.rwkv6 import save_hf

        save_hf(self.module, path)


class NeoXTrainable(Trainable):
    family = "gpt-neox"

    def __init__(self, module: torch.nn.Module, tokenizer: TextCodec) -> None:
        self.module = module
        self.tokenizer = tokenizer

    def initial_state(self, batch: int) -> None:
        return None

    def forward(self, ids: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        return self.module(input_ids=ids).logits.float(), None

    def _save_weights(self, path: Path) -> None:
        self.module.save_pretrained(path)


def detach_state(state: Any) -> Any:
    """The same state cut from the autograd graph (tensors, dataclasses, lists, tuples)."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.detach()
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: detach_state(getattr(state, f.name)) for f in dataclasses.fields(state)}
        return dataclasses.replace(state, **changes)
    if isinstance(state, list | tuple):
        return type(state)(detach_state(s) for s in state)
    return state


def build(family: str, shape: Shape, tokenizer: TextCodec, seed: int) -> Trainable:
    """A model of `family` with fresh weights drawn from `seed`."""
    import torch

    torch.manual_seed(seed)
    if family == "mamba2":
        from harness.models.mamba2 import Mamba2, Mamba2Config

        config = Mamba2Config(
            d_model=shape.d_model,
            n_layer=shape.n_layer,
            vocab_size=len(tokenizer),
            d_state=128 if shape.d_state is None else shape.d_state,
            headdim=shape.headdim,
        )
        return Mamba2Trainable(Mamba2(config), tokenizer)
    if family == "mamba1":
        from harness.models.mamba1 import Mamba1, Mamba1Config

        config = Mamba1Config(
            d_model=shape.d_model,
            n_layer=shape.n_layer,
            vocab_size=len(tokenizer),
            d_state=16 if shape.d_state is None else shape.d_state,
        )
        return Mamba1Trainable(Mamba1(config), tokenizer)
    if family == "rwkv6":
        from harness.train.rwkv6 import build_rwkv6

        return Rwkv6Trainable(build_rwkv6(shape, len(tokenizer)), tokenizer)
    if family == "gpt-neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=len(tokenizer),
            hidden_size=shape.d_model,
            num_hidden_layers=shape.n_layer,
            num_attention_heads=shape.n_head,
            intermediate_size=256 if shape.d_ff is None else shape.d_ff,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            attn_implementation="sdpa",
        )
        return NeoXTrainable(GPTNeoXForCausalLM(config), tokenizer)
    raise ModelChoiceError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")


def load(ref: str) -> Trainable:
    """A trained checkpoint to continue: a local directory, catalog name or hub id."""
    from harness.models.catalog import NEOX_TOKENIZER
    from harness.models.loading import ModelError, resolve
    from harness.models.tokenizer import load_tokenizer

    try:
        source = resolve(ref)
    except ModelError as err:
        raise ModelChoiceError(
            f"{err}; or name a family to train from scratch: {', '.join(FAMILIES)}"
        ) from None
    where = source.path or source.repo
    if where is None:
        family = source.family if source.family in RECURRENT else "gpt-neox"
        raise ModelChoiceError(
            f"{ref!r} is a built-in model with random weights; to train from scratch give "
            f"--model {family}"
        )
    import torch

    fallback = source.spec.tokenizer if source.spec else NEOX_TOKENIZER
    if source.family == "mamba2":
        from harness.models.mamba2 import load_mamba2

        module = load_mamba2(str(where), device="cpu", dtype=torch.float32)
        return Mamba2Trainable(module, load_tokenizer(source.path, fallback))
    if source.family == "mamba1":
        from harness.models.mamba1 import load_mamba1

        module = load_mamba1(str(where), device="cpu", dtype=torch.float32)
        return Mamba1Trainable(module, load_tokenizer(source.path, fallback))
    if source.family == "rwkv6":
        from harness.train.rwkv6 import load_for_training

        module, tokenizer = load_for_training(where)
        return Rwkv6Trainable(module, tokenizer)
    from transformers import AutoModelForCausalLM

    module = AutoModelForCausalLM.from_pretrained(str(where), dtype=torch.float32)
    if module.config.model_type != "gpt_neox":
        raise ModelChoiceError(f"{ref!r} is a {module.config.model_type} model, not GPT-NeoX")
    return NeoXTrainable(module, load_tokenizer(source.path, str(where)))
