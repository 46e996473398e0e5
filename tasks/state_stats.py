"""State statistics of a recurrent model over a long prompt (paper-notes.md sections 2 and 7).

The prompt (the newline prompt by default, or any text source) runs through the model with
an observer on the engine's hook (harness/models/recurrence.py), chained after whatever
hooks a mitigation installed: the observed state is the one the mitigated model carries.
Every `interval` tokens, per (layer, head):

- the state h (P x N): Frobenius norm, mean, variance, max |h|, and the share of its
  channels (elements) that are outliers, |h - mean| > outlier_sigma standard deviations;
- over the interval that ended there: the mean decay alpha = exp(dt A) and the mean dt;
- the cumulative retention of the first token, alpha_{1:t} = prod_{j>=1} alpha_j =
  exp(sum dt_j A_j), and its log (the product underflows long before the log does).

A collapse verdict per head, on every row of that head so that any head's curve plots
without a rerun: its norm at the training length T_train (`train_norm`, the last record at
or before it), `growth` = norm / train_norm, `collapse_position` = the first position past
T_train where growth exceeds the `growth` option, `collapsed` whether there is one (null
when the prompt does not reach past T_train).

Heads: Mamba-2's and RWKV-6's own; Mamba-1 has none (each of its d_inner channels is a state
of d_state entries), so a layer's whole d_inner x d_state state is one "head" (head 0). Where
the decay differs per state entry (Mamba-1, RWKV-6: w per key channel), alpha_mean, dt_mean and
the retention are of the geometric mean of the head's decays (the mean of dt A over its
entries and channels); RWKV-6 has no dt (dt = 1).

Records fall at the multiples of `interval` (the engine's observer points); a tail shorter
than one interval is not recorded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from harness.settings import setting
from tasks.base import Progress, Task
from tasks.settings import require_positive
from tasks.sources import SourceSettings, documents, source_from

if TYPE_CHECKING:
    import torch

    from harness.models.base import LanguageModel, RecurrentLM
    from harness.models.recurrence import StateSnapshot

DEFAULT_LENGTHS = (16384,)


class IntervalSums:
    """Per-head sums over the tokens since the last record of one layer."""

    def __init__(self, heads: int) -> None:
        import torch

        self.dt = torch.zeros(heads, dtype=torch.float64)
        self.alpha = torch.zeros(heads, dtype=torch.float64)
        self.tokens = 0


class StateRecorder:
    """An observer: records per (layer, head) state statistics every `interval` tokens.

    It must see every segment of the scan (the engine stops at every multiple of the hooks'
    interval and at the end of each forward call), so the sums of dt cover whole intervals.
    """

    def __init__(self, interval: int, outlier_sigma: float, heads: int) -> None:
        self.interval = interval
        self.heads = heads  # groups of the state recorded apart (model.stat_heads)
        self.outlier_sigma = outlier_sigma
        self.sums: dict[int, IntervalSums] = {}
        self.log_retention: dict[int, torch.Tensor] = {}  # layer -> (heads,) sum of dt A
        self.records: list[dict[str, Any]] = []

    def __call__(self, snapshot: StateSnapshot) -> None:
        dt, log_alpha = snapshot.dt[0].double(), snapshot.log_alpha()[0].double()  # (l, H[, n])
        dt = dt.reshape(dt.shape[0], self.heads, -1).mean(-1)  # (l, heads)
        log_alpha = log_alpha.reshape(dt.shape[0], self.heads, -1).mean(-1)  # geometric mean
        layer, heads = snapshot.layer, self.heads
        sums = self.sums.setdefault(layer, IntervalSums(heads))
        sums.dt += dt.sum(0)
        sums.alpha += log_alpha.exp().sum(0)
        sums.tokens += dt.shape[0]
        first = snapshot.position - dt.shape[0] == 0  # token 0's own decay does not count
        retained = log_alpha[1:] if first else log_alpha
        log_retention = self.log_retention.setdefault(layer, sums.dt.new_zeros(heads))
        log_retention += retained.sum(0)
        if snapshot.position % self.interval == 0:
            self.records += self._records(snapshot, sums)
            self.sums[layer] = IntervalSums(heads)

    def _records(self, snapshot: StateSnapshot, sums: IntervalSums) -> list[dict[str, Any]]:
        import torch

        flat = snapshot.h[0].reshape(self.heads, -1).double()  # (heads, state elements)
        stats = {
            "norm": torch.linalg.vector_norm(flat, dim=-1),
            "mean": flat.mean(-1),
            "var": flat.var(-1, unbiased=False),
            "max_abs": flat.abs().amax(-1),
        }
        deviation = (flat - stats["mean"][:, None]).abs()
        limit = self.outlier_sigma * stats["var"].sqrt()[:, None]
        outliers = (deviation > limit).double().mean(-1)
        log_retention = self.log_retention[snapshot.layer]
        columns = {
            "norm": stats["norm"],
            "mean": stats["mean"],
            "var": stats["var"],
            "max_abs": stats["max_abs"],
            "outlier_share": outliers,
            "alpha_mean": sums.alpha / sums.tokens,
            "dt_mean": sums.dt / sums.tokens,
            "log_retention": log_retention,
            "retention": log_retention.exp(),
        }
        values = {k: v.tolist() for k, v in columns.items()}
        return [
            {"layer": snapshot.layer, "head": head, "position": snapshot.position}
            | {k: v[head] for k, v in values.items()}
            for head in range(len(stats["norm"]))
        ]


def add_verdicts(records: list[dict[str, Any]], train_context: int, growth: float) -> None:
    """Add train_norm, growth, collapsed and collapse_position to every record, per head."""
    by_head: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_head[record["layer"], record["head"]].append(record)
    for series in by_head.values():
        _head_verdict(sorted(series, key=lambda r: r["position"]), train_context, growth)


def _head_verdict(series: list[dict[str, Any]], train_context: int, growth: float) -> None:
    """One head's records, in position order: norms against the one at the training length."""
    inside = [r for r in series if r["position"] <= train_context]
    reference = inside[-1]["norm"] if inside else None
    for record in series:
        record["train_norm"] = reference
        record["growth"] = _ratio(record["norm"], reference)
    beyond = [r for r in series if r["position"] > train_context]
    above = [r["position"] for r in beyond if r["growth"] is not None and r["growth"] > growth]
    position = above[0] if above else None
    collapsed = None if reference is None or not beyond else position is not None
    for record in series:
        record["collapse_position"] = position
        record["collapsed"] = collapsed


