"""Mamba-2 behind the harness's LanguageModel interface, with the hooks mitigations install."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from harness.models.base import ModelInfo, RecurrentLM
from harness.models.mamba2.model import Mamba2, Mamba2State
from harness.models.mamba2.ssd import resolve_backend, scan

if TYPE_CHECKING:
    from harness.models.recurrence import Scan
    from harness.models.tokenizer import TextCodec


class Mamba2LM(RecurrentLM):
    """A Mamba2 module, its tokenizer, its scan backend and the hooks a mitigation installs."""

    def __init__(
        self,
        module: Mamba2,
        tokenizer: TextCodec,
        info: ModelInfo,
        backend: str = "auto",
    ) -> None:
        super().__init__(module, tokenizer, info)
        self.backend = resolve_backend(backend, module.embedding.weight.device)

    @property
    def scan(self) -> Scan:
        """The SSD scan with this model's backend and chunk size."""
        return partial(scan, backend=self.backend, chunk_size=self.module.config.chunk_size)

    def call(  # type: ignore[override]
        self, ids: torch.Tensor, state: Mamba2State, last_only: bool
    ) -> tuple[torch.Tensor, Mamba2State]:
        return self.module(ids, state, self.hooks, self.backend, last_only=last_only)
