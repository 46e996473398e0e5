"""RWKV-6 behind the harness's LanguageModel interface."""

from __future__ import annotations

import torch

from harness.models.base import LanguageModel, ModelInfo
from harness.models.rwkv6.model import Rwkv6, Rwkv6State
from harness.models.rwkv6.tokenizer import WorldTokenizer


class Rwkv6LM(LanguageModel):
    def __init__(self, module: Rwkv6, tokenizer: WorldTokenizer, info: ModelInfo) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.info = info
        self.eos_token_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def init_state(self, batch: int = 1) -> Rwkv6State:
        return self.module.init_state(batch)

    def forward(  # type: ignore[override]
        self, ids: torch.Tensor, state: Rwkv6State
    ) -> tuple[torch.Tensor, Rwkv6State]:
        return self.module(ids, state)

    def forward_last(  # type: ignore[override]
        self, ids: torch.Tensor, state: Rwkv6State
    ) -> tuple[torch.Tensor, Rwkv6State]:
        logits, state = self.module(ids, state, last_only=True)
        return logits[:, -1], state