def _ratio(norm: float, reference: float | None) -> float | None:
    if reference is None:
        return None
    if reference == 0:
        return 1.0 if norm == 0 else math.inf
    return norm / reference


@contextmanager
def observing(model: RecurrentLM, recorder: StateRecorder) -> Iterator[None]:
    """Run with `recorder` chained after the model's hooks; put the hooks back afterwards."""
    before = model.hooks
    if before is not None and before.scans:
        raise ValueError(
            "state-stats reads the plain state h, which a mitigation that replaces the scan "
            f"(layers {sorted(before.scans)}) does not carry; run it without that mitigation"
        )
    from harness.mitigations.compose import merge_hooks
    from harness.models.recurrence import Hooks

    every = recorder.interval
    if before is not None and before.segmented:
        every = math.gcd(every, before.interval)  # see every stop the mitigation makes
    model.hooks = merge_hooks([before, Hooks(observer=recorder, interval=every)])
    try:
        yield
    finally:
        model.hooks = before


def aligned_chunk(chunk: int, interval: int) -> int:
    """`chunk` rounded up to a multiple of `interval`, so forward calls end on records."""
    return math.ceil(chunk / interval) * interval


@dataclass(frozen=True)
class StateStatsSettings(SourceSettings):
    interval: int = setting(128, "tokens between records (the observer's interval)")
    outlier_sigma: float = setting(3.0, "outlier: a channel this many standard deviations out")
    growth: float = setting(
        2.0, "collapsed: the norm grows past growth x its training-length value"
    )
    chunk: int = setting(4096, "tokens per forward call (rounded to a multiple of interval)")


class StateStats(Task):
    name = "state-stats"
    description = (
        "recurrent state per (layer, head) over positions: norm, moments, outliers, decay, "
        "first-token retention, collapse verdict"
    )
    table = "state_stats"
    families = frozenset({"mamba1", "mamba2", "rwkv6"})
    reads_state = True
    schema = pa.schema(
        [
            ("source", pa.string()),
            ("length", pa.int64()),
            ("interval", pa.int64()),
            ("layer", pa.int64()),
            ("head", pa.int64()),
            ("position", pa.int64()),
            ("norm", pa.float64()),
            ("mean", pa.float64()),
            ("var", pa.float64()),
            ("max_abs", pa.float64()),
            ("outlier_sigma", pa.float64()),
            ("outlier_share", pa.float64()),
            ("alpha_mean", pa.float64()),
            ("dt_mean", pa.float64()),
            ("log_retention", pa.float64()),
            ("retention", pa.float64()),
            ("beyond_context", pa.bool_()),
            ("train_norm", pa.float64()),
            ("growth", pa.float64()),
            ("growth_threshold", pa.float64()),
            ("collapsed", pa.bool_()),
            ("collapse_position", pa.int64()),
        ]
    )
    Settings = StateStatsSettings

    @classmethod
    def parse_settings(cls, raw: dict[str, str]) -> StateStatsSettings:
        settings = super().parse_settings(raw)
        require_positive(cls.name, settings, ("interval", "outlier_sigma", "growth", "chunk"))
        source_from(asdict(settings))
        return settings

    def units(self) -> list[dict[str, Any]]:
        lengths = self.options.lengths or DEFAULT_LENGTHS
        return [{"length": n, **self.params} for n in lengths]

    def cost(self, params: dict[str, Any]) -> int:
        return params["length"]

    def run(self, model: LanguageModel, params: dict[str, Any], progress: Progress) -> list[dict]:
        from harness.models.base import RecurrentLM

        if not isinstance(model, RecurrentLM):
            raise TypeError(
                f"state-stats reads a recurrent state; {model.info.name} is a {model.info.family}"
            )
        source = source_from(params)
        [doc] = documents(
            source, model.encode, params["length"], 1, params["short_docs"], model.eos_token_id
        )
        recorder = StateRecorder(params["interval"], params["outlier_sigma"], model.stat_heads)
        with observing(model, recorder):
            model.prefill(doc.ids, aligned_chunk(params["chunk"], params["interval"]), progress)
        records = sorted(recorder.records, key=lambda r: (r["layer"], r["head"], r["position"]))
        add_verdicts(records, model.info.train_context, params["growth"])
        shared = {
            "source": params["source"],
            "length": params["length"],
            "interval": params["interval"],
            "outlier_sigma": params["outlier_sigma"],
            "growth_threshold": params["growth"],
        }
        return [
            shared | r | {"beyond_context": r["position"] > model.info.train_context}
            for r in records
        ]

    def summary(self, rows: list[dict[str, Any]]) -> str:
        heads = {(r["layer"], r["head"]): r["collapsed"] for r in rows}
        if not heads:
            return "no records: the prompt is shorter than one interval"
        if any(v is None for v in heads.values()):
            return f"{len(heads)} heads; no verdict (prompt not past the training length)"
        return f"{sum(heads.values())}/{len(heads)} heads collapsed"
