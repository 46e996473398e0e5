"""Mamba-1 behind the harness's LanguageModel interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.models.base import LanguageModel, ModelInfo
from harness.models.mamba1.model import Mamba1, Mamba1State

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Mamba1LM(LanguageModel):
    def __init__(self, module: Mamba1, tokenizer: PreTrainedTokenizerBase, info: ModelInfo) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.info = info
        self.eos_token_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def init_state(self, batch: int = 1) -> Mamba1State:
        return self.module.init_state(batch)

    def forward(  # type: ignore[override]
        self, ids: torch.Tensor, state: Mamba1State
    ) -> tuple[torch.Tensor, Mamba1State]:
        """ids (b, l) -> logits (b, l, padded vocab) float32, the state after them."""
        return self.module(ids, state)

    def forward_last(  # type: ignore[override]
        self, ids: torch.Tensor, state: Mamba1State
    ) -> tuple[torch.Tensor, Mamba1State]:
        logits, state = self.module(ids, state, last_only=True)
        return logits[:, -1], state
