"""Mamba-2 behind the harness's LanguageModel interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.models.base import LanguageModel, ModelInfo
from harness.models.mamba2.hooks import Hooks
from harness.models.mamba2.model import Mamba2, Mamba2State
from harness.models.mamba2.ssd import resolve_backend

if TYPE_CHECKING:
    from harness.models.tokenizer import TextCodec


class Mamba2LM(LanguageModel):
    """A Mamba2 module, its tokenizer, and the hooks a mitigation installs (`hooks`)."""

    hooks: Hooks | None = None

    def __init__(
        self,
        module: Mamba2,
        tokenizer: TextCodec,
        info: ModelInfo,
        backend: str = "auto",
    ) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.info = info
        self.backend = resolve_backend(backend, module.embedding.weight.device)
        self.eos_token_id = tokenizer.eos_token_id
        self.hooks = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def init_state(self, batch: int = 1) -> Mamba2State:
        return self.module.init_state(batch)

    def forward(  # type: ignore[override]
        self, ids: torch.Tensor, state: Mamba2State
    ) -> tuple[torch.Tensor, Mamba2State]:
        """ids (b, l) -> logits (b, l, padded vocab) float32, the state after them."""
        return self.module(ids, state, self.hooks, self.backend)

    def forward_last(
        self, ids: torch.Tensor, state: Mamba2State
    ) -> tuple[torch.Tensor, Mamba2State]:
        """Only the last position's logits (b, vocab): at 130m, the logits of a 4096-token chunk
        would be 800 MiB of float32."""
        logits, state = self.module(ids, state, self.hooks, self.backend, last_only=True)
        return logits[:, -1], state
