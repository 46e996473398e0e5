"""The model interface that tasks use: one class every family implements.

A family implements `init_state` and `forward`; prefill, greedy generation, teacher-forced
scoring and per-token losses of long sequences are built on those two here, so every family
gets the same chunking arithmetic (no target is skipped at a chunk boundary).

State contract: `forward(ids, state)` returns a new state and may consume the one passed in;
call `state.clone()` first to keep it (e.g. to score and generate from one prefilled prompt).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from harness.models.linear import pack

if TYPE_CHECKING:
    from harness.models.recurrence import Hooks, Scan
    from harness.models.tokenizer import TextCodec

Progress = Callable[[int], None]  # told the number of tokens of each chunk as it goes in


@dataclass(frozen=True)
class PromptParts:
    """A prompt as a task builds it: an instruction, the long context, the question."""

    prefix: str
    context: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.context + self.suffix


class PromptStrategy(Protocol):
    """How a model reads a prompt of several parts (OPRM's chunked prefill); installed by a
    mitigation as `model.strategy`."""

    def prefill(
        self, model: LanguageModel, parts: PromptParts, progress: Progress | None
    ) -> tuple[torch.Tensor, State]: ...


class State(Protocol):
    """What a family carries between calls of `forward` (KV cache, conv + SSM states...)."""

    def clone(self) -> State: ...


@dataclass(frozen=True)
class ModelInfo:
    """What result rows record about a model."""

    name: str  # display name, also the `model=` partition of results/
    ref: str  # catalog name, local path or hub id, as given
    family: str  # "mamba1" | "mamba2" | "transformer"
    params: int  # parameter count
    state_size: int | None  # recurrent state elements over all layers (None for transformers)
    train_context: int  # tokens
    train_context_source: str
    dtype: str
    device: str
    backend: str  # scan backend or attention implementation


class LanguageModel(ABC):
    """A causal language model with an explicit, exactly carried state."""

    info: ModelInfo
    eos_token_id: int | None = None
    strategy: PromptStrategy | None = None  # set by an inference-strategy mitigation (oprm)

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def init_state(self, batch: int = 1) -> State: ...

    @abstractmethod
    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (b, l) -> logits (b, l, vocab) float32, and the state after the l tokens."""

    def forward_last(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """`forward` keeping only the last position's logits (b, vocab); a family may override
        it to skip computing the others."""
        logits, state = self.forward(ids, state)
        return logits[:, -1], state

    @property
    def device(self) -> torch.device:
        return torch.device(self.info.device)

    def _tensor(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return t if t.dim() == 2 else t.unsqueeze(0)

    @torch.inference_mode()
    def prefill(
        self, ids: list[int] | torch.Tensor, chunk: int = 4096, progress: Progress | None = None
    ) -> tuple[torch.Tensor, State]:
        """Feed a prompt in chunks; return the logits after its last token (vocab,), the state."""
        if len(ids) == 0:
            raise ValueError("prefill needs at least one token")
        state = self.init_state(1)
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            logits, state = self.forward_last(self._tensor(piece), state)
            if progress is not None:
                progress(len(piece))
        return logits[0].float(), state

    def prefill_prompt(
        self, parts: PromptParts, progress: Progress | None = None
    ) -> tuple[torch.Tensor, State]:
        """`prefill` of the whole prompt, or as the installed strategy reads its parts."""
        if self.strategy is not None:
            return self.strategy.prefill(self, parts, progress)
        return self.prefill(self.encode(parts.text), progress=progress)

    @torch.inference_mode()
    def generate(self, logits: torch.Tensor, state: State, max_new_tokens: int) -> list[int]:
        """Greedy decoding from prefilled `logits` (vocab,) and `state`, one token per step."""
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax())
            out.append(token)
            if token == self.eos_token_id or len(out) == max_new_tokens:
                break
            step_logits, state = self.forward(self._tensor([token]), state)
            logits = step_logits[0, -1].float()
        return out

    @torch.inference_mode()
    def score(self, logits: torch.Tensor, state: State, continuation: list[int]) -> float:
        """Sum of log p(continuation | prompt), teacher-forced from prefilled logits and state."""
        first = F.log_softmax(logits.float(), dim=-1)[continuation[0]]
        if len(continuation) == 1:
            return float(first)
        rest, _ = self.forward(self._tensor(continuation[:-1]), state)
        logp = F.log_softmax(rest[0].float(), dim=-1)
        targets = torch.as_tensor(continuation[1:], device=logp.device)
        return float(first + logp.gather(1, targets[:, None]).sum())

    @torch.inference_mode()
    def token_losses(
        self, ids: torch.Tensor | list[int], chunk: int = 2048, progress: Progress | None = None
    ) -> torch.Tensor:
        """Per-token NLL of a long sequence: out[i] = -log p(ids[i+1] | ids[:i+1]), float32 on CPU.

        The sequence streams through in chunks with the state carried; the last logits of one
        chunk predict the first token of the next, so all len(ids) - 1 targets are scored.
        """
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        losses = torch.empty(max(len(ids) - 1, 0), dtype=torch.float32)
        state = self.init_state(1)
        prev: torch.Tensor | None = None  # logits of the token before this chunk (vocab,)
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            logits, state = self.forward(self._tensor(piece), state)
            logits = logits[0].float()
            if prev is not None:
                logits = torch.cat([prev[None], logits])
                targets, first = piece, start - 1
            else:
                targets, first = piece[1:], start
            n = len(targets)
            losses[first : first + n] = F.cross_entropy(
                logits[:n], targets.to(logits.device), reduction="none"
            ).cpu()
            prev = logits[-1]
            if progress is not None:
                progress(len(piece))
        return losses


class RecurrentLM(LanguageModel):
    """A recurrent module with `init_state(batch)` and `module(ids, state, hooks, last_only=...)`,
    its tokenizer, and the hooks a mitigation installs (harness/models/recurrence.py): Mamba-1
    and RWKV-6 as they are, Mamba-2 with its scan backend (a subclass)."""

    hooks: Hooks | None = None

    def __init__(self, module: torch.nn.Module, tokenizer: TextCodec, info: ModelInfo) -> None:
        # evaluated, never trained here: on CPU its float32 projections in oneDNN's layout
        self.module = pack(module.eval().requires_grad_(False))
        self.tokenizer = tokenizer
        self.info = info
        self.eos_token_id = tokenizer.eos_token_id
        self.hooks = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def init_state(self, batch: int = 1) -> State:
        return self.module.init_state(batch)

    @property
    def heads(self) -> int:
        """Heads of the recurrence core per layer (Mamba-1: one per channel)."""
        return self.module.heads

    @property
    def stat_heads(self) -> int:
        """How many groups state statistics divide a layer's state into: the heads, or for
        Mamba-1 the whole layer (its channels are thousands of tiny states)."""
        return self.module.stat_heads

    @property
    def scan(self) -> Scan:
        """The family's own scan: (inputs, h) -> (y, h)."""
        return self.module.scan

    def call(self, ids: torch.Tensor, state: State, last_only: bool) -> tuple[torch.Tensor, State]:
        """The module on ids (b, l): logits (b, l or 1, vocab) float32 and the new state."""
        return self.module(ids, state, self.hooks, last_only=last_only)

    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.call(ids, state, last_only=False)

    def forward_last(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Only the last position's logits (b, vocab): at 130m, the logits of a 4096-token chunk
        would be 800 MiB of float32."""
        logits, state = self.call(ids, state, last_only=True)
        return logits[:, -1], state
