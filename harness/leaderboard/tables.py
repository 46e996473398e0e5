"""Aggregation: the leaderboard's numbers from the resolved rows of each table.

Definitions (also printed under the table, see render.py):
- Passkey accuracy at a length: the share of ok samples whose greedy output held the key;
  beside it the mean log-probability of the key (teacher forcing), a graded signal.
- Effective length (RULER style): going up the lengths attempted for a row (by ok or failed
  units), the last length before the first one that fails: accuracy below the threshold, or no
  ok result there (out of memory, non-finite, error). 0 when the shortest length fails; empty
  when the row has no ok passkey result (every passkey unit failed, or none ran).
- Status of a row: ok, partial (some units failed) or failed (every unit failed: the row has
  no number at all, it is not a model of effective length 0).
- Perplexity at m x the training length: exp of the token-weighted mean loss, over documents,
  of the bucket holding token number p = round(m * train_context) (start < p <= end). Per
  source (newlines, a dataset...) only the longest unit counts; sources are never averaged.
- Collapse and recall lengths: as the state_capacity task wrote them (its recall length is
  the largest passing length, with no condition on shorter ones).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.leaderboard.columns import (
    COMMIT,
    CREATED,
    DEVICE,
    DTYPE,
    FACTS,
    MESSAGE,
    MITIGATION,
    MODEL,
    MODEL_ID,
    OK,
    PASSKEY,
    PERPLEXITY,
    ROW,
    RUN_ID,
    SEED,
    STATE_CAPACITY,
    STATE_STATS,
    STATUS,
    TRAIN_CONTEXT,
    UNIT_ID,
    UNIT_PARAMS,
    VERSION,
)

# per-length passkey columns: acc_2K (accuracy), n_2K (samples), logp_2K (mean key logprob)
ACC, N, LOGP = "acc_", "n_", "logp_"
EFFECTIVE = "effective_length"
PASSKEY_N = "passkey_samples"
FAILED = "failed_units"
ROW_STATUS = "status"  # ok | partial | failed, see RowStatus
RUN_DATE, RUN_IDS = "run_date", "run_ids"
PROVENANCE = (MODEL_ID, DTYPE, SEED, DEVICE, VERSION, COMMIT, RUN_DATE, RUN_IDS)
MAX_DEPTH_BINS = 10  # as the paper's heatmaps
NORM_HEADS = 6  # state-norm curves drawn per model
LARGEST_EXPONENT = 700.0  # exp() of more overflows a float: such a perplexity is infinite


class RowStatus:
    OK = "ok"  # every unit of the row ran
    PARTIAL = "partial"  # some units failed, the others have numbers
    FAILED = "failed"  # every unit failed: nothing to show but the failures


@dataclass(frozen=True)
class Heatmap:
    accuracy: pd.DataFrame  # depth bins (rows) x lengths (columns)
    logprob: pd.DataFrame | None  # mean key log-probability, same grid (None: not recorded)
    samples: int


@dataclass(frozen=True)
class HeadChoice:
    heads: list[tuple]  # (layer, head)
    what: str  # how they were chosen, for the figure's title


def token_label(tokens: float) -> str:
    """1024 -> '1K', 1536 -> '1.5K', 2**20 -> '1M', 500 -> '500', 12300 -> '12300'."""
    for size, suffix in ((1024 * 1024, "M"), (1024, "K")):
        value = tokens / size
        if value >= 1 and value == round(value, 2):
            return f"{value:g}{suffix}"
    return f"{tokens:.0f}"


def row_keys(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Every (model, mitigation) seen in any table, 'none' first within a model."""
    keys = pd.concat([t[list(ROW)] for t in tables]).drop_duplicates()
    plain_last = keys.assign(_plain=keys[MITIGATION] != "none")
    ordered = plain_last.sort_values([MODEL, "_plain", MITIGATION])
    return ordered[list(ROW)].reset_index(drop=True)


def first_valid(tables: Iterable[pd.DataFrame], columns: Iterable[str]) -> pd.DataFrame:
    """Per (model, mitigation): the first non-null value of each column found in any table."""
    wanted = list(columns)
    frames = [t[[*ROW, *(c for c in wanted if c in t.columns)]] for t in tables]
    return pd.concat(frames).groupby(list(ROW)).first().reset_index()


