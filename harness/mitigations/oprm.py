"""OPRM (Ben-Kish et al. 2025, "Overflow Prevention Enhances Long-Context Recurrent LLMs").

A recurrent model's state overflows on a long context; OPRM never lets it see one. The context
X of a prompt [prefix P, X, suffix Q] is cut into chunks X_1 ... X_k of at most C tokens, and
each [P, X_i, Q] is prefilled on its own (a "speculative" prefill, one per chunk). The answer
is decoded from the chunk whose first answer token is the most certain: the lowest entropy of
the next-token distribution after [P, X_i, Q]. With `idk` set to a phrase, chunks whose greedy
answer contains it (the paper's "I don't know" filter, for prompts that offer that answer) are
passed over, unless every chunk says it.

It is training-free and model-agnostic (transformers too), and it is an inference strategy,
not a state hook: a task must say which part of its prompt is the context (PromptParts); tasks
that score one whole sequence (loss by position) refuse it. C defaults to the model's training
context less P and Q, so that every prefill stays within what training saw. The token ids of
P, X and Q are encoded separately (chunks cut X's ids), as the official code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.mitigations.base import Mitigation, MitigationError
from harness.models.catalog import FAMILIES
from harness.settings import setting

if TYPE_CHECKING:
    import torch

    from harness.models.base import LanguageModel, Progress, PromptParts, State

IDK_TOKENS = 8  # greedy tokens decoded per chunk to look for the idk phrase


@dataclass(frozen=True)
class OPRMSettings:
    chunk: int = setting(0, "context tokens per chunk C; 0: training context less P and Q")
    idk: str = setting("", "pass over chunks whose greedy answer contains this phrase; '': off")


class OPRM(Mitigation):
    name = "oprm"
    description = "chunked speculative prefill of [prefix, chunk, suffix], lowest-entropy answer"
    families = FAMILIES  # model-agnostic
    Settings = OPRMSettings

    def validate(self) -> None:
        if self.settings.chunk < 0:
            raise MitigationError(
                f"oprm: chunk is 0 or a token count > 0; got {self.settings.chunk}"
            )

    def hooks(self, model: LanguageModel) -> None:
        return None

    def strategy(self) -> ChunkedPrefill:
        return ChunkedPrefill(self.settings.chunk, self.settings.idk)


@dataclass(frozen=True)
class ChunkedPrefill:
    chunk: int  # C, or 0 for the training context less P and Q
    idk: str  # the phrase of the IDK filter, '' for none

    def prefill(
        self, model: LanguageModel, parts: PromptParts, progress: Progress | None
    ) -> tuple[torch.Tensor, State]:
        """The logits and state after [P, X_i, Q] for the chosen chunk i."""
        P, X, Q = (model.encode(t) for t in (parts.prefix, parts.context, parts.suffix))
        size = self.chunk or max(1, model.info.train_context - len(P) - len(Q))
        best: tuple[float, torch.Tensor, State] | None = None
        fallback: tuple[float, torch.Tensor, State] | None = None
        for start in range(0, max(len(X), 1), size):
            logits, state = model.prefill(P + X[start : start + size] + Q, progress=progress)
            candidate = (entropy(logits), logits, state)
            if fallback is None or candidate[0] < fallback[0]:
                fallback = candidate
            if self.idk and self.idk.lower() in _greedy(model, logits, state).lower():
                continue
            if best is None or candidate[0] < best[0]:
                best = candidate
        chosen = best or fallback
        assert chosen is not None  # at least one chunk, even for an empty context
        return chosen[1], chosen[2]


def entropy(logits: torch.Tensor) -> float:
    """H = -sum p log p of the next-token distribution (vocab,), in nats."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(-(logp.exp() * logp).sum())


def _greedy(model: LanguageModel, logits: torch.Tensor, state: State) -> str:
    return model.decode(model.generate(logits, state.clone(), IDK_TOKENS))
