"""Our RWKV-6 (Finch): data-dependent decay per key channel, bonus u, exact state carry."""

from harness.models.rwkv6.checkpoint import (
    checkpoint_path,
    config_from,
    is_blinkdl_file,
    load_rwkv6,
    save_blinkdl,
)
from harness.models.rwkv6.model import Rwkv6, Rwkv6Config, Rwkv6State, bonus
from harness.models.rwkv6.tokenizer import WorldTokenizer, world_tokenizer

__all__ = [
    "Rwkv6",
    "Rwkv6Config",
    "Rwkv6State",
    "WorldTokenizer",
    "bonus",
    "checkpoint_path",
    "config_from",
    "is_blinkdl_file",
    "load_rwkv6",
    "save_blinkdl",
    "world_tokenizer",
]
