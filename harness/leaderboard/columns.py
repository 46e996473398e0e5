"""Every result column the leaderboard reads, in one place: align them here when a schema moves.

Common columns come from harness.results.COMMON (plus `model` and `mitigation` from the hive
folders); the per-table ones from each task's schema. A section whose table or columns are
absent is left out of the leaderboard.
"""

from __future__ import annotations

from dataclasses import dataclass

# harness.results.COMMON and the hive folders
MODEL = "model"
COMBINED = "_combined"  # the model folder of rows computed across models (harness.runner)
# The columns of the cross-model fit rows shown in their own section.
FIT_COLUMNS = (
    "mitigation", "kind", "fit_points", "fit_models", "fit_a", "fit_b", "fit_c", "fit_r2",
    "paper_a", "paper_b", "paper_c", "fit_note",
)  # fmt: skip
MITIGATION = "mitigation"
STATUS = "status"
OK = "ok"
MESSAGE = "message"
UNIT_ID = "unit_id"
RUN_ID = "run_id"
UNIT_PARAMS = "unit_params"
SEED = "seed"
DTYPE = "dtype"
DEVICE = "device"
VERSION = "harness_version"
COMMIT = "git_commit"
CREATED = "created_at"
MODEL_ID = "model_id"  # content identity of the model (harness.identity); absent in older parts
FAMILY = "family"
PARAMS = "params"
STATE_SIZE = "state_size"
TRAIN_CONTEXT = "train_context"

ROW = (MODEL, MITIGATION)  # one leaderboard row
FACTS = (FAMILY, PARAMS, STATE_SIZE, TRAIN_CONTEXT)  # about the model, repeated on every row
SETTINGS = (DTYPE, SEED, UNIT_PARAMS)  # must agree within one cell (see conflicts.py)
REQUIRED = (*ROW, STATUS, CREATED)  # a table without these is skipped with a warning


@dataclass(frozen=True)
class Passkey:
    table: str = "passkey"
    length: str = "length"  # target prompt length in tokens; also the key in unit_params
    depth: str = "depth"  # 0 = needle first, 1 = needle last
    correct: str = "correct"
    key: str = "key"  # the digits to retrieve: its length sets the chance log-probability
    key_logprob: str = "key_logprob"  # log-probability of the key under teacher forcing


@dataclass(frozen=True)
class Perplexity:
    table: str = "perplexity"
    source: str = "source"  # newlines, a file, a dataset: never averaged together
    length: str = "length"  # tokens per document of the unit
    document: str = "document"  # index within the unit
    start: str = "start"  # first token position of the bucket (inclusive)
    end: str = "end"  # last token position of the bucket (exclusive)
    tokens: str = "count"  # tokens scored in the bucket: the weight across documents
    mean_loss: str = "mean_loss"  # nats per token
    perplexity: str = "perplexity"  # exp(mean_loss): used when mean_loss is absent


@dataclass(frozen=True)
class StateStats:
    table: str = "state_stats"
    source: str = "source"
    length: str = "length"  # prompt tokens of the unit
    layer: str = "layer"
    head: str = "head"
    position: str = "position"
    norm: str = "norm"
    collapsing: str = "collapsed"  # the task's per-head verdict (bool, null: undecided)


@dataclass(frozen=True)
class StateCapacity:
    table: str = "state_capacity"
    kind: str = "kind"  # only rows of kind `model_kind` are per (model, mitigation)
    model_kind: str = "model"
    collapse_length: str = "collapse_length"  # null: no collapse up to searched_to
    searched_to: str = "collapse_searched_to"
    recall_length: str = "recall_length"


@dataclass(frozen=True)
class LmEval:
    table: str = "lm_eval"  # tasks.lm_eval_task: one row per scored document
    task: str = "lm_eval_task"  # lm-eval's task name
    length: str = "length"  # max_seq_lengths of the unit; null for tasks without lengths
    metrics: str = "metrics"  # the document's numeric metrics (a map: name -> value)


PASSKEY = Passkey()
PERPLEXITY = Perplexity()
STATE_STATS = StateStats()
STATE_CAPACITY = StateCapacity()
LM_EVAL = LmEval()

# One cell per table, beside (model, mitigation): one unit's worth of rows (a passkey length, a
# perplexity or state-stats prompt). Rows of one cell must share SETTINGS (see conflicts.py).
# Columns absent from a table are left out of its cells.
CELLS: dict[str, tuple[str, ...]] = {
    PASSKEY.table: (PASSKEY.length,),
    PERPLEXITY.table: (PERPLEXITY.source, PERPLEXITY.length),
    STATE_STATS.table: (STATE_STATS.source, STATE_STATS.length),
    STATE_CAPACITY.table: (STATE_CAPACITY.kind,),
    LM_EVAL.table: (LM_EVAL.task, LM_EVAL.length),
}