def records_frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A frame of `records` (each may add columns); just `columns` when there are none."""
    return pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=columns)


def failures(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The rows with status != ok, one per failed unit, newest first."""
    columns = [UNIT_ID, *ROW, STATUS, MESSAGE, RUN_ID, CREATED]
    frames = [
        t.loc[t[STATUS] != OK, [c for c in columns if c in t.columns]].assign(table=name)
        for name, t in tables.items()
    ]
    return pd.concat(frames).sort_values(CREATED, ascending=False).reset_index(drop=True)


def failure_counts(failed: pd.DataFrame) -> pd.DataFrame:
    return failed.groupby(list(ROW)).size().rename(FAILED).reset_index()


def row_status(tables: dict[str, pd.DataFrame], failed: pd.DataFrame) -> pd.DataFrame:
    """Per (model, mitigation): its failed units and its RowStatus."""
    keys = row_keys(tables.values())
    ran = pd.concat([t.loc[t[STATUS] == OK, list(ROW)] for t in tables.values()])
    ran = ran.drop_duplicates().assign(_ran=True)
    frame = keys.merge(failure_counts(failed), on=list(ROW), how="left")
    frame = frame.merge(ran, on=list(ROW), how="left")
    frame[FAILED] = frame[FAILED].fillna(0).astype(int)
    ok = frame["_ran"].notna().to_numpy()
    status = np.where(frame[FAILED] > 0, RowStatus.PARTIAL, RowStatus.OK)
    frame[ROW_STATUS] = np.where(ok, status, RowStatus.FAILED)
    return frame[[*ROW, ROW_STATUS, FAILED]]


def unit_length(unit_params: str | None) -> float:
    """The `length` of a unit's parameters (JSON), NaN when it has none."""
    try:
        value = json.loads(unit_params).get(PASSKEY.length)
    except (TypeError, ValueError, AttributeError):
        return math.nan
    return float(value) if value is not None else math.nan


def passkey_accuracy(rows: pd.DataFrame) -> pd.DataFrame:
    """(model, mitigation, length) -> accuracy, n, and logprob (the mean key log-probability,
    NaN when the table has none)."""
    p = PASSKEY
    frame = rows if p.key_logprob in rows.columns else rows.assign(**{p.key_logprob: math.nan})
    grouped = frame.groupby([*ROW, p.length])
    return grouped.agg(
        accuracy=(p.correct, "mean"), n=(p.correct, "size"), logprob=(p.key_logprob, "mean")
    ).reset_index()


def chance_logprob(rows: pd.DataFrame) -> float:
    """The log-probability of a uniform guess among keys of the table's key length (5 digits:
    log 1e-5 = -11.5); NaN when the table does not record its keys."""
    if PASSKEY.key not in rows.columns or not len(rows):
        return math.nan
    digits = rows[PASSKEY.key].dropna().astype(str).str.len()
    return -float(digits.median()) * math.log(10) if len(digits) else math.nan


def effective_length(accuracy: pd.Series, failed: Iterable[float], threshold: float) -> int:
    """`accuracy` by length; `failed`: lengths of failed units. See the module's definition."""
    best = 0
    for length in sorted(set(accuracy.index) | set(failed)):
        if accuracy.get(length, -1.0) < threshold:
            break
        best = int(length)
    return best


