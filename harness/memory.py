"""How much memory this process may still take, and a check before a prompt is built.

Tokenizers written in Rust abort the whole process when an allocation fails, so a prompt too
long for the memory left is refused before it is built: a MemoryError, which the runner
records as that unit's `oom` row while the run goes on.
"""

from __future__ import annotations

import resource
from pathlib import Path

# Peak growth while a prompt is built and tokenized: measured 194-287 bytes a token (passkey,
# byte tokenizer, 256K-1M tokens: the text, the tokenizer's encoding, the list of ids); twice
# that for a margin.
BYTES_PER_TOKEN = 512
GIB = 2**30


def available_bytes() -> int | None:
    """The least of: the system's MemAvailable, this process's address-space limit left, its
    cgroup's memory limit left; None where none of them can be read."""
    limits = [_meminfo_available(), _address_space_left(), _cgroup_left()]
    known = [n for n in limits if n is not None]
    return min(known) if known else None


def check_prompt(tokens: int) -> None:
    """MemoryError when building a prompt of `tokens` tokens would not fit in memory."""
    need = tokens * BYTES_PER_TOKEN
    free = available_bytes()
    if free is not None and need > free:
        raise MemoryError(
            f"a prompt of {tokens} tokens needs about {need / GIB:.2f} GiB to build "
            f"({BYTES_PER_TOKEN} bytes a token), only {free / GIB:.2f} GiB is available"
        )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _address_space_left() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_left() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
