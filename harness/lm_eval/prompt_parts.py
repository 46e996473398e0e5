"""An lm-eval request's context as the parts an inference strategy (oprm) reads.

lm-eval hands the model one context string, not the task's template, so the parts are found
by one rule on the text: the prefix is its first line with the newlines that end it (the
instruction), the suffix its last line from the newline before it (the question, with any
answer prefix lm-eval appended), the context everything between. For the long-context
templates this serves that is exactly their split: RULER's NIAH tasks (instruction line,
haystack, question line) and `harness_passkey` (the parts `harness run --tasks passkey`
gives oprm, tested). A context without a line between the first and the last is refused.
"""

from __future__ import annotations

import re

from harness.models.base import PromptParts

FIRST_LINE = re.compile(r"[^\n]*\n+")


class PromptSplitError(ValueError):
    """A context that has no separate instruction, context and question lines."""


def split(context: str) -> PromptParts:
    first = FIRST_LINE.match(context)
    last = context.rfind("\n")
    if first is None or last < first.end():
        raise PromptSplitError(
            "oprm needs an lm-eval prompt of an instruction line, a context and a question "
            f"line; this one has {context.count(chr(10))} newline(s): {context[:80]!r}..."
        )
    return PromptParts(context[: first.end()], context[first.end() : last], context[last:])