def passkey_columns(rows: pd.DataFrame, passkey: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per (model, mitigation): effective length (NaN without any ok result), sample count,
    acc_<L>, n_<L> and logp_<L> per length.

    `rows`: the resolved ok rows; `passkey`: the whole table (its failed units count too).
    """
    failed = passkey[passkey[STATUS] != OK].reindex(columns=[*ROW, UNIT_PARAMS])
    lost = failed[UNIT_PARAMS].map(unit_length).dropna().groupby([failed[c] for c in ROW])
    lost_lengths = {key: set(lengths) for key, lengths in lost}
    accuracy = {
        key: group.set_index(PASSKEY.length)
        for key, group in passkey_accuracy(rows).groupby(list(ROW))
    }
    empty = pd.DataFrame({"accuracy": [], "n": [], "logprob": []})
    records = []
    for key in sorted(accuracy.keys() | lost_lengths.keys()):
        by_length = accuracy.get(key, empty)
        effective = (
            effective_length(by_length["accuracy"], lost_lengths.get(key, ()), threshold)
            if len(by_length)
            else math.nan  # every passkey unit failed: no length, not length 0
        )
        record = {
            **dict(zip(ROW, key, strict=True)),
            EFFECTIVE: effective,
            PASSKEY_N: int(by_length["n"].sum()),
        }
        for length, acc, n, logprob in by_length[["accuracy", "n", "logprob"]].itertuples():
            record[ACC + token_label(length)] = acc
            record[N + token_label(length)] = n
            record[LOGP + token_label(length)] = logprob
        records.append(record)
    return records_frame(records, [*ROW, EFFECTIVE, PASSKEY_N])


def sort_length_columns(frame: pd.DataFrame) -> list[str]:
    """acc_/n_/logp_ columns in increasing length, each accuracy beside its sample count and
    key log-probability."""
    lengths = {c[len(ACC) :] for c in frame.columns if c.startswith(ACC)}
    ordered = sorted(lengths, key=_tokens)
    return [c for label in ordered for c in (ACC + label, N + label, LOGP + label) if c in frame]


def cliff_points(rows: pd.DataFrame, contexts: pd.Series) -> pd.DataFrame:
    """Per (model, mitigation, length) with a known training length: accuracy, n, logprob and
    `ratio`, the length over the training length."""
    points = passkey_accuracy(rows)
    keys = pd.MultiIndex.from_frame(points[list(ROW)])
    context = contexts.reindex(keys).to_numpy(dtype=float) if len(contexts) else math.nan
    points = points.assign(ratio=points[PASSKEY.length].astype(float) / context)
    return points[np.isfinite(points["ratio"])].reset_index(drop=True)


def _tokens(label: str) -> float:
    scale = {"K": 1024, "M": 1024 * 1024}
    return float(label[:-1]) * scale[label[-1]] if label[-1] in scale else float(label)


def depth_bins(depths: pd.Series) -> pd.Series:
    """Each depth's bin label ('0-25%'...): up to 10 equal bins over [0, 1]."""
    count = max(1, min(MAX_DEPTH_BINS, depths.nunique()))
    edges = np.linspace(0.0, 1.0, count + 1)
    labels = [f"{lo:.0%}-{hi:.0%}" for lo, hi in itertools.pairwise(edges)]
    return pd.cut(depths, edges, labels=labels, include_lowest=True)


def passkey_heatmaps(rows: pd.DataFrame) -> dict[str, Heatmap]:
    """Per mitigation of one model: accuracy (and the mean key log-probability) with depth
    bins as rows, lengths as columns."""
    binned = rows.assign(_bin=depth_bins(rows[PASSKEY.depth]))
    logprob = PASSKEY.key_logprob in rows.columns
    return {
        mitigation: Heatmap(
            depth_grid(group, PASSKEY.correct),
            depth_grid(group, PASSKEY.key_logprob) if logprob else None,
            len(group),
        )
        for mitigation, group in binned.groupby(MITIGATION)
    }


def depth_grid(binned: pd.DataFrame, values: str) -> pd.DataFrame:
    """The mean of `values` with depth bins as rows, lengths as columns."""
    return binned.pivot_table(
        index="_bin", columns=PASSKEY.length, values=values, aggfunc="mean", observed=False
    ).rename_axis(index="depth", columns="length")


def longest_units(rows: pd.DataFrame, source: str, length: str) -> pd.DataFrame:
    """Per (model, mitigation, source), the rows of its longest unit only (`source` and
    `length` filled in when absent): one set of prompts behind every position."""
    frame = rows.assign(
        **{
            source: rows[source] if source in rows.columns else "",
            length: rows[length] if length in rows.columns else 0,
        }
    )
    longest = frame.groupby([*ROW, source])[length].transform("max")
    return frame[frame[length] == longest]


def bucket_losses(rows: pd.DataFrame) -> pd.DataFrame | None:
    """The longest perplexity units as (model, mitigation, source, document, start, end, loss,
    weight); None when the table lacks the columns."""
    p = PERPLEXITY
    if not {p.document, p.start, p.end} <= set(rows.columns):
        return None
    if p.mean_loss in rows.columns:
        loss = rows[p.mean_loss].astype(float)
    elif p.perplexity in rows.columns:
        loss = np.log(rows[p.perplexity].astype(float))
    else:
        return None
    weight = rows[p.tokens].astype(float) if p.tokens in rows.columns else 1.0
    frame = longest_units(rows.assign(loss=loss, weight=weight), p.source, p.length)
    frame = frame[[*ROW, p.source, p.document, p.start, p.end, "loss", "weight"]]
    return frame[np.isfinite(frame["loss"])]


def weighted_perplexity(buckets: pd.DataFrame) -> float:
    loss = float(np.average(buckets["loss"], weights=buckets["weight"]))
    return math.exp(loss) if loss < LARGEST_EXPONENT else math.inf


def loss_curves(losses: pd.DataFrame) -> pd.DataFrame:
    """Per (model, mitigation, source, bucket): position (bucket middle) and perplexity."""
    p = PERPLEXITY
    curves = (
        losses.groupby([*ROW, p.source, p.start, p.end])
        .apply(weighted_perplexity, include_groups=False)
        .rename("perplexity")
        .reset_index()
    )
    return curves.assign(position=(curves[p.start] + curves[p.end]) / 2)


def perplexity_columns(
    losses: pd.DataFrame, contexts: pd.Series, multiples: Iterable[float]
) -> pd.DataFrame:
    """Per (model, mitigation): ppl_<m>x at each multiple of the training length, and the
    documents behind them; named ppl_<source>_<m>x when the table holds several sources."""
    p = PERPLEXITY
    several = losses[p.source].nunique() > 1
    records: dict[tuple, dict] = {}
    for (model, mitigation, source), group in losses.groupby([*ROW, p.source]):
        record = records.setdefault((model, mitigation), {MODEL: model, MITIGATION: mitigation})
        prefix = f"ppl_{source}_" if several else "ppl_"
        context = contexts.get((model, mitigation), math.nan)
        for multiple in multiples:
            position = round(multiple * context) if math.isfinite(context) else math.nan
            hit = group[(group[p.start] < position) & (position <= group[p.end])]
            record[f"{prefix}{multiple:g}x"] = weighted_perplexity(hit) if len(hit) else math.nan
        record[f"{prefix}documents"] = group[p.document].nunique()
    return records_frame(list(records.values()), list(ROW))


def capacity_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, mitigation): the newest collapse and recall lengths the task wrote, and how
    far the collapse was searched."""
    c = STATE_CAPACITY
    if c.kind in rows.columns:
        rows = rows[rows[c.kind] == c.model_kind]
    wanted = [x for x in (c.collapse_length, c.searched_to, c.recall_length) if x in rows]
    newest = rows.sort_values(CREATED).drop_duplicates(list(ROW), keep="last")
    return newest[[*ROW, *wanted]]


def head_norms(rows: pd.DataFrame) -> pd.DataFrame | None:
    """State norm per (model, mitigation, source, layer, head, position) of the longest units;
    None when the table lacks the columns."""
    s = STATE_STATS
    if not {s.norm, s.layer, s.head, s.position} <= set(rows.columns):
        return None
    longest = longest_units(rows, s.source, s.length)
    keys = [*ROW, s.source, s.layer, s.head, s.position]
    return longest.groupby(keys)[s.norm].mean().reset_index()


def heads_to_draw(rows: pd.DataFrame, norms: pd.DataFrame, context: float) -> HeadChoice:
    """Up to NORM_HEADS heads of one model, those whose norm grew most past the training
    length, among the heads the task flagged collapsing (any mitigation) if it flagged any."""
    s = STATE_STATS
    growth = norms.groupby([s.layer, s.head]).apply(
        lambda head: _growth(head, context), include_groups=False
    )
    ranked = list(growth.sort_values(ascending=False).index)
    flagged = set()
    if s.collapsing in rows.columns:
        verdicts = rows.loc[rows[s.collapsing].fillna(False).astype(bool), [s.layer, s.head]]
        flagged = set(verdicts.itertuples(index=False, name=None))
    if flagged:
        return HeadChoice([k for k in ranked if k in flagged][:NORM_HEADS], "collapsing heads")
    what = "heads whose norm grew most"
    if s.collapsing in rows.columns:
        what += " (none collapsed)"
    return HeadChoice(ranked[:NORM_HEADS], what)


def _growth(head: pd.DataFrame, context: float) -> float:
    """Norm at the last position over the norm at the training length (or the first position)."""
    s = STATE_STATS
    ordered = head.groupby(s.position)[s.norm].max().sort_index()
    inside = ordered[ordered.index <= context] if math.isfinite(context) else ordered.iloc[:1]
    base = inside.iloc[-1] if len(inside) else ordered.iloc[0]
    return float(ordered.iloc[-1] / base) if base else math.inf


def provenance(frames: Iterable[pd.DataFrame], device_names: dict[str, str]) -> pd.DataFrame:
    """Per (model, mitigation): every dtype, seed, device, version, commit, run, latest date."""
    columns = [RUN_ID, CREATED, MODEL_ID, DTYPE, SEED, DEVICE, VERSION, COMMIT]
    found = [f[[*ROW, *(c for c in columns if c in f.columns)]] for f in frames if len(f)]
    if not found:
        return pd.DataFrame(columns=[*ROW, *PROVENANCE])
    rows = pd.concat(found)
    rows = rows.reindex(columns=[*ROW, *columns])  # absent provenance columns stay empty
    named = zip(rows[DEVICE], rows[RUN_ID].map(device_names), strict=True)
    rows = rows.assign(
        **{
            DEVICE: [_device(device, name) for device, name in named],
            COMMIT: rows[COMMIT].map(_short_commit),
            RUN_DATE: rows[CREATED].dt.strftime("%Y-%m-%d"),
            RUN_IDS: rows[RUN_ID],
        }
    )
    grouped = rows.groupby(list(ROW))
    listed = grouped[[MODEL_ID, DTYPE, SEED, DEVICE, VERSION, COMMIT, RUN_IDS]].agg(_distinct)
    return listed.join(grouped[RUN_DATE].max()).reset_index()[[*ROW, *PROVENANCE]]


def _distinct(values: pd.Series) -> str:
    """The distinct values, integral floats (a column widened by nulls) shown as integers."""
    shown = {
        f"{v:.0f}" if isinstance(v, float) and v.is_integer() else str(v) for v in values.dropna()
    }
    return ", ".join(sorted(shown))


def _device(device: str | None, name: str | None) -> str | None:
    return f"{device} ({name})" if isinstance(name, str) else device


def _short_commit(commit: str | None) -> str | None:
    if not isinstance(commit, str):
        return None
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def mixed_dtypes(prov: pd.DataFrame) -> list[str]:
    """A warning for every row whose numbers come from more than one dtype."""
    mixed = prov[prov[DTYPE].str.contains(",", regex=False, na=False)]
    return [
        f"{m} / {x}: this row aggregates results of more than one dtype ({d}); "
        "compare its columns with care"
        for m, x, d in mixed[[MODEL, MITIGATION, DTYPE]].itertuples(index=False)
    ]


def train_contexts(facts: pd.DataFrame) -> pd.Series:
    """(model, mitigation) -> training length, NaN where unknown."""
    if TRAIN_CONTEXT not in facts.columns:
        return pd.Series(dtype=float)
    return facts.set_index(list(ROW))[TRAIN_CONTEXT].astype(float)


def main_table(keys: pd.DataFrame, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, mitigation): the parts joined on the row keys, in a fixed order."""
    table = keys
    for part in parts:
        table = table.merge(part, on=list(ROW), how="left")
    if FAILED in table.columns:
        table[FAILED] = table[FAILED].fillna(0).astype(int)
    order = [
        *ROW,
        *(c for c in (ROW_STATUS,) if c in table.columns),
        *(c for c in FACTS if c in table.columns),
        *(c for c in (EFFECTIVE, PASSKEY_N) if c in table.columns),
        *sort_length_columns(table),
    ]
    rest = [c for c in table.columns if c not in order and c not in PROVENANCE]
    return table[[*order, *rest, *(c for c in PROVENANCE if c in table.columns)]]
