"""Shared fixtures: everything offline, tiny models made here, nothing from ../shared."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HARNESS_CACHE_DIR"] = tempfile.mkdtemp(prefix="harness-test-cache-")

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

atexit.register(shutil.rmtree, os.environ["HARNESS_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def neox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-NeoX with a byte tokenizer, saved with save_pretrained like a hub checkpoint."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from harness.models.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("models") / "neox-tiny"
    GPTNeoXForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: OpenMP threads cost more than they bring (and stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VOLATILE = ["run_id", "created_at", "device"]  # differ between runs of one plan


def comparable_table(out: Path, table: str):
    """A results table without its per-run columns, rows in a canonical order (pandas)."""
    from harness.results import read_table

    frame = read_table(out, table).to_pandas().drop(columns=VOLATILE)
    frame = frame.astype({c: str for c in ("model", "mitigation")})
    keys = [c for c in ("unit_id", "sample", "document", "start") if c in frame]
    return frame.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="session")
def table_rows():
    """comparable_table, for tests that compare the tables of two runs of one plan."""
    return comparable_table


def sweep_dead_writers(out: Path, killed: int | None = None) -> None:
    """A kill that lands while a part is being written leaves that writer's hidden temporary
    (readers pass it over); a later run removes it once stale (its writer dead and
    STALE_AFTER_S old). Anything left must be a dead writer's (the `killed` pid's, if given),
    and that sweep must take it."""
    import time

    from harness import results

    left = list(out.rglob(".*.tmp"))
    for tmp in left:
        match = results.TEMPORARY.match(tmp.name)
        assert match is not None and not results.pid_alive(int(match["pid"])), tmp
        assert killed is None or int(match["pid"]) == killed, tmp
        old = time.time() - results.STALE_AFTER_S - 60
        os.utime(tmp, (old, old))
    assert results.remove_stale_temporaries(out) == len(left)


@pytest.fixture(scope="session")
def dead_writers_swept():
    """sweep_dead_writers, for the tests that kill a worker mid-run."""
    return sweep_dead_writers
