"""Any Hugging Face causal LM (Pythia / GPT-NeoX first) behind the harness model interface.

Long sequences go through chunked prefill with the KV cache, which gives the same logits as
one pass. Nothing is truncated: positions past the trained context are evaluated (that is
the point of the comparison) and tasks flag them with `info.train_context`.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from harness.models.base import LanguageModel, ModelInfo


@dataclass
class KVState:
    cache: DynamicCache

    def clone(self) -> KVState:
        return KVState(copy.deepcopy(self.cache))


class TransformerLM(LanguageModel):
    def __init__(
        self, module: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info: ModelInfo
    ) -> None:
        self.module = module.eval().requires_grad_(False)  # evaluated, never trained here
        self.tokenizer = tokenizer
        self.info = info
        self.eos_token_id = tokenizer.eos_token_id
        # transformers >= 5.2x names the cache argument `cache`; older releases `past_key_values`
        params = inspect.signature(module.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def init_state(self, batch: int = 1) -> KVState:
        return KVState(DynamicCache(config=self.module.config))

    def forward(self, ids: torch.Tensor, state: KVState) -> tuple[torch.Tensor, KVState]:
        out = self.module(input_ids=ids, use_cache=True, **{self._cache_arg: state.cache})
        return out.logits.float(), state
